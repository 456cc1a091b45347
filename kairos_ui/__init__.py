"""The Kairos dashboard (DESIGN.md §11): Starlette pages made live by htmx over one SSE stream.

It talks to the gateway only through :mod:`kairos_client`. Run it with ``kairos-ui``; embed it
with :func:`kairos_ui.app.create_app`.
"""
