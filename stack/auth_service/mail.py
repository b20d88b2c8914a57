"""Outgoing mail over SMTP (standard library smtplib, run in a worker thread)."""

from __future__ import annotations

import asyncio
import logging
import smtplib
from email.message import EmailMessage

__all__ = ["Mailer", "VERIFY_SUBJECT"]

log = logging.getLogger("auth.mail")
VERIFY_SUBJECT = "Verify your Throughline email"
SENDER = "Throughline <no-reply@throughline.test>"


class Mailer:
    def __init__(self, host: str, port: int, timeout: float = 5.0) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout

    def _send(self, msg: EmailMessage) -> None:
        with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as smtp:
            smtp.send_message(msg)

    async def send(self, msg: EmailMessage) -> bool:
        """Send; False (logged, never raised) when the SMTP server fails."""
        try:
            await asyncio.to_thread(self._send, msg)
        except (OSError, smtplib.SMTPException) as exc:
            log.error("sending mail %r to %s failed: %s", msg["Subject"], msg["To"], exc)
            return False
        log.info("sent mail %r to %s", msg["Subject"], msg["To"])
        return True

    async def send_verification(self, to: str, full_name: str, link: str) -> bool:
        msg = EmailMessage()
        msg["From"] = SENDER
        msg["To"] = to
        msg["Subject"] = VERIFY_SUBJECT
        msg.set_content(
            f"Hi {full_name},\n\n"
            "Confirm your email address to finish creating your Throughline account:\n\n"
            f"{link}\n\n"
            "The link is valid for 24 hours. If you did not sign up, ignore this message.\n"
        )
        msg.add_alternative(
            f"<p>Hi {_esc(full_name)},</p>"
            "<p>Confirm your email address to finish creating your Throughline account:</p>"
            f'<p><a href="{_esc(link)}">Verify my email</a></p>'
            "<p>The link is valid for 24 hours. If you did not sign up, ignore this message.</p>",
            subtype="html",
        )
        return await self.send(msg)


def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
