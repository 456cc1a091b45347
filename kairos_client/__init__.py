"""Typed SDK for the Kairos admin API (KairosClient, AsyncKairosClient); see DESIGN.md §10."""

__all__: list[str] = []
