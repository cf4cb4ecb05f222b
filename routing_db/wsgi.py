"""WSGI middleware: routing roles by HTTP method, causal tokens across requests.

The sync face's ``routing_db.asgi``: for Flask, Django's WSGI handler or any
WSGI app; it needs no package beyond routing_db.

    app.wsgi_app = RoutingMiddleware(app.wsgi_app, roles_by_method=True)

A WSGI server runs request after request on the same threads, whose context
lasts: each request runs in a context of its own, so a floor or a scope
never passes from one request to the next.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterable
from typing import Any

from ._causal.http import DEFAULT_TOKEN_HEADER, Middleware
from ._exceptions import ConfigurationError

__all__ = ["DEFAULT_TOKEN_HEADER", "RoutingMiddleware"]

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class RoutingMiddleware(Middleware[dict[str, Any], WSGIApp]):
    """Carries the causal token across requests; optionally routes by method."""

    def __call__(
        self, environ: dict[str, Any], start_response: StartResponse
    ) -> Iterable[bytes]:
        """Run the request in a context of its own, inside its causal token."""
        context = contextvars.Context()
        return context.run(self._start, context, environ, start_response)

    def _start(
        self,
        context: contextvars.Context,
        environ: dict[str, Any],
        start_response: StartResponse,
    ) -> Iterable[bytes]:
        headers = (
            (key[5:].replace("_", "-"), str(value))
            for key, value in environ.items()
            if key.startswith("HTTP_")
        )
        try:
            routed = self.context_of(environ, headers, environ.get("REQUEST_METHOD"))
        except ConfigurationError:
            start_response("400 Bad Request", [("Content-Type", "application/json")])
            return [self.bad_token_body()]
        scope = contextlib.ExitStack()
        floor = scope.enter_context(routed)

        def start_with_token(status: str, headers: list[Any], *args: Any) -> Any:
            return start_response(status, [*headers, *self.token_headers(floor)], *args)

        try:
            response = self.app(environ, start_with_token)
        except BaseException:
            scope.close()
            raise
        return _InContext(context, scope, response)


class _InContext:
    """The app's response, each step of it run in the request's context; the
    request's scope ends when the server closes it (as WSGI servers must)."""

    def __init__(
        self,
        context: contextvars.Context,
        scope: contextlib.ExitStack,
        response: Iterable[bytes],
    ) -> None:
        self._context = context
        self._scope = scope
        self._response = response
        self._chunks = iter(response)

    def __iter__(self) -> _InContext:
        return self

    def __next__(self) -> bytes:
        return self._context.run(next, self._chunks)

    def close(self) -> None:
        """Close the app's response, then end the request's scope."""
        self._context.run(self._close)

    def _close(self) -> None:
        try:
            close = getattr(self._response, "close", None)
            if close is not None:
                close()
        finally:
            self._scope.close()
