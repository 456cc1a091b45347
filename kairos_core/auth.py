"""JWT authentication for routes with ``auth_required``: HS256 bearer tokens checked with pyjwt.

Header (``verify_header``): surrounding whitespace is ignored; the value must then be exactly
``<scheme> <token>`` with one space, the scheme ``Bearer`` in any case. No header, an empty one or
``Bearer`` with nothing after it is "missing bearer token"; another scheme (``Basic ...``) is
"authorization scheme must be Bearer"; extra spaces or parts are "malformed authorization header".

Token (``verify``), checked in this order, the first failure winning:

1. Larger than 8 KiB (``MAX_TOKEN_BYTES``): "token too large", before any decoding.
2. Not ASCII, not three base64url segments, a header that is not a JSON object, or a ``crit``
   extension pyjwt does not implement: "malformed token".
3. The unverified header's ``alg`` must be exactly ``HS256``; anything else (``none``, ``RS256``,
   ``ES256``, ``hs256``) is "unsupported algorithm '<alg>'" (the name cut to 32 characters). This
   closes the ``alg: none`` and RS256-with-HMAC-secret confusion attacks before any key is used.
4. Signature, HMAC-SHA256 with ``jwt.secret`` (constant-time compare): "invalid signature".
5. Claims: every name in ``required_claims`` present and not null, else
   "missing required claim '<name>'"; a present ``iat`` or ``nbf`` later than now + ``leeway_s``
   is "token not yet valid"; a present ``exp`` at or before now - ``leeway_s`` is
   "token expired"; with ``jwt.issuer`` set, ``iss`` must be present ("missing required claim
   'iss'") and equal it ("invalid issuer"); with ``jwt.audience`` set, ``aud`` (a string or a list
   of strings) must be present and contain it ("invalid audience"). Without ``jwt.issuer`` or
   ``jwt.audience`` those claims are not checked at all. A non-integer ``exp``/``nbf``/``iat``
   or a payload that is not a JSON object is "malformed token".
6. ``sub``, when present, must be a string or an integer ("invalid claim 'sub'");
   ``Identity.subject`` is ``str(sub)``, or ``None`` without one.

A token that passed is remembered (the last 10,000, ``CACHE_TOKENS``): a repeat only has its
``nbf``/``iat``/``exp`` window checked against the clock again, with the same leeway and reasons,
which removes the base64 and HMAC work from the hot path. The cache belongs to one verifier, so
a reload with a new secret starts empty.

``exp`` is not required unless listed in ``required_claims`` (kairos-rs's jsonwebtoken requires
it by default; list ``"exp"`` to get that behaviour). Every ``AuthError.reason`` is fixed text or
a claim/algorithm name, safe to return to the client; it never echoes the token or the secret.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeGuard

import jwt

from kairos_core.config.models import JwtConfig

if TYPE_CHECKING:
    from jwt.types import Options

MAX_TOKEN_BYTES = 8 * 1024
CACHE_TOKENS = 10_000
ALGORITHM = "HS256"
_SHOWN_NAME_CHARS = 32


class AuthError(Exception):
    """A request failed authentication; ``reason`` is safe to show the client."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a verified token speaks for: ``sub`` as a string (or ``None``) and every claim."""

    subject: str | None
    claims: Mapping[str, Any]


def _shown(name: str) -> str:
    return name if len(name) <= _SHOWN_NAME_CHARS else f"{name[:_SHOWN_NAME_CHARS]}..."


