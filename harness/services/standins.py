"""The third-party stand-ins (stack/externals): an LLM provider, an OIDC provider, an SMTP server.

Each speaks the real protocol on loopback and is steered through its own control endpoints;
each reads the platform's [env] (API key, client id and secret) like the apps do.
"""

from __future__ import annotations

import sys
from typing import ClassVar

from harness.process import ProcessSpec, http_ready
from harness.services.blocks import Block, BlockRun, Check, python_module_checks


class _PythonStandIn(Block):
    kind = "stand-in"
    module: ClassVar[str]
    requires: ClassVar[dict[str, str]] = {"fastapi": "fastapi", "uvicorn": "uvicorn[standard]"}

    def argv(self, run: BlockRun) -> list[str]:
        return [sys.executable, "-m", self.module, "--port", str(run.port)]

    def health_url(self, run: BlockRun) -> str:
        return f"http://127.0.0.1:{run.port}/health"

    def url(self, run: BlockRun) -> str:
        return f"http://127.0.0.1:{run.port}"

    def spec(self, run: BlockRun) -> ProcessSpec:
        argv = self.argv(run)
        return ProcessSpec(
            name=run.service,
            argv=argv,
            port=run.port,
            ready=http_ready(self.health_url(run)),
            cwd=run.project,
            startup_timeout=self.default_timeout,
            hint=f"run `{' '.join(argv[1:])}` by hand with the TL_* variables of docs/wiring.md "
            "to see the error",
        )

    def doctor(self) -> list[Check]:
        return python_module_checks(self.requires)


class LlmBlock(_PythonStandIn):
    """An OpenAI-compatible LLM provider; {<service>.url} is its /v1 base URL."""

    name = "llm"
    third_party = "LLM provider (OpenAI-compatible)"
    module = "stack.externals.llm"

    def url(self, run: BlockRun) -> str:
        return f"http://127.0.0.1:{run.port}/v1"


class OidcBlock(_PythonStandIn):
    """An OAuth 2.0 / OpenID Connect provider; {<service>.url} is its issuer."""

    name = "oidc"
    third_party = "OAuth/OIDC provider"
    module = "stack.externals.oidc"
    requires = {**_PythonStandIn.requires, "jwt": "pyjwt[crypto]", "cryptography": "cryptography"}


class SmtpBlock(_PythonStandIn):
    """An SMTP server on its port that keeps every mail; {<service>.url} is the HTTP API ({<service>.ports.http})."""

    name = "smtp"
    third_party = "email (SMTP)"
    module = "stack.externals.smtp_sink"
    extra_ports = ("http",)
    requires = {**_PythonStandIn.requires, "aiosmtpd": "aiosmtpd"}

    def argv(self, run: BlockRun) -> list[str]:
        return [*super().argv(run), "--http-port", str(run.ports["http"])]

    def health_url(self, run: BlockRun) -> str:
        return f"http://127.0.0.1:{run.ports['http']}/health"

    def url(self, run: BlockRun) -> str:
        return f"http://127.0.0.1:{run.ports['http']}"
