"""Helpers for integration tests: real upstream servers (upstreams) and processes (procs)."""
