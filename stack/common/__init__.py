"""Small helpers shared by the stack's app services (auth_service, backend).

- `settings`: `Settings.from_env()` reads every TL_* variable of docs/wiring.md.
- `request_id`: `RequestIdMiddleware` (X-Request-ID in/out, access log without query
  strings), `configure_logging()` (every line carries the request id), `current_request_id()`.
- `signing`: HMAC-SHA256 of internal calls (`sign_body`, `verify_signature`, `SIGNATURE_HEADER`).
- `errors`: `install_validation_handler(app)` turns 422s into
  `{"detail": ..., "errors": [{"field", "message"}]}`; `FieldErrors` raises the same shape.

Nothing here imports the test layer or a service package.
"""
