"""The outermost request checks, as a pure ASGI middleware so they run before any body is read.

* The API key is checked from the headers alone: a client without it gets
  401 before the server reads a byte of its body.
* The body limit counts the bytes actually received (``Content-Length`` or
  chunked alike) and answers 413 as soon as they pass the limit, without
  reading the rest.
* A response sent before its request body was read in full closes the
  connection, so the server never keeps reading (and discarding) what it
  refused.
"""

from __future__ import annotations

import json
import secrets

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pooledir.service.settings import Settings

#: routes that answer without the API key: liveness, readiness and the API docs
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})


def key_ok(settings: Settings, authorization: str | None) -> bool:
    """True when no key is configured or ``authorization`` is ``Bearer <key>`` (compared in constant time)."""
    if settings.api_key is None:
        return True
    scheme, _, given = (authorization or "").partition(" ")
    expected = settings.api_key.get_secret_value().encode()
    return scheme.lower() == "bearer" and secrets.compare_digest(given.strip().encode(), expected)


class BodyTooLarge(HTTPException):
    """The request body passed the limit; raised from ``receive`` so the app stops reading it."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body over {limit} bytes; send at most {limit} bytes per request")


class RequestGuard:
    """API key first, then a byte-counting body limit; see the module docstring."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check the key, then run the app with a counting ``receive``."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope["headers"]}
        length = headers.get(b"content-length", b"").decode("latin-1")
        has_body = b"transfer-encoding" in headers or (length not in ("", "0"))
        limit = self.settings.max_body_bytes
        state = {"received": 0, "done": not has_body, "started": False}

        async def send_guarded(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["started"] = True
                if not state["done"]:  # the client may still be sending: stop reading by closing
                    message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        if scope["path"] not in OPEN_PATHS:
            authorization = headers.get(b"authorization", b"").decode("latin-1")
            if not key_ok(self.settings, authorization):
                await _reply(send_guarded, 401, "missing or wrong API key", [(b"www-authenticate", b"Bearer")])
                return
        if length.isdigit() and int(length) > limit:
            await _reply(send_guarded, 413, BodyTooLarge(limit).detail)
            return

        async def receive_counted() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > limit:
                    raise BodyTooLarge(limit)
                state["done"] = not message.get("more_body", False)
            return message

        try:
            await self.app(scope, receive_counted, send_guarded)
        except BodyTooLarge as e:  # FastAPI answers it itself; this catches a reader that let it through
            if state["started"]:
                raise
            await _reply(send_guarded, 413, e.detail)


async def _reply(send: Send, status: int, detail: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    start_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": start_headers + (headers or [])})
    await send({"type": "http.response.body", "body": body})
