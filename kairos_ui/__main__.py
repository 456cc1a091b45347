"""``python -m kairos_ui``: the same as the ``kairos-ui`` command."""

from .main import main

main()
