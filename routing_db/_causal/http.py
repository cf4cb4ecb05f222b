"""What the ASGI and WSGI middlewares share: a request's causal token in and
out (header or cookie), its own context, its role by HTTP method."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from http.cookies import SimpleCookie
from typing import Generic, TypeVar

from .._decide.context import read_only
from .floor import FLOOR, CausalFloor, causal_token, format_token
from .store import causal_key

__all__ = [
    "DEFAULT_TOKEN_HEADER",
    "READ_METHODS",
    "TokenOptions",
    "bad_token_detail",
    "given_token",
    "request_context",
    "token_cookie",
    "token_to_send",
]

DEFAULT_TOKEN_HEADER = "x-routing-db-token"
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
R = TypeVar("R")


class TokenOptions(Generic[R]):
    """What both middlewares are told: where the token travels, which methods
    read, and the request's causal key (a function of an ASGI scope ``R``,
    or a WSGI environ)."""

    def __init__(
        self,
        *,
        header: str = DEFAULT_TOKEN_HEADER,
        cookie: str | None = None,
        roles_by_method: bool = False,
        read_methods: Iterable[str] = READ_METHODS,
        causal_key: Callable[[R], object] | None = None,
    ) -> None:
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


def given_token(
    headers: Iterable[tuple[str, str]], header: str, cookie: str | None
) -> str | None:
    """The token a request carries: ``header`` (lower case) first, then ``cookie``."""
    cookies: list[str] = []
    for key, value in headers:
        key = key.lower()
        if key == header:
            return value
        if key == "cookie":
            cookies.append(value)
    if cookie is None:
        return None
    for raw in cookies:
        jar: SimpleCookie = SimpleCookie()
        with contextlib.suppress(Exception):  # a bad cookie is no token
            jar.load(raw)
        if cookie in jar:
            return jar[cookie].value
    return None


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


def token_to_send(floor: CausalFloor | None) -> str | None:
    """The token for the response: only when the request wrote."""
    return format_token(floor) if floor is not None and floor.wrote else None


def token_cookie(name: str, token: str) -> str:
    """A ``Set-Cookie`` value carrying ``token``."""
    jar: SimpleCookie = SimpleCookie()
    jar[name] = token
    morsel = jar[name]
    morsel["path"] = "/"
    morsel["httponly"] = True
    morsel["samesite"] = "Lax"
    return morsel.OutputString()


def bad_token_detail(header: str) -> str:
    """The message of the 400 a malformed token gets."""
    return f"malformed {header} (expected a token from a previous response)"
