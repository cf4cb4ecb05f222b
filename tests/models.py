"""ORM models shared by the cluster tests."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ForeignKey, Identity, String, func, insert, select, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncAttrs
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.schema import CreateSequence, CreateTable, Sequence

__all__ = ["Base", "Child", "Item", "Parent", "ddl", "refused_write"]


class Base(AsyncAttrs, DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "items"
    id: Mapped[int] = mapped_column(Identity(), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))


class Parent(Base):
    __tablename__ = "parents"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    children: Mapped[list[Child]] = relationship(
        back_populates="parent", order_by="Child.id"
    )


class Child(Base):
    __tablename__ = "children"
    id: Mapped[int] = mapped_column(primary_key=True)
    parent_id: Mapped[int] = mapped_column(ForeignKey("parents.id"))
    name: Mapped[str] = mapped_column(String(100))
    parent: Mapped[Parent] = relationship(back_populates="children")


SEQUENCE = Sequence("routing_seq")


def ddl() -> str:
    """The schema as PostgreSQL DDL, for psql (the tests need no sync driver)."""
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    parts = [str(CreateSequence(SEQUENCE).compile(dialect=dialect))]
    parts += [
        str(CreateTable(table).compile(dialect=dialect))
        for table in Base.metadata.sorted_tables
    ]
    # A function that writes: a statement the classifier cannot see into.
    parts.append(
        "CREATE FUNCTION bump() RETURNS int LANGUAGE sql AS "
        "$$ INSERT INTO items (name) VALUES ('bumped') RETURNING id $$"
    )
    return ";\n".join(parts) + ";"


def refused_write(form: str) -> Any:
    """A statement that reads like a SELECT to routing_db but writes one item."""
    if form == "function":
        return select(func.bump())  # bump() inserts (see ddl())
    if form == "text":
        return text("SELECT bump()")
    made = insert(Item).values(name="cte").returning(Item.id).cte("made")
    return select(made.c.id)