class JwtVerifier:
    """Verifies HS256 bearer tokens against one ``jwt`` config block; stateless and thread-safe."""

    __slots__ = ("_audience", "_cache", "_issuer", "_key", "_leeway_s", "_options")

    def __init__(self, config: JwtConfig) -> None:
        if not config.secret:
            raise ValueError("jwt.secret must not be empty")
        self._key = config.secret
        self._issuer = config.issuer
        self._audience = config.audience
        self._leeway_s = config.leeway_s
        self._options: Options = {
            "require": list(config.required_claims),
            "verify_signature": True,
            "verify_exp": True,
            "verify_nbf": True,
            "verify_iat": True,
            "verify_iss": config.issuer is not None,
            # pyjwt rejects a token carrying ``aud`` when no audience is configured; don't check
            "verify_aud": config.audience is not None,
            "verify_sub": False,  # an integer ``sub`` is accepted; checked in ``_identity``
            "verify_jti": False,
        }
        # token → (identity, not valid before, not valid after); the signature and the static
        # claims of a token never change, so only the time window is checked again on a hit
        self._cache: OrderedDict[str, tuple[Identity, float, float]] = OrderedDict()

    def verify_header(self, authorization: str | None) -> Identity:
        """Verify the token in an ``Authorization: Bearer <token>`` header value."""
        value = (authorization or "").strip()
        if not value:
            raise AuthError("missing bearer token")
        parts = value.split(" ")
        if parts[0].lower() != "bearer":
            raise AuthError("authorization scheme must be Bearer")
        if len(parts) == 1:
            raise AuthError("missing bearer token")
        if len(parts) != 2 or not parts[1]:
            raise AuthError("malformed authorization header")
        return self.verify(parts[1])

    def verify(self, token: str) -> Identity:
        """Verify a compact JWS token and return its identity; raises :class:`AuthError`.

        Tokens verified once are remembered (at most ``CACHE_TOKENS``, least recently used
        first out); a remembered token is only checked against the clock again.
        """
        cached = self._cache.get(token)
        if cached is not None:
            identity, not_before, not_after = cached
            now = time.time()
            if now < not_before:
                raise AuthError("token not yet valid")
            if now >= not_after:
                del self._cache[token]
                raise AuthError("token expired")
            self._cache.move_to_end(token)
            return identity
        identity = self._verify(token)
        self._remember(token, identity)
        return identity

    def _remember(self, token: str, identity: Identity) -> None:
        claims = identity.claims
        bounds = [float(c) for c in (claims.get("nbf"), claims.get("iat")) if _is_number(c)]
        not_before = max(bounds) - self._leeway_s if bounds else float("-inf")
        exp = claims.get("exp")
        not_after = float(exp) + self._leeway_s if _is_number(exp) else float("inf")
        self._cache[token] = (identity, not_before, not_after)
        if len(self._cache) > CACHE_TOKENS:
            self._cache.popitem(last=False)

    def _verify(self, token: str) -> Identity:
        if len(token) > MAX_TOKEN_BYTES:
            raise AuthError("token too large")
        if not token.isascii():
            raise AuthError("malformed token")
        self._check_algorithm(token)
        try:
            claims = jwt.decode(
                token,
                key=self._key,
                algorithms=[ALGORITHM],
                options=self._options,
                issuer=self._issuer,
                audience=self._audience,
                leeway=self._leeway_s,
            )
        except jwt.InvalidSignatureError:
            raise AuthError("invalid signature") from None
        except jwt.ExpiredSignatureError:
            raise AuthError("token expired") from None
        except jwt.ImmatureSignatureError:
            raise AuthError("token not yet valid") from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError(f"missing required claim '{_shown(exc.claim)}'") from None
        except jwt.InvalidIssuerError:
            raise AuthError("invalid issuer") from None
        except jwt.InvalidAudienceError:
            raise AuthError("invalid audience") from None
        except jwt.InvalidTokenError:
            raise AuthError("malformed token") from None
        return _identity(claims)

    @staticmethod
    def _check_algorithm(token: str) -> None:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise AuthError("malformed token") from None
        alg = header.get("alg")
        if not isinstance(alg, str):
            raise AuthError("malformed token")
        if alg != ALGORITHM:
            raise AuthError(f"unsupported algorithm {_shown(alg)!r}")


def _is_number(value: object) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _identity(claims: dict[str, Any]) -> Identity:
    sub = claims.get("sub")
    if sub is not None and (isinstance(sub, bool) or not isinstance(sub, str | int)):
        raise AuthError("invalid claim 'sub'")
    subject = None if sub is None else str(sub)
    return Identity(subject=subject, claims=MappingProxyType(claims))


def identify(
    verifier: JwtVerifier | None,
    authorization: str | None,
    *,
    required: bool,
    wanted: bool,
) -> Identity | None:
    """Who a request speaks for (the pipeline's authenticate step, and the dry run's).

    - ``required`` (``auth_required``): a valid bearer token, else :class:`AuthError` (401);
      without a ``jwt`` block that is "authentication is not configured" (fail closed).
    - ``wanted`` (a public route whose rate limit keys on the user): the identity of a valid
      token when one is sent; a missing or invalid token is anonymous, never a 401.
    - neither: no identity; the header is not read.
    """
    if required:
        if verifier is None:
            raise AuthError("authentication is not configured")
        return verifier.verify_header(authorization)
    if not wanted or verifier is None or authorization is None:
        return None
    try:
        return verifier.verify_header(authorization)
    except AuthError:
        return None
