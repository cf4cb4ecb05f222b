"""Pure ASGI middleware: routing roles by HTTP method, causal tokens across requests.

Works under any ASGI framework (FastAPI, Starlette, Litestar...); it needs no
package beyond routing_db.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from ._causal.http import DEFAULT_TOKEN_HEADER, Middleware
from ._exceptions import ConfigurationError

__all__ = ["DEFAULT_TOKEN_HEADER", "RoutingMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class RoutingMiddleware(Middleware[Scope, ASGIApp]):
    """Carries the causal token across requests; optionally routes by method."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the request inside its causal token (and role, if configured)."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = (
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in scope.get("headers", ())
        )
        try:
            context = self.context_of(scope, headers, scope.get("method"))
        except ConfigurationError:
            await _bad_token(send, self.bad_token_body())
            return
        with context as floor:

            async def send_with_token(message: Message) -> None:
                if message["type"] == "http.response.start":
                    extra = [
                        (name.lower().encode("latin-1"), value.encode("latin-1"))
                        for name, value in self.token_headers(floor)
                    ]
                    if extra:
                        message["headers"] = [*message.get("headers", []), *extra]
                await send(message)

            await self.app(scope, receive, send_with_token)


async def _bad_token(send: Send, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 400,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})
