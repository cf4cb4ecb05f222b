"""Pure ASGI middleware: routing roles by HTTP method, causal tokens across requests.

Works under any ASGI framework (FastAPI, Starlette, Litestar...); it needs no
package beyond routing_db.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from http.cookies import SimpleCookie
from typing import Any

from ._causal import FLOOR, causal_token, format_token
from ._context import read_only
from ._exceptions import ConfigurationError

__all__ = ["DEFAULT_TOKEN_HEADER", "RoutingMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

DEFAULT_TOKEN_HEADER = "x-routing-db-token"
_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class RoutingMiddleware:
    """Carries the causal token across requests; optionally routes by method."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        header: str = DEFAULT_TOKEN_HEADER,
        cookie: str | None = None,
        roles_by_method: bool = False,
        read_methods: Iterable[str] = _READ_METHODS,
    ) -> None:
        self.app = app
        self.header = header.lower()
        self.cookie = cookie
        self.roles_by_method = roles_by_method
        self.read_methods = frozenset(method.upper() for method in read_methods)

    def _given_token(self, scope: Scope) -> str | None:
        cookies: list[str] = []
        for name, value in scope.get("headers", ()):
            key = name.decode("latin-1").lower()
            if key == self.header:
                return str(value.decode("latin-1"))
            if key == "cookie":
                cookies.append(value.decode("latin-1"))
        if self.cookie is None:
            return None
        for raw in cookies:
            jar: SimpleCookie = SimpleCookie()
            with contextlib.suppress(Exception):  # a bad cookie is no token
                jar.load(raw)
            if self.cookie in jar:
                return jar[self.cookie].value
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the request inside its causal token (and role, if configured)."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            block = causal_token(self._given_token(scope))
        except ConfigurationError:
            await _bad_token(send, self.header)
            return
        # A request starts from no floor of its own and leaves none behind:
        # what it wrote travels in the response, not in the server's context.
        isolated = FLOOR.set(None)
        try:
            with contextlib.ExitStack() as stack:
                stack.enter_context(block)
                # The request's own floor: commits that write raise it in place,
                # even from tasks that copied this context.
                floor = FLOOR.get()
                if self.roles_by_method and scope.get("method") in self.read_methods:
                    stack.enter_context(read_only)

                async def send_with_token(message: Message) -> None:
                    if (
                        message["type"] == "http.response.start"
                        and floor is not None
                        and floor.wrote
                    ):
                        token = format_token(floor)
                        headers = list(message.get("headers", []))
                        headers.append((self.header.encode(), token.encode()))
                        if self.cookie is not None:
                            headers.append((b"set-cookie", self._cookie(token)))
                        message["headers"] = headers
                    await send(message)

                await self.app(scope, receive, send_with_token)
        finally:
            FLOOR.reset(isolated)

    def _cookie(self, token: str) -> bytes:
        jar: SimpleCookie = SimpleCookie()
        assert self.cookie is not None
        jar[self.cookie] = token
        morsel = jar[self.cookie]
        morsel["path"] = "/"
        morsel["httponly"] = True
        morsel["samesite"] = "Lax"
        return morsel.OutputString().encode("latin-1")


async def _bad_token(send: Send, header: str) -> None:
    # JSON, in the shape FastAPI gives its own errors: APIs answer in JSON.
    detail = f"malformed {header} (expected a token from a previous response)"
    await send(
        {
            "type": "http.response.start",
            "status": 400,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send(
        {"type": "http.response.body", "body": json.dumps({"detail": detail}).encode()}
    )
