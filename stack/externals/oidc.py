"""OpenID Connect provider stand-in ("Acme ID"): authorization code flow with PKCE, on loopback.

Run: ``python -m stack.externals.oidc --port P`` (``create_app()`` for the ASGI app).

Endpoints (issuer = ``TL_OIDC_ISSUER``, else ``http://127.0.0.1:PORT``):

- ``GET /.well-known/openid-configuration`` discovery; ``GET /jwks`` (RS256 key made at start).
- ``GET /authorize`` the sign-in/consent page a browser clicks: heading "Sign in to Acme ID",
  a radio group of test identities (``name="identity"``, value = sub), or fields "Email"
  (``name="email"``) + "Name" (``name="name"``) for any identity (a filled email wins over
  the radio), buttons "Allow" / "Deny" (``name="decision"`` value ``allow`` / ``deny``),
  hidden ``txn`` (the pending request, kept server side).
- ``POST /authorize/decision`` -> 302 to redirect_uri with ``code`` & ``state``, or
  ``error=access_denied`` & ``state`` on Deny.
- ``POST /token`` grant ``authorization_code``; PKCE S256 required; client auth
  ``client_secret_basic`` or ``client_secret_post``. A wrong redirect_uri, wrong verifier,
  reused (codes are single-use, burnt on the first attempt) or expired code ->
  400 ``{"error": "invalid_grant"}``.
- ``GET|POST /userinfo`` (Bearer access token); ``GET /health``.

Environment: TL_OIDC_CLIENT_ID (throughline-web), TL_OIDC_CLIENT_SECRET (dev-secret),
TL_OIDC_REDIRECT_URIS (comma separated; unset = any http://127.0.0.1:* / http://localhost:*),
TL_OIDC_IDENTITIES (JSON list of {sub?, email, name}), TL_OIDC_PROVIDER_NAME (Acme ID),
TL_OIDC_CODE_TTL (60 s), TL_OIDC_TOKEN_TTL (3600 s).

This is a third party's stand-in: it imports nothing from the rest of the stack.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import html
import json
import os
import secrets
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from stack.externals._common import AccessLog, log_line

SERVICE = "oidc"
TXN_TTL = 600

DEFAULT_IDENTITIES = [
    {"email": "ada@acme.test", "name": "Ada Lovelace"},
    {"email": "grace@acme.test", "name": "Grace Hopper"},
]


# --------------------------------------------------------------------------- logging


def _log_line(line: str) -> None:
    log_line(SERVICE, line)


# --------------------------------------------------------------------------- model


def derive_sub(email: str) -> str:
    """Deterministic subject for an email: ``acme|`` + sha256(lower-cased email)[:16]."""
    return "acme|" + hashlib.sha256(email.strip().lower().encode()).hexdigest()[:16]


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64url_uint(n: int) -> str:
    return _b64url(n.to_bytes((n.bit_length() + 7) // 8, "big"))


def pkce_s256(verifier: str) -> str:
    return _b64url(hashlib.sha256(verifier.encode("ascii")).digest())


@dataclass
class Identity:
    sub: str
    email: str
    name: str

    def claims(self) -> dict:
        return {"sub": self.sub, "email": self.email, "email_verified": True, "name": self.name}


@dataclass
class Pending:
    client_id: str
    redirect_uri: str
    state: str | None
    nonce: str | None
    scope: str
    code_challenge: str
    created: float = field(default_factory=time.time)


@dataclass
class Grant:
    client_id: str
    redirect_uri: str
    nonce: str | None
    scope: str
    code_challenge: str
    identity: Identity
    expires_at: float
    used: bool = False
    access_tokens: list[str] = field(default_factory=list)


@dataclass
class Settings:
    issuer: str | None
    client_id: str
    client_secret: str
    redirect_uris: list[str] | None
    identities: list[Identity]
    provider_name: str
    code_ttl: int
    token_ttl: int

    @classmethod
    def from_env(cls, issuer: str | None = None) -> Settings:
        env = os.environ
        raw_uris = env.get("TL_OIDC_REDIRECT_URIS", "").strip()
        uris = [u.strip() for u in raw_uris.split(",") if u.strip()] or None
        raw_ids = env.get("TL_OIDC_IDENTITIES", "").strip()
        try:
            items = json.loads(raw_ids) if raw_ids else DEFAULT_IDENTITIES
        except ValueError:
            raise SystemExit(
                f"TL_OIDC_IDENTITIES must be a JSON list of {{sub, email, name}}, got {raw_ids!r}"
            ) from None
        identities = [
            Identity(
                sub=str(i.get("sub") or derive_sub(i["email"])),
                email=str(i["email"]),
                name=str(i.get("name") or i["email"].split("@")[0]),
            )
            for i in items
        ]
        iss = (env.get("TL_OIDC_ISSUER", "").strip() or issuer or "").rstrip("/") or None
        return cls(
            issuer=iss,
            client_id=env.get("TL_OIDC_CLIENT_ID", "").strip() or "throughline-web",
            client_secret=env.get("TL_OIDC_CLIENT_SECRET", "").strip() or "dev-secret",
            redirect_uris=uris,
            identities=identities,
            provider_name=env.get("TL_OIDC_PROVIDER_NAME", "").strip() or "Acme ID",
            code_ttl=int(env.get("TL_OIDC_CODE_TTL", "").strip() or 60),
            token_ttl=int(env.get("TL_OIDC_TOKEN_TTL", "").strip() or 3600),
        )

    def redirect_allowed(self, uri: str) -> bool:
        if self.redirect_uris is not None:
            return uri in self.redirect_uris
        try:
            parts = urlsplit(uri)
            _ = parts.port
        except ValueError:
            return False
        return parts.scheme == "http" and parts.hostname in ("127.0.0.1", "localhost") and not parts.fragment


def _with_params(uri: str, params: dict) -> str:
    parts = urlsplit(uri)
    query = parse_qsl(parts.query, keep_blank_values=True) + [
        (k, v) for k, v in params.items() if v is not None
    ]
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), ""))


# --------------------------------------------------------------------------- HTML

_CSS = """
body{font-family:system-ui,sans-serif;background:#f4f5f7;margin:0}
main{max-width:28rem;margin:3rem auto;background:#fff;padding:2rem;border-radius:8px;
box-shadow:0 1px 4px rgba(0,0,0,.15)}
h1{font-size:1.4rem;margin-top:0}fieldset{border:1px solid #ccd;border-radius:6px;margin:1rem 0}
label{display:block;margin:.4rem 0}input[type=email],input[type=text]{width:100%;padding:.4rem;box-sizing:border-box}
.actions{display:flex;gap:1rem;margin-top:1.2rem}button{padding:.5rem 1.4rem;font-size:1rem}
#allow{background:#2756d8;color:#fff;border:0;border-radius:4px}.error{color:#a00}
"""


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    doc = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>"
        f'<body><main id="main">{body}</main></body></html>'
    )
    return HTMLResponse(doc, status_code=status, headers={"Cache-Control": "no-store"})


def _error_page(provider: str, message: str, status: int = 400) -> HTMLResponse:
    body = (
        f"<h1>{html.escape(provider)}: sign-in error</h1>"
        f'<p role="alert" class="error" data-testid="oidc-error">{html.escape(message)}</p>'
    )
    return _page(f"{provider}: error", body, status)


def _consent_page(
    settings: Settings, txn: str, pending: Pending, error: str = "", email: str = "", name: str = ""
) -> HTMLResponse:
    e = html.escape
    provider = settings.provider_name
    radios = []
    for i, ident in enumerate(settings.identities):
        checked = " checked" if i == 0 else ""
        rid = f"identity-{i}"
        radios.append(
            f'<label for="{rid}"><input type="radio" id="{rid}" name="identity" value="{e(ident.sub)}"{checked}> '
            f"{e(ident.name)} ({e(ident.email)})</label>"
        )
    err = f'<p role="alert" class="error" data-testid="oidc-error">{e(error)}</p>' if error else ""
    scopes = ", ".join(s for s in pending.scope.split() if s != "openid") or "your identity"
    body = f"""
<h1>Sign in to {e(provider)}</h1>
<p id="consent-text"><strong>{e(pending.client_id)}</strong> wants to access your {e(scopes)}.</p>
{err}
<form method="post" action="/authorize/decision" aria-labelledby="consent-text">
  <input type="hidden" name="txn" value="{e(txn)}">
  <fieldset role="radiogroup" aria-labelledby="accounts-legend">
    <legend id="accounts-legend">Choose an account</legend>
    {"".join(radios)}
  </fieldset>
  <fieldset>
    <legend>Or use another account</legend>
    <label for="email">Email</label>
    <input type="email" id="email" name="email" autocomplete="email" value="{e(email)}">
    <label for="name">Name</label>
    <input type="text" id="name" name="name" autocomplete="name" value="{e(name)}">
  </fieldset>
  <div class="actions">
    <button type="submit" id="allow" name="decision" value="allow">Allow</button>
    <button type="submit" id="deny" name="decision" value="deny" formnovalidate>Deny</button>
  </div>
</form>
"""
    return _page(f"Sign in to {provider}", body)


# --------------------------------------------------------------------------- app


def _oauth_error(
    error: str, description: str, status: int = 400, headers: dict | None = None
) -> JSONResponse:
    hdrs = {"Cache-Control": "no-store", "Pragma": "no-cache", **(headers or {})}
    return JSONResponse({"error": error, "error_description": description}, status_code=status, headers=hdrs)


async def _form(request: Request) -> dict[str, str]:
    """application/x-www-form-urlencoded body (first value of each field)."""
    raw = (await request.body()).decode("utf-8", "replace")
    out: dict[str, str] = {}
    for k, v in parse_qsl(raw, keep_blank_values=True):
        out.setdefault(k, v)
    return out


def create_app(issuer: str | None = None) -> FastAPI:
    """The provider's ASGI app. Settings come from the environment at call time; the issuer is
    TL_OIDC_ISSUER, else ``issuer``, else the base URL each request arrives at."""
    settings = Settings.from_env(issuer)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pub = key.public_key().public_numbers()
    kid = _b64url(hashlib.sha256(f"{pub.n}:{pub.e}".encode()).digest()[:12])
    jwk = {
        "kty": "RSA",
        "use": "sig",
        "alg": "RS256",
        "kid": kid,
        "n": _b64url_uint(pub.n),
        "e": _b64url_uint(pub.e),
    }
    pending: dict[str, Pending] = {}
    grants: dict[str, Grant] = {}
    tokens: dict[str, tuple[Identity, float]] = {}

    app = FastAPI(title="OIDC provider stand-in", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.oidc = settings
    app.add_middleware(AccessLog, service=SERVICE)

    def iss(request: Request) -> str:
        return settings.issuer or str(request.base_url).rstrip("/")

    def find_identity(sub: str) -> Identity | None:
        return next((i for i in settings.identities if i.sub == sub), None)

    @app.get("/health")
    async def health(request: Request) -> dict:
        return {"status": "ok", "service": SERVICE, "issuer": iss(request)}

    @app.get("/.well-known/openid-configuration")
    async def discovery(request: Request) -> dict:
        base = iss(request)
        return {
            "issuer": base,
            "authorization_endpoint": f"{base}/authorize",
            "token_endpoint": f"{base}/token",
            "userinfo_endpoint": f"{base}/userinfo",
            "jwks_uri": f"{base}/jwks",
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": ["authorization_code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "scopes_supported": ["openid", "email", "profile"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "code_challenge_methods_supported": ["S256"],
            "claims_supported": [
                "iss",
                "aud",
                "sub",
                "email",
                "email_verified",
                "name",
                "nonce",
                "iat",
                "exp",
            ],
        }

    @app.get("/jwks")
    async def jwks() -> dict:
        return {"keys": [jwk]}

    @app.get("/authorize")
    async def authorize(request: Request) -> Response:
        q = request.query_params
        provider = settings.provider_name
        client_id = q.get("client_id", "")
        redirect_uri = q.get("redirect_uri", "")
        state = q.get("state")
        # Errors about the client or the redirect URI are shown, never redirected (RFC 6749 4.1.2.1).
        if client_id != settings.client_id:
            return _error_page(provider, f"Unknown client_id {client_id!r}.")
        if not redirect_uri or not settings.redirect_allowed(redirect_uri):
            return _error_page(provider, f"redirect_uri {redirect_uri!r} is not registered for this client.")

        def back(error: str, description: str) -> Response:
            target = _with_params(
                redirect_uri, {"error": error, "error_description": description, "state": state}
            )
            return RedirectResponse(target, status_code=302)

        if q.get("response_type") != "code":
            return back("unsupported_response_type", "only response_type=code is supported")
        scope = q.get("scope", "")
        if "openid" not in scope.split():
            return back("invalid_scope", "scope must include openid")
        challenge = q.get("code_challenge", "")
        if not challenge:
            return back("invalid_request", "PKCE is required: code_challenge missing")
        if q.get("code_challenge_method") != "S256":
            return back("invalid_request", "code_challenge_method must be S256")
        now = time.time()
        for t in [t for t, p in pending.items() if now - p.created > TXN_TTL]:
            pending.pop(t, None)
        txn = secrets.token_urlsafe(18)
        pending[txn] = Pending(client_id, redirect_uri, state, q.get("nonce"), scope, challenge)
        return _consent_page(settings, txn, pending[txn])

    @app.post("/authorize/decision")
    async def decision(request: Request) -> Response:
        form = await _form(request)
        txn = form.get("txn", "")
        p = pending.get(txn)
        if p is None:
            return _error_page(
                settings.provider_name, "This sign-in request is unknown or was already answered."
            )
        choice = form.get("decision", "").lower()
        if choice == "deny":
            pending.pop(txn, None)
            target = _with_params(
                p.redirect_uri,
                {"error": "access_denied", "error_description": "The user denied access", "state": p.state},
            )
            return RedirectResponse(target, status_code=302)
        if choice != "allow":
            return _consent_page(settings, txn, p, error="Choose Allow or Deny.")
        email = form.get("email", "").strip()
        name = form.get("name", "").strip()
        identity: Identity | None
        if email:
            local, at, domain = email.partition("@")
            if not (local and at and "." in domain) or any(c.isspace() for c in email):
                return _consent_page(
                    settings, txn, p, error=f"{email!r} is not a valid email address.", email=email, name=name
                )
            known = next((i for i in settings.identities if i.email.lower() == email.lower()), None)
            identity = known or Identity(derive_sub(email), email, name or local)
        else:
            identity = find_identity(form.get("identity", ""))
            if identity is None:
                return _consent_page(settings, txn, p, error="Choose an account or enter an email address.")
        pending.pop(txn, None)
        code = secrets.token_urlsafe(32)
        grants[code] = Grant(
            p.client_id,
            p.redirect_uri,
            p.nonce,
            p.scope,
            p.code_challenge,
            identity,
            time.time() + settings.code_ttl,
        )
        _log_line(f"consent allow sub={identity.sub} email={identity.email}")
        return RedirectResponse(
            _with_params(p.redirect_uri, {"code": code, "state": p.state}), status_code=302
        )

    @app.post("/token")
    async def token(request: Request) -> Response:
        form = await _form(request)
        client_id = secret = None
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("basic "):
            try:
                raw = base64.b64decode(auth[6:].strip(), validate=True).decode()
                cid, _, sec = raw.partition(":")
                client_id, secret = unquote(cid), unquote(sec)
            except (ValueError, UnicodeDecodeError):
                return _oauth_error(
                    "invalid_client", "malformed Basic credentials", 401, {"WWW-Authenticate": "Basic"}
                )
        elif "client_id" in form:
            client_id, secret = form.get("client_id"), form.get("client_secret", "")
        if client_id != settings.client_id or not hmac.compare_digest(
            (secret or "").encode(), settings.client_secret.encode()
        ):
            return _oauth_error(
                "invalid_client", "client authentication failed", 401, {"WWW-Authenticate": "Basic"}
            )
        if form.get("grant_type") != "authorization_code":
            return _oauth_error("unsupported_grant_type", "only authorization_code is supported")
        code = form.get("code", "")
        grant = grants.get(code)
        if grant is None:
            return _oauth_error("invalid_grant", "unknown authorization code")
        if grant.used:
            for t in grant.access_tokens:  # RFC 6749 4.1.2: a replayed code revokes what it issued
                tokens.pop(t, None)
            return _oauth_error("invalid_grant", "authorization code already used")
        grant.used = True  # single use, burnt on the first attempt whatever its outcome
        if time.time() >= grant.expires_at:
            return _oauth_error("invalid_grant", "authorization code expired")
        if grant.client_id != client_id:
            return _oauth_error("invalid_grant", "code was issued to another client")
        if form.get("redirect_uri", "") != grant.redirect_uri:
            return _oauth_error("invalid_grant", "redirect_uri does not match the authorization request")
        verifier = form.get("code_verifier", "")
        if not verifier or not hmac.compare_digest(pkce_s256(verifier), grant.code_challenge):
            return _oauth_error("invalid_grant", "PKCE verification failed")
        now = int(time.time())
        access = secrets.token_urlsafe(32)
        tokens[access] = (grant.identity, now + settings.token_ttl)
        grant.access_tokens.append(access)
        claims = {
            "iss": iss(request),
            "aud": client_id,
            "iat": now,
            "exp": now + settings.token_ttl,
            "auth_time": now,
            "at_hash": _b64url(hashlib.sha256(access.encode()).digest()[:16]),
            **grant.identity.claims(),
        }
        if grant.nonce:
            claims["nonce"] = grant.nonce
        id_token = jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid})
        body = {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": settings.token_ttl,
            "scope": grant.scope,
            "id_token": id_token,
        }
        return JSONResponse(body, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})

    @app.api_route("/userinfo", methods=["GET", "POST"])
    async def userinfo(request: Request) -> Response:
        auth = request.headers.get("authorization", "")
        scheme, _, value = auth.partition(" ")
        entry = tokens.get(value.strip()) if scheme.lower() == "bearer" else None
        if entry is None or time.time() >= entry[1]:
            return JSONResponse(
                {"error": "invalid_token", "error_description": "missing, unknown or expired access token"},
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        return JSONResponse(entry[0].claims())

    return app


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(
        prog="python -m stack.externals.oidc", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    app = create_app(issuer=f"http://{args.host}:{args.port}")
    _log_line(f"listening on http://{args.host}:{args.port} issuer={app.state.oidc.issuer}")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
