"""Pure ASGI middleware: routing roles by HTTP method, causal tokens across requests.

Works under any ASGI framework (FastAPI, Starlette, Litestar...); it needs no
package beyond routing_db.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from ._causal.floor import causal_token
from ._causal.http import (
    DEFAULT_TOKEN_HEADER,
    READ_METHODS,
    TokenOptions,
    bad_token_detail,
    given_token,
    request_context,
    token_cookie,
    token_to_send,
)
from ._exceptions import ConfigurationError

__all__ = ["DEFAULT_TOKEN_HEADER", "RoutingMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class RoutingMiddleware(TokenOptions[Scope]):
    """Carries the causal token across requests; optionally routes by method."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        header: str = DEFAULT_TOKEN_HEADER,
        cookie: str | None = None,
        roles_by_method: bool = False,
        read_methods: Iterable[str] = READ_METHODS,
        causal_key: Callable[[Scope], object] | None = None,
    ) -> None:
        super().__init__(
            header=header,
            cookie=cookie,
            roles_by_method=roles_by_method,
            read_methods=read_methods,
            causal_key=causal_key,
        )
        self.app = app

    def _given_token(self, scope: Scope) -> str | None:
        headers = (
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in scope.get("headers", ())
        )
        return given_token(headers, self.header, self.cookie)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the request inside its causal token (and role, if configured)."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        read = self.reads(scope.get("method"))
        try:
            block = causal_token(self._given_token(scope))
        except ConfigurationError:
            await _bad_token(send, self.header)
            return
        key = self.key_of(scope)
        with request_context(block, read=read, key=key) as floor:

            async def send_with_token(message: Message) -> None:
                token = token_to_send(floor)
                if message["type"] == "http.response.start" and token is not None:
                    headers = list(message.get("headers", []))
                    headers.append((self.header.encode(), token.encode()))
                    if self.cookie is not None:
                        cookie = token_cookie(self.cookie, token)
                        headers.append((b"set-cookie", cookie.encode("latin-1")))
                    message["headers"] = headers
                await send(message)

            await self.app(scope, receive, send_with_token)


async def _bad_token(send: Send, header: str) -> None:
    # JSON, in the shape FastAPI gives its own errors: APIs answer in JSON.
    await send(
        {
            "type": "http.response.start",
            "status": 400,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    body = json.dumps({"detail": bad_token_detail(header)}).encode()
    await send({"type": "http.response.body", "body": body})
