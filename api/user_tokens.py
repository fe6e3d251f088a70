"""End users' signed tokens: the JWTs a shop's backend mints for its signed-in user, so an
app or a web page reaches `/v1/me/…` without ever holding a service key.

A token is accepted when it is signed by one of the configured keys, names that key's
algorithm, is for Herald's audience, has not expired, and names a user:

* `sub` — the user id (Herald's id pattern); `exp` — required; `aud` — required, must be
  `HERALD_USER_TOKEN_AUDIENCE`; `nbf`/`iat`, when present, are checked too (with
  `LEEWAY_S` for clock skew).
* Keys: `HERALD_USER_TOKEN_SECRET` (HS256) and/or `HERALD_USER_TOKEN_PUBLIC_KEY` (a P-256
  key → ES256, an RSA key of ≥ 2,048 bits → RS256). Each is one key, or a JSON map
  `{"kid": key}`; the token's `kid` header picks the key. So a rotation adds the new kid,
  the shop's backend switches to it, and the old kid is dropped after the longest token
  lifetime — no downtime. A single unnamed key takes tokens without a `kid`; a token with a
  kid no key has is refused.
* Why the algorithm is decided by the key, never by the token: the classic JWT attacks are
  `alg: none` and algorithm confusion (an RS256 public key used as an HS256 secret). Each
  key verifies with exactly its own algorithm, and a header naming another is refused
  before any signature check.
* HS256 secrets shorter than 32 bytes are refused at start: a short secret can be brute
  forced from one token.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from api.schemas import ID_PATTERN

LEEWAY_S = 30
MIN_SECRET_BYTES = 32
_USER_ID = re.compile(ID_PATTERN)


class TokenRefused(Exception):
    """Why a token is not accepted (said to the client: none of it is secret)."""


@dataclass(frozen=True)
class VerifyingKey:
    algorithm: str
    key: Any


def _named(setting: str | None, what: str) -> dict[str | None, str]:
    """{kid: key} of a setting that is one key (kid None) or a JSON {"kid": key} map."""
    if setting is None or not setting.strip():
        return {}
    text = setting.strip()
    if not text.startswith("{"):
        return {None: text}
    try:
        named = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{what}: not valid JSON") from exc
    if not isinstance(named, dict) or not all(
        isinstance(k, str) and k and isinstance(v, str) for k, v in named.items()
    ):
        raise ValueError(f'{what}: JSON must be {{"kid": "key", ...}}')
    return named


def _public_key(pem: str, kid: str | None) -> VerifyingKey:
    try:
        key = load_pem_public_key(pem.encode())
    except ValueError as exc:
        raise ValueError(f"user_token_public_key {kid or ''}: not a PEM public key") from exc
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return VerifyingKey("ES256", key)
    if isinstance(key, rsa.RSAPublicKey) and key.key_size >= 2048:
        return VerifyingKey("RS256", key)
    raise ValueError(f"user_token_public_key {kid or ''}: only P-256 (ES256) or RSA ≥ 2048 bits")


def secrets_of(setting: str | None) -> dict[str | None, str]:
    """The HS256 secrets by kid, each checked for length."""
    secrets = _named(setting, "user_token_secret")
    for kid, secret in secrets.items():
        if len(secret.encode()) < MIN_SECRET_BYTES:
            raise ValueError(
                f"user_token_secret {kid or ''}: at least {MIN_SECRET_BYTES} bytes, got "
                f"{len(secret.encode())}"
            )
    return secrets


class UserTokens:
    """Verifies end users' tokens against the configured keys (see the module docstring)."""

    def __init__(self, secret: str | None, public_key: str | None, audience: str) -> None:
        self.audience = audience
        self.keys: dict[str | None, VerifyingKey] = {
            kid: VerifyingKey("HS256", s.encode()) for kid, s in secrets_of(secret).items()
        }
        for kid, pem in _named(public_key, "user_token_public_key").items():
            if kid in self.keys:
                raise ValueError(f"kid {kid!r} names both a secret and a public key")
            self.keys[kid] = _public_key(pem, kid)

    @classmethod
    def from_settings(cls, api: Any) -> UserTokens:
        """From an `ApiSettings`."""
        return cls(api.user_token_secret, api.user_token_public_key, api.user_token_audience)

    def verify(self, token: str) -> str:
        """The user id the token is for; raises TokenRefused saying why not."""
        if not self.keys:
            raise TokenRefused("user tokens are not configured on this Herald")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise TokenRefused("not a JWT") from exc
        kid = header.get("kid")
        key = self.keys.get(kid) if isinstance(kid, str | None) else None
        if key is None:
            raise TokenRefused("unknown kid" if kid is not None else "the token needs a kid")
        if header.get("alg") != key.algorithm:
            raise TokenRefused(f"this key verifies {key.algorithm} only")
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[key.algorithm],
                audience=self.audience,
                leeway=LEEWAY_S,
                options={"require": ["exp", "sub", "aud"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise TokenRefused("expired") from exc
        except jwt.InvalidAudienceError as exc:
            raise TokenRefused("not for this audience") from exc
        except jwt.PyJWTError as exc:
            raise TokenRefused(str(exc) or "invalid token") from exc
        sub = claims["sub"]
        if not isinstance(sub, str) or not _USER_ID.fullmatch(sub):
            raise TokenRefused("sub is not a user id")
        return sub


def mint(
    secret_setting: str,
    user_id: str,
    audience: str = "herald",
    ttl_s: int = 3600,
    kid: str | None = None,
) -> str:
    """An HS256 token for `user_id` (local use, tests): signed with the secret of `kid`,
    or — when none is named — the unnamed secret, else the first of the map."""
    secrets = secrets_of(secret_setting)
    if not secrets:
        raise ValueError("no user token secret configured")
    if kid is None and None not in secrets:
        kid = next(iter(secrets))
    if kid not in secrets:
        raise ValueError(f"no secret with kid {kid!r}")
    now = int(time.time())
    claims = {"sub": user_id, "aud": audience, "iat": now, "exp": now + ttl_s}
    headers = {"kid": kid} if kid is not None else None
    return jwt.encode(claims, secrets[kid], algorithm="HS256", headers=headers)
