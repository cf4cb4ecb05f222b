"""mkdocs hook: pages' generated parts, made from the code when the site is built.

The configuration page's table comes from ``RoutingSettings`` and the design
decisions' list of SQLAlchemy internals from ``_compat.INTERNALS``, so
neither can disagree with the code.
"""

from __future__ import annotations

import types
import typing
from typing import Any

from routing_db import RoutingSettings
from routing_db._compat import INTERNALS
from routing_db._options import BY_NAME

MARKER = "<!-- settings-table -->"
INTERNALS_MARKER = "<!-- sqlalchemy-internals -->"


def _type_name(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(arg) for arg in args)
    if origin is typing.Literal:
        return " or ".join(repr(arg) for arg in args)
    if origin is not None:
        inner = ", ".join(_type_name(arg) for arg in args)
        return f"{origin.__name__}[{inner}]"
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", str(annotation))


def _default(field: Any) -> str:
    if field.default_factory is not None:
        return f"`{field.default_factory()!r}`"
    if field.default is None:
        return "unset"
    return f"`{field.default!r}`"


def _description(name: str, field: Any) -> str:
    role, _, base = name.partition("_")
    fields = RoutingSettings.model_fields
    if field.description is None and role in ("writer", "replica") and base in fields:
        return f"As `{base}`, for the {role}'s engine only."
    option = BY_NAME.get(name)
    if option is None:
        return str(field.description or "")
    rule = option.rule()
    return option.doc if rule == "set" else f"{option.doc} Range: {rule}."


def settings_table() -> str:
    """One row per field: name, environment variable, type, default, and what
    it does (a router option's from the table that declares it)."""
    prefix = RoutingSettings.model_config.get("env_prefix", "")
    rows = [
        "| setting | environment variable | type | default | description |",
        "|---|---|---|---|---|",
    ]
    for name, field in RoutingSettings.model_fields.items():
        rows.append(
            f"| `{name}` | `{prefix}{name.upper()}` | "
            f"`{_type_name(field.annotation)}` | {_default(field)} | "
            f"{_description(name, field)} |"
        )
    return "\n".join(rows)


def internals_list() -> str:
    """One bullet per private attribute ``_compat`` uses, with its reason."""
    return "\n".join(f"- `{name}`: {why}." for name, why in INTERNALS.items())


def on_page_markdown(markdown: str, **_: Any) -> str:
    """Replace the markers with the generated table and list."""
    markdown = markdown.replace(MARKER, settings_table())
    return markdown.replace(INTERNALS_MARKER, internals_list())
