"""Kairos engine: configuration, routing, balancing and resilience, free of any web framework."""

__version__ = "0.1.0"

__all__ = ["__version__"]
