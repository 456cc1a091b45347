"""CORS from the ``cors`` block: preflight answers and headers on actual responses.

Rules: an origin is allowed when ``allowed_origins`` contains it or ``*``. A preflight is an
``OPTIONS`` request carrying ``Origin`` and ``Access-Control-Request-Method``; the gateway answers
it itself (204) when the path is routable for the requested method, and never forwards it. A
disallowed origin or method gets the 204 without ``Access-Control-Allow-*`` headers, so the
browser blocks the call. With ``allow_credentials`` the origin is echoed instead of ``*`` (the
spec forbids ``*`` with credentials), which is why the config refuses ``allow_credentials`` with
``*`` (``cors_credentials_any_origin``): that would hand every site credentialed access. ``Vary:
Origin`` is set whenever the answer depends on it.
"""

from __future__ import annotations

from kairos_core.config.models import CorsConfig
from kairos_core.http import Headers


class CorsPolicy:
    """The compiled ``cors`` block."""

    def __init__(self, config: CorsConfig) -> None:
        self._config = config
        self._any_origin = "*" in config.allowed_origins
        self._origins = frozenset(config.allowed_origins)
        self._methods = frozenset(m.upper() for m in config.allowed_methods)
        self._any_header = "*" in config.allowed_headers

    def origin_allowed(self, origin: str) -> bool:
        return self._any_origin or origin in self._origins

    def _allow_origin(self, origin: str) -> Headers:
        if self._any_origin and not self._config.allow_credentials:
            headers = [("Access-Control-Allow-Origin", "*")]
        else:
            headers = [("Access-Control-Allow-Origin", origin), ("Vary", "Origin")]
        if self._config.allow_credentials:
            headers.append(("Access-Control-Allow-Credentials", "true"))
        return headers

    def preflight(self, origin: str, method: str, request_headers: str | None) -> Headers:
        """Headers for a preflight answer (empty when the origin or method is not allowed)."""
        if not self.origin_allowed(origin) or method.upper() not in self._methods:
            return [("Vary", "Origin")]
        if self._any_header:
            allow_headers = request_headers or ""
        else:
            allow_headers = ", ".join(self._config.allowed_headers)
        headers = self._allow_origin(origin)
        headers.append(("Access-Control-Allow-Methods", ", ".join(sorted(self._methods))))
        if allow_headers:
            headers.append(("Access-Control-Allow-Headers", allow_headers))
        headers.append(("Access-Control-Max-Age", str(self._config.max_age)))
        return headers

    def actual(self, origin: str | None) -> Headers:
        """Headers to add to an actual (non-preflight) response."""
        if origin is None or not self.origin_allowed(origin):
            return []
        return self._allow_origin(origin)
