"""``visible_to``: the one WHERE clause that limits ``openai_files`` to the rows a caller may see.

The seed's default access policy (see ``access.py``), spelled in SQL for both engines:

    owner_principal IS NULL OR owner_principal = ''          -- unowned: public
    OR owner_principal = :principal                          -- the caller's own
    OR <the row's list of a category holds one of the caller's values>, for each category the
       caller has values in

The category test is an exact match on the elements of a JSON list of strings: ``json_each`` on
SQLite (an invalid JSON text, or a category that is not a list, matches nothing), ``?|`` on the
value cast to ``jsonb`` on PostgreSQL. The seed's own SQL is looser (a ``LIKE '%"value"%'`` on the
category's JSON text) and exact only together with the Python check it runs on every row after it;
this clause gives that combined answer in the database alone, so a page of a listing is a page.

Every query that reads or changes ``openai_files`` on behalf of a caller takes a ``viewer`` and adds
this clause; the operator's view (``Identity.sees_all``) adds nothing.
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, literal, or_, true
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import ColumnClause, FunctionElement
from sqlalchemy.types import Boolean

from ..access import CATEGORIES, Identity
from .schema import openai_files


class _ListHoldsAny(FunctionElement):
    """True when ``column``'s JSON value has, under ``category``, a list holding one of ``values``."""

    type = Boolean()
    inherit_cache = False  # the category and the number of values shape the SQL
    name = "s3filesfs_list_holds_any"

    def __init__(self, column: ColumnClause, category: str, values: tuple[str, ...]):
        if category not in CATEGORIES:  # spelled into the SQL text below: only the known names
            raise ValueError(f"unknown attribute category {category!r}")
        self.column = column
        self.category = category
        self.values = values
        super().__init__()


@compiles(_ListHoldsAny, "sqlite")
def _sqlite(element: _ListHoldsAny, compiler, **kw) -> str:
    column = compiler.process(element.column, **kw)
    path = f"'$.{element.category}'"
    values = ", ".join(compiler.process(literal(value), **kw) for value in element.values)
    # CASE, not AND: SQLite does not promise to stop before json_type() meets text that is not JSON.
    document = (f"CASE WHEN json_valid({column}) THEN CASE WHEN json_type({column}, {path}) = 'array' "
                f"THEN {column} END END")
    return (f"EXISTS (SELECT 1 FROM json_each({document}, {path}) AS s3filesfs_value "
            f"WHERE s3filesfs_value.type = 'text' AND s3filesfs_value.value IN ({values}))")


@compiles(_ListHoldsAny, "postgresql")
def _postgresql(element: _ListHoldsAny, compiler, **kw) -> str:
    column = compiler.process(element.column, **kw)
    listed = f"(CAST({column} AS JSONB) -> '{element.category}')"
    values = ", ".join(f"CAST({compiler.process(literal(value), **kw)} AS TEXT)" for value in element.values)
    return f"(jsonb_typeof({listed}) = 'array' AND {listed} ?| ARRAY[{values}])"


def visible_to(viewer: Identity) -> ColumnElement[bool]:
    """The rows of ``openai_files`` that ``viewer`` may see (everything for the operator)."""
    if viewer.sees_all:
        return true()
    c = openai_files.c
    allowed = [c.owner_principal.is_(None), c.owner_principal == ""]
    if viewer.principal:
        allowed.append(c.owner_principal == viewer.principal)
    for category, values in viewer.attributes:
        if values:
            allowed.append(_ListHoldsAny(c.access_attributes, category, values))
    return or_(*allowed)
