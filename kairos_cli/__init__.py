"""``kairos``: the command line for checking configs and asking where a request would go.

``kairos validate``, ``kairos route-test``, ``kairos init`` and ``kairos config schema`` work
offline on a config file (DESIGN.md §9); the entry point is :func:`kairos_cli.main.main`.
"""
