"""The RS256 signing key, the JWKS and access tokens.

The PEM file at TL_JWT_PRIVATE_KEY_FILE is created (mode 0600) when missing; creation
is atomic (temp file + link), so two processes starting together end with one key.
The `kid` is the RFC 7638 thumbprint of the public key.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

__all__ = ["SigningKey", "TokenError"]


class TokenError(Exception):
    """The access token is missing, malformed, badly signed, expired or for someone else."""


def _load_or_create(path: Path) -> rsa.RSAPrivateKey:
    if not path.exists():
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(pem)
            with contextlib.suppress(FileExistsError):  # another process won the race: use its key
                os.link(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError(f"{path} does not hold an RSA private key")
    return key


class SigningKey:
    def __init__(self, path: str | os.PathLike[str], *, issuer: str, audience: str, access_ttl: int) -> None:
        self.private_key = _load_or_create(Path(path))
        self.public_key = self.private_key.public_key()
        self.issuer = issuer
        self.audience = audience
        self.access_ttl = access_ttl
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.public_key))
        thumb_input = json.dumps({"e": jwk["e"], "kty": "RSA", "n": jwk["n"]}, separators=(",", ":"))
        self.kid = (
            base64.urlsafe_b64encode(hashlib.sha256(thumb_input.encode()).digest()).rstrip(b"=").decode()
        )
        self.public_jwk = {**jwk, "kid": self.kid, "use": "sig", "alg": "RS256"}

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.public_jwk]}

    def issue_access_token(self, *, user_id: str, email: str, sid: str) -> str:
        now = int(time.time())
        claims = {
            "sub": user_id,
            "email": email,
            "sid": sid,
            "iat": now,
            "exp": now + self.access_ttl,
            "iss": self.issuer,
            "aud": self.audience,
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(claims, self.private_key, algorithm="RS256", headers={"kid": self.kid})

    def decode_access_token(self, token: str, *, verify_exp: bool = True) -> dict[str, Any]:
        try:
            return jwt.decode(
                token,
                self.public_key,
                algorithms=["RS256"],
                audience=self.audience,
                issuer=self.issuer,
                leeway=5,
                options={"require": ["sub", "sid", "exp", "iat"], "verify_exp": verify_exp},
            )
        except jwt.PyJWTError as exc:
            raise TokenError(str(exc)) from None
