"""What the ASGI and WSGI middlewares share: a request's causal token in and
out (header or cookie), its own context, its role by HTTP method."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterable, Iterator
from http.cookies import SimpleCookie
from typing import Generic, TypeVar

from .._decide.context import read_only
from .floor import FLOOR, CausalFloor, causal_token, format_token, newest_token
from .store import causal_key

__all__ = [
    "DEFAULT_TOKEN_HEADER",
    "READ_METHODS",
    "Middleware",
    "given_token",
    "request_context",
    "token_cookie",
]

DEFAULT_TOKEN_HEADER = "x-routing-db-token"
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
R = TypeVar("R")
A = TypeVar("A")


class Middleware(Generic[R, A]):
    """What both middlewares are told: the app ``A`` they wrap, where the
    token travels, which methods read, and the request's causal key (a
    function of an ASGI scope or a WSGI environ, ``R``)."""

    def __init__(
        self,
        app: A,
        *,
        header: str = DEFAULT_TOKEN_HEADER,
        cookie: str | None = None,
        roles_by_method: bool = False,
        read_methods: Iterable[str] = READ_METHODS,
        causal_key: Callable[[R], object] | None = None,
    ) -> None:
        self.app = app
        self.header = header.lower()
        self.cookie = cookie
        self.roles_by_method = roles_by_method
        self.read_methods = frozenset(method.upper() for method in read_methods)
        # The request's application key (a user, a tenant) for a causal store.
        self.causal_key = causal_key

    def reads(self, method: object) -> bool:
        """Does a request of ``method`` run under ``read_only``?"""
        return self.roles_by_method and method in self.read_methods

    def key_of(self, request: R) -> object:
        """The request's causal key, if a function gives one."""
        return None if self.causal_key is None else self.causal_key(request)

    def context_of(
        self, request: R, headers: Iterable[tuple[str, str]], method: object
    ) -> contextlib.AbstractContextManager[CausalFloor | None]:
        """The request's routing context (see ``request_context``), from the
        token its ``headers`` carry; ``ConfigurationError`` if it is malformed."""
        block = causal_token(given_token(headers, self.header, self.cookie))
        key = self.key_of(request)
        return request_context(block, read=self.reads(method), key=key)

    def token_headers(self, floor: CausalFloor | None) -> list[tuple[str, str]]:
        """The response's headers carrying the token: only when it wrote."""
        if floor is None or not floor.wrote:
            return []
        token = format_token(floor)
        headers = [(self.header, token)]
        if self.cookie is not None:
            headers.append(("Set-Cookie", token_cookie(self.cookie, token)))
        return headers

    def bad_token_body(self) -> bytes:
        """The JSON body of the 400 a malformed token gets (in the shape FastAPI
        gives its own errors: APIs answer in JSON)."""
        detail = f"malformed {self.header} (expected a token from a previous response)"
        return json.dumps({"detail": detail}).encode()


def given_token(
    headers: Iterable[tuple[str, str]], header: str, cookie: str | None
) -> str | None:
    """The token a request carries: the newest of ``header`` (lower case) and
    ``cookie`` (a browser's cookie may be older or newer than a header its
    script copied from an earlier response)."""
    given: str | None = None
    cookies: list[str] = []
    for key, value in headers:
        key = key.lower()
        if key == header and given is None:
            given = value
        elif key == "cookie":
            cookies.append(value)
    if cookie is None:
        return given
    for raw in cookies:
        jar: SimpleCookie = SimpleCookie()
        with contextlib.suppress(Exception):  # a bad cookie is no token
            jar.load(raw)
        if cookie in jar:
            return newest_token(given, jar[cookie].value)
    return given


@contextlib.contextmanager
def request_context(
    block: causal_token, *, read: bool, key: object = None
) -> Iterator[CausalFloor | None]:
    """A request's routing context, from its parsed token; yields the floor
    its commits raise.

    A request starts from no floor of its own and leaves none behind: what
    it wrote travels in the response, not in the server's context (a WSGI
    server's thread, an ASGI server's task). ``key``: the request's
    ``causal_key`` (None: none).
    """
    isolated = FLOOR.set(None)
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(block)
            # The request's own floor: commits that write raise it in place,
            # even from tasks or threads that copied this context.
            floor = FLOOR.get()
            if read:
                stack.enter_context(read_only)
            if key is not None:
                stack.enter_context(causal_key(key))
            yield floor
    finally:
        FLOOR.reset(isolated)


def token_cookie(name: str, token: str) -> str:
    """A ``Set-Cookie`` value carrying ``token``."""
    jar: SimpleCookie = SimpleCookie()
    jar[name] = token
    morsel = jar[name]
    morsel["path"] = "/"
    morsel["httponly"] = True
    morsel["samesite"] = "Lax"
    return morsel.OutputString()
