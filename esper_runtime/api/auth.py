"""JWT bearer authentication for the REST API: RS256 / ES256 signatures, expiry, issuer, audience, roles.

Keys come from configuration only (``ApiSettings``): PEM public keys, a JWKS file, or a JWKS URL. A token is
accepted when its signature verifies with one of them (chosen by ``kid`` when the token names one), it has not
expired, and its ``iss`` and ``aud`` are the configured ones; ``alg: none`` and HMAC algorithms are never accepted.
Roles are the ``roles`` claim (a list of strings); anything that writes needs ``ApiSettings.write_role``.

``generate_keypair`` and ``issue_token`` are for local use (``esper token``): production tokens come from an
identity provider whose JWKS the API is pointed at.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import jwt
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from streams.config import load_settings
from esper_runtime.api.exceptions import AuthError

__all__ = ["ApiSettings", "AuthError", "Principal", "TokenVerifier", "generate_keypair", "issue_token",
           "ALGORITHMS"]

ALGORITHMS = ("RS256", "ES256")


class ApiSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ESPER_API_", extra="ignore")

    issuer: str = Field(default="esper-local", description="The `iss` every token must carry.")
    audience: str = Field(default="esper-api", description="The `aud` every token must carry.")
    public_keys: str = Field(default="", description="Comma-separated PEM public key files (default: "
                                                     "$ESPER_HOME/api/public.pem when it exists).")
    jwks_file: Path | None = Field(default=None, description="A JWKS document on disk.")
    jwks_url: str | None = Field(default=None, description="A JWKS endpoint (e.g. your identity provider's).")
    read_role: str = Field(default="esper:read", description="The role every read requires (or the write role).")
    write_role: str = Field(default="esper:write", description="The role that write operations require.")
    leeway_s: int = Field(default=30, description="Clock skew tolerated on exp/nbf/iat.")

    def key_files(self) -> list[Path]:
        if self.public_keys:
            return [Path(p.strip()) for p in self.public_keys.split(",") if p.strip()]
        default = load_settings().home / "api" / "public.pem"
        return [default] if default.exists() else []


@dataclass(frozen=True)
class Principal:
    subject: str
    roles: frozenset[str]
    claims: dict


class TokenVerifier:
    def __init__(self, settings: ApiSettings):
        self.settings = settings
        self._keys: list[tuple[str | None, object]] = []  # (kid, key)
        for path in settings.key_files():
            try:
                self._keys.append((None, _load_public_key(path.read_bytes())))
            except (OSError, ValueError) as exc:
                raise AuthError(f"cannot use the public key {path}: {exc}") from None
        if settings.jwks_file is not None:
            try:
                jwks = jwt.PyJWKSet.from_dict(json.loads(Path(settings.jwks_file).read_text()))
            except (OSError, ValueError, jwt.PyJWKError) as exc:
                raise AuthError(f"cannot use the JWKS file {settings.jwks_file}: {exc}") from None
            self._keys += [(k.key_id, k.key) for k in jwks.keys]
        self._jwks_client = jwt.PyJWKClient(settings.jwks_url, cache_keys=True) if settings.jwks_url else None
        if not self._keys and self._jwks_client is None:
            raise AuthError("no key to verify tokens with: set ESPER_API_PUBLIC_KEYS, ESPER_API_JWKS_FILE or "
                            "ESPER_API_JWKS_URL, or run `esper token keygen` for a local key pair")

    def verify(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            raise AuthError(f"malformed token: {exc}") from None
        if header.get("alg") not in ALGORITHMS:
            raise AuthError(f"algorithm {header.get('alg')!r} is not accepted (only {', '.join(ALGORITHMS)})")
        kind = _KEY_KINDS[header["alg"]]
        candidates = [key for kid, key in self._keys
                      if (kid is None or kid == header.get("kid")) and isinstance(key, kind())]
        if self._jwks_client is not None:
            try:
                candidates.append(self._jwks_client.get_signing_key_from_jwt(token).key)
            except jwt.PyJWKClientError as exc:
                if not candidates:
                    raise AuthError(f"no JWKS key for this token: {exc}") from None
        for key in candidates:
            try:
                claims = jwt.decode(token, key, algorithms=list(ALGORITHMS), audience=self.settings.audience,
                                    issuer=self.settings.issuer, leeway=self.settings.leeway_s,
                                    options={"require": ["exp", "iss", "aud", "sub"]})
            except (jwt.InvalidSignatureError, jwt.InvalidKeyError):
                continue
            except jwt.ExpiredSignatureError:
                raise AuthError("the token has expired") from None
            except jwt.InvalidTokenError as exc:
                raise AuthError(f"invalid token: {exc}") from None
            roles = claims.get("roles", [])
            if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
                raise AuthError("the roles claim must be a list of strings")
            return Principal(claims["sub"], frozenset(roles), claims)
        raise AuthError("the token's signature does not verify with any configured key")


def _rsa():
    from cryptography.hazmat.primitives.asymmetric import rsa

    return rsa.RSAPublicKey


def _ec():
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.EllipticCurvePublicKey


_KEY_KINDS = {"RS256": _rsa, "ES256": _ec}


def _load_public_key(pem: bytes):
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    return load_pem_public_key(pem)


def generate_keypair(directory: Path) -> tuple[Path, Path]:
    """An ES256 (P-256) key pair as private.pem (mode 0600) and public.pem in ``directory``."""
    import os

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    private, public = directory / "private.pem", directory / "public.pem"
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


def issue_token(private_pem: bytes, subject: str, roles: list[str], issuer: str, audience: str,
                ttl_s: int = 3600, kid: str | None = None) -> str:
    """A signed token (ES256 for EC keys, RS256 for RSA keys)."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    key = load_pem_private_key(private_pem, password=None)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        alg = "ES256"
    elif isinstance(key, rsa.RSAPrivateKey):
        alg = "RS256"
    else:
        raise AuthError("only EC (P-256) and RSA private keys can sign tokens")
    now = int(time.time())
    claims = {"sub": subject, "roles": roles, "iss": issuer, "aud": audience, "iat": now, "nbf": now,
              "exp": now + ttl_s, "jti": uuid.uuid4().hex}
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid} if kid else None)
