"""The LLM-driven backend selector of DESIGN.md §6 (see :mod:`kairos_core.ai.selector`)."""
