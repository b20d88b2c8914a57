"""Seed a fresh Open WebUI through its own API: the admin account, then sign-up opened again.

Open WebUI makes the first account admin and then turns sign-up off in its database, whatever
ENABLE_SIGNUP says; the admin turns it back on (POST /api/v1/auths/admin/config), as an
operator would. Nothing is written to its tables by hand.
"""

from __future__ import annotations

import secrets
from typing import Any

import httpx

ADMIN_EMAIL = "admin@throughline.test"
ADMIN_NAME = "Throughline Admin"


def seed(stack: Any) -> None:
    """Create the admin and re-enable sign-up; remember the admin's credentials on the stack."""
    base = stack.urls["webui_url"]
    password = secrets.token_urlsafe(18) + "-7"  # a letter and a digit, whatever the draw (password policy)
    with httpx.Client(base_url=base, timeout=30) as http:
        signup = http.post(
            "/api/v1/auths/signup", json={"name": ADMIN_NAME, "email": ADMIN_EMAIL, "password": password}
        )
        if signup.status_code != 200 or signup.json().get("role") != "admin":
            raise RuntimeError(f"admin sign-up answered {signup.status_code}: {signup.text[:300]}")
        token = signup.json()["token"]
        headers = {"Authorization": f"Bearer {token}"}
        config = http.get("/api/v1/auths/admin/config", headers=headers)
        config.raise_for_status()
        wanted = {**config.json(), "ENABLE_SIGNUP": True, "DEFAULT_USER_ROLE": "user"}
        saved = http.post("/api/v1/auths/admin/config", headers=headers, json=wanted)
        if saved.status_code != 200 or saved.json().get("ENABLE_SIGNUP") is not True:
            raise RuntimeError(f"re-enabling sign-up answered {saved.status_code}: {saved.text[:300]}")
    stack.seed_data.update({"admin_email": ADMIN_EMAIL, "admin_password": password, "admin_token": token})
