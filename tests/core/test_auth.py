"""JWT verification: each sentence of the kairos_core.auth docstring, pinned with real tokens."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import jwt
import pytest

from kairos_core.auth import MAX_TOKEN_BYTES, AuthError, Identity, JwtVerifier, identify
from kairos_core.config.models import JwtConfig

SECRET = "kairos-test-secret-0123456789abcdef"
OTHER_SECRET = "another-test-secret-0123456789abcdef"


def verifier(**config: Any) -> JwtVerifier:
    return JwtVerifier(JwtConfig(secret=SECRET, **config))


def token(claims: dict[str, Any] | None = None, *, key: str = SECRET, **headers: Any) -> str:
    payload = {"sub": "alice", "exp": int(time.time()) + 300} if claims is None else claims
    return jwt.encode(payload, key, algorithm="HS256", headers=headers or None)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_built(header: dict[str, Any], claims: dict[str, Any], key: str | None = SECRET) -> str:
    """A compact token with any header; signed with HMAC-SHA256 over ``key`` unless None."""
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    if key is None:
        return f"{signing_input}."
    digest = hmac.new(key.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(digest)}"


def reason_of(check: Any, *args: Any) -> str:
    with pytest.raises(AuthError) as info:
        check(*args)
    assert str(info.value) == info.value.reason
    return info.value.reason


def now() -> int:
    """Read at use: a module-level timestamp goes stale in a long parallel run."""
    return int(time.time())


# --- valid tokens -------------------------------------------------------------------------------


def test_valid_token_gives_subject_and_claims() -> None:
    identity = verifier().verify(token({"sub": "alice", "exp": now() + 300, "role": "admin"}))
    assert identity == Identity(
        subject="alice", claims={"sub": "alice", "exp": now() + 300, "role": "admin"}
    )


def test_integer_subject_is_stringified() -> None:
    assert verifier().verify(token({"sub": 42})).subject == "42"


def test_token_without_subject_has_none() -> None:
    assert verifier().verify(token({"exp": now() + 60})).subject is None


@pytest.mark.parametrize("sub", [{"id": 1}, ["a"], True, 1.5])
def test_subject_of_another_type_is_rejected(sub: Any) -> None:
    assert reason_of(verifier().verify, token({"sub": sub})) == "invalid claim 'sub'"


def test_claims_are_read_only() -> None:
    claims = verifier().verify(token()).claims
    with pytest.raises(TypeError):
        claims["sub"] = "mallory"  # type: ignore[index]


def test_exp_is_not_required_unless_configured() -> None:
    assert verifier().verify(token({"sub": "alice"})).subject == "alice"
    assert reason_of(verifier(required_claims=("exp",)).verify, token({"sub": "alice"})) == (
        "missing required claim 'exp'"
    )


# --- the Authorization header -------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
def test_bearer_scheme_is_case_insensitive(scheme: str) -> None:
    assert verifier().verify_header(f"{scheme} {token()}").subject == "alice"


def test_surrounding_whitespace_is_ignored() -> None:
    assert verifier().verify_header(f"  Bearer {token()}\t").subject == "alice"


@pytest.mark.parametrize("header", [None, "", "   ", "Bearer", "bearer "])
def test_missing_token(header: str | None) -> None:
    assert reason_of(verifier().verify_header, header) == "missing bearer token"


@pytest.mark.parametrize("header", ["Basic YWxpY2U6cHc=", "Token abc", "abc.def.ghi"])
def test_other_schemes_are_rejected(header: str) -> None:
    assert reason_of(verifier().verify_header, header) == "authorization scheme must be Bearer"


@pytest.mark.parametrize("spacing", ["Bearer  {t}", "Bearer {t} extra", "Bearer {t} {t}"])
def test_anything_but_exactly_one_token_is_malformed(spacing: str) -> None:
    header = spacing.format(t=token())
    assert reason_of(verifier().verify_header, header) == "malformed authorization header"


# --- size and shape -----------------------------------------------------------------------------


def test_token_over_8_kib_is_rejected_before_decoding() -> None:
    big = token({"sub": "alice", "pad": "x" * MAX_TOKEN_BYTES})
    assert reason_of(verifier().verify, big) == "token too large"
    assert reason_of(verifier().verify, "x" * (MAX_TOKEN_BYTES + 1)) == "token too large"


def test_token_just_under_the_limit_is_accepted() -> None:
    candidates = (token({"sub": "alice", "pad": "x" * n}) for n in range(6000, 6200))
    near_limit = max((t for t in candidates if len(t) <= MAX_TOKEN_BYTES), key=len)
    assert len(near_limit) > MAX_TOKEN_BYTES - 4
    assert verifier().verify(near_limit).subject == "alice"


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "abc",
        "a.b",
        "a.b.c.d",
        "!!!.###.$$$",
        f"{b64url(b'not json')}.{b64url(b'{}')}.",
        f"{b64url(b'[1, 2]')}.{b64url(b'{}')}.",
        "é" + "a.b.c",
    ],
)
def test_malformed_tokens(bad: str) -> None:
    assert reason_of(verifier().verify, bad) == "malformed token"


def test_payload_that_is_not_an_object_is_malformed() -> None:
    header = b64url(json.dumps({"alg": "HS256"}).encode())
    signing_input = f"{header}.{b64url(b'[1]')}"
    digest = hmac.new(SECRET.encode(), signing_input.encode(), hashlib.sha256).digest()
    bad = f"{signing_input}.{b64url(digest)}"
    assert reason_of(verifier().verify, bad) == "malformed token"


def test_non_integer_exp_is_malformed() -> None:
    assert reason_of(verifier().verify, token({"sub": "a", "exp": "soon"})) == "malformed token"


def test_header_without_alg_is_malformed() -> None:
    bad = hand_built({"typ": "JWT"}, {"sub": "alice"})
    assert reason_of(verifier().verify, bad) == "malformed token"


# --- algorithm ----------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
@pytest.mark.parametrize("signed", [False, True])
def test_alg_none_is_rejected(alg: str, signed: bool) -> None:
    unsigned = hand_built({"alg": alg, "typ": "JWT"}, {"sub": "admin"}, SECRET if signed else None)
    assert reason_of(verifier().verify, unsigned) == f"unsupported algorithm '{alg}'"


@pytest.mark.parametrize("alg", ["RS256", "ES256", "PS256", "HS512", "hs256"])
def test_other_algorithms_are_rejected_even_with_a_valid_hmac(alg: str) -> None:
    # Algorithm confusion: an RS256-labelled token HMAC-signed with the verifier's key material.
    confused = hand_built({"alg": alg, "typ": "JWT"}, {"sub": "admin"})
    assert reason_of(verifier().verify, confused) == f"unsupported algorithm '{alg}'"


def test_hand_built_hs256_token_is_accepted() -> None:
    assert verifier().verify(hand_built({"alg": "HS256"}, {"sub": "bob"})).subject == "bob"


def test_long_algorithm_names_are_cut() -> None:
    reason = reason_of(verifier().verify, hand_built({"alg": "X" * 500}, {}))
    assert reason == f"unsupported algorithm '{'X' * 32}...'"


# --- signature ----------------------------------------------------------------------------------


def test_wrong_key_is_an_invalid_signature() -> None:
    assert reason_of(verifier().verify, token(key=OTHER_SECRET)) == "invalid signature"


def test_tampered_payload_is_an_invalid_signature() -> None:
    header, _, signature = token().split(".")
    forged = b64url(json.dumps({"sub": "admin", "exp": now() + 300}).encode())
    assert reason_of(verifier().verify, f"{header}.{forged}.{signature}") == "invalid signature"


def test_signature_is_checked_before_claims() -> None:
    expired_forgery = token({"sub": "a", "exp": now() - 3600}, key=OTHER_SECRET)
    assert reason_of(verifier().verify, expired_forgery) == "invalid signature"


# --- time claims --------------------------------------------------------------------------------


def test_expired_token() -> None:
    assert reason_of(verifier(leeway_s=30).verify, token({"exp": now() - 60})) == "token expired"


def test_expired_within_leeway_is_accepted() -> None:
    assert verifier(leeway_s=30).verify(token({"sub": "a", "exp": now() - 10})).subject == "a"


def test_zero_leeway_rejects_a_just_expired_token() -> None:
    assert reason_of(verifier(leeway_s=0).verify, token({"exp": now() - 2})) == "token expired"


def test_not_yet_valid_token() -> None:
    reason = reason_of(verifier(leeway_s=30).verify, token({"nbf": now() + 120}))
    assert reason == "token not yet valid"


def test_nbf_within_leeway_is_accepted() -> None:
    assert verifier(leeway_s=30).verify(token({"sub": "a", "nbf": now() + 10})).subject == "a"


def test_iat_in_the_future_is_not_yet_valid() -> None:
    reason = reason_of(verifier(leeway_s=30).verify, token({"iat": now() + 120}))
    assert reason == "token not yet valid"


# --- issuer, audience, required claims ----------------------------------------------------------


def test_wrong_audience() -> None:
    check = verifier(audience="orders-api").verify
    assert reason_of(check, token({"aud": "billing-api"})) == "invalid audience"


def test_audience_list_containing_ours_is_accepted() -> None:
    check = verifier(audience="orders-api").verify
    assert check(token({"sub": "a", "aud": ["billing-api", "orders-api"]})).subject == "a"


def test_configured_audience_must_be_present() -> None:
    check = verifier(audience="orders-api").verify
    assert reason_of(check, token({"sub": "a"})) == "missing required claim 'aud'"


def test_audience_is_not_checked_when_not_configured() -> None:
    assert verifier().verify(token({"sub": "a", "aud": "anything"})).subject == "a"


def test_wrong_issuer() -> None:
    check = verifier(issuer="https://idp.example").verify
    assert reason_of(check, token({"iss": "https://evil.example"})) == "invalid issuer"


def test_configured_issuer_must_be_present() -> None:
    check = verifier(issuer="https://idp.example").verify
    assert reason_of(check, token({"sub": "a"})) == "missing required claim 'iss'"


def test_matching_issuer_and_audience_are_accepted() -> None:
    check = verifier(issuer="https://idp.example", audience="orders-api").verify
    claims = {"sub": "a", "iss": "https://idp.example", "aud": "orders-api"}
    assert check(token(claims)).subject == "a"


def test_issuer_is_not_checked_when_not_configured() -> None:
    assert verifier().verify(token({"sub": "a", "iss": "whoever"})).subject == "a"


def test_missing_required_claim() -> None:
    check = verifier(required_claims=("sub", "tenant")).verify
    assert reason_of(check, token({"sub": "a"})) == "missing required claim 'tenant'"
    assert check(token({"sub": "a", "tenant": "acme"})).claims["tenant"] == "acme"


def test_null_required_claim_counts_as_missing() -> None:
    check = verifier(required_claims=("sub",)).verify
    assert reason_of(check, token({"sub": None})) == "missing required claim 'sub'"


# --- configuration and messages -----------------------------------------------------------------


def test_empty_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="secret"):
        JwtVerifier(JwtConfig(secret=""))


def test_reasons_never_echo_the_token() -> None:
    forged = token(key=OTHER_SECRET)
    reason = reason_of(verifier().verify_header, f"Bearer {forged}")
    assert forged not in reason
    assert forged.split(".")[1] not in reason


def test_a_remembered_token_still_expires_on_time() -> None:
    check = verifier(leeway_s=0)
    short_lived = token({"sub": "a", "exp": now() + 1})
    assert check.verify(short_lived).subject == "a"
    assert check.verify(short_lived).subject == "a"  # answered from the cache
    time.sleep(1.2)
    assert reason_of(check.verify, short_lived) == "token expired"


def test_a_remembered_token_is_not_valid_before_its_nbf() -> None:
    check = verifier(leeway_s=0)
    later = token({"sub": "a", "nbf": now() + 1})
    assert reason_of(check.verify, later) == "token not yet valid"
    time.sleep(1.1)
    assert check.verify(later).subject == "a"
    assert check.verify(later).subject == "a"


def test_a_bad_token_is_never_remembered_as_good() -> None:
    check = verifier()
    good = token({"sub": "a", "exp": now() + 60})
    tampered = good[:-2] + ("AA" if not good.endswith("AA") else "BB")
    assert check.verify(good).subject == "a"
    assert reason_of(check.verify, tampered) == "invalid signature"
    assert reason_of(check.verify, tampered) == "invalid signature"


def test_identify_fails_closed_on_an_auth_route_without_a_verifier() -> None:
    # Validation refuses auth_required without a jwt block; were that state reached anyway (a
    # config compiled around validation), no token of any kind may pass.
    valid = f"Bearer {token()}"
    unsigned = f"Bearer {hand_built({'alg': 'none', 'typ': 'JWT'}, {'sub': 'mallory'}, None)}"
    assert identify(verifier(), valid, required=True, wanted=False) is not None  # a real verifier

    for authorization in (None, valid, unsigned, "Bearer", "Basic YTpi"):
        for wanted in (False, True):
            with pytest.raises(AuthError) as refused:
                identify(None, authorization, required=True, wanted=wanted)
            assert refused.value.reason == "authentication is not configured"
