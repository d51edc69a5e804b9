"""``visible_to``: the one WHERE clause that limits ``openai_files`` to the rows a caller may see.

The seed's default access policy (see ``access.py``), spelled in SQL for both engines. For the
anonymous caller:

    owner_principal IS NULL OR owner_principal = '' OR access_attributes is JSON null

and for a caller with a principal:

    owner_principal IS NULL
    OR (  (owner_principal = '' OR access_attributes is JSON null
           OR <for every category the caller has values in: the row lacks it, or its list holds
               one of the caller's values>)                           -- the seed's query
      AND <for every category the row requires (a non-empty value): the caller has a value the
           row's list holds>)                                          -- the seed's policy

The seed runs its query in the database and its policy in Python on each row it returns; this
clause gives their combined answer in the database alone, so a page of a listing is a page. Two
deliberate differences: a row whose owner is SQL NULL (a table from before access control) is
public here, where the seed's query drops it; and a category's list must hold the value exactly
(``json_each`` on SQLite, ``?|`` on PostgreSQL), where the seed's query tests ``LIKE '%"value"%'``
on its JSON text. A text that is not JSON (SQLite keeps any) requires everything: nobody but the
operator sees such a row.

Every query that reads or changes ``openai_files`` on behalf of a caller takes a ``viewer`` and adds
this clause; the operator's view (``Identity.sees_all``) adds nothing.
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, and_, false, literal, not_, or_, true
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


class _JsonNull(FunctionElement):
    """True when ``column`` holds the JSON value null (what the seed writes for a public row)."""

    type = Boolean()
    inherit_cache = True
    name = "s3filesfs_json_null"

    def __init__(self, column: ColumnClause):
        self.column = column
        super().__init__()


@compiles(_JsonNull, "sqlite")
def _json_null_sqlite(element: _JsonNull, compiler, **kw) -> str:
    return f"({compiler.process(element.column, **kw)} = 'null')"


@compiles(_JsonNull, "postgresql")
def _json_null_postgresql(element: _JsonNull, compiler, **kw) -> str:
    return f"(CAST({compiler.process(element.column, **kw)} AS TEXT) = 'null')"


class _Category(FunctionElement):
    """A test on the row's value under one attribute category (``category`` is spelled into the SQL)."""

    type = Boolean()
    inherit_cache = False

    def __init__(self, column: ColumnClause, category: str):
        if category not in CATEGORIES:
            raise ValueError(f"unknown attribute category {category!r}")
        self.column = column
        self.category = category
        super().__init__()


class _Lacks(_Category):
    """The seed's ``<category> IS NULL``: the row names no value under ``category``."""

    name = "s3filesfs_lacks"
    inherit_cache = False  # the category shapes the SQL


class _Requires(_Category):
    """The seed's ``if not required`` negated: the row's value under ``category`` is truthy (not
    missing, null, false, 0, '', [] or {}); a text that is not JSON requires everything."""

    name = "s3filesfs_requires"
    inherit_cache = False  # the category shapes the SQL


@compiles(_Lacks, "sqlite")
def _lacks_sqlite(element: _Lacks, compiler, **kw) -> str:
    column = compiler.process(element.column, **kw)
    return (f"(CASE WHEN {column} IS NULL THEN 1 WHEN json_valid({column}) "
            f"THEN json_extract({column}, '$.{element.category}') IS NULL ELSE 1 END)")


@compiles(_Lacks, "postgresql")
def _lacks_postgresql(element: _Lacks, compiler, **kw) -> str:
    return f"((CAST({compiler.process(element.column, **kw)} AS JSONB) -> '{element.category}') IS NULL)"


@compiles(_Requires, "sqlite")
def _requires_sqlite(element: _Requires, compiler, **kw) -> str:
    column = compiler.process(element.column, **kw)
    path = f"'$.{element.category}'"
    kind = f"json_type({column}, {path})"
    value = f"json_extract({column}, {path})"
    truthy = (f"COALESCE({kind} NOT IN ('null', 'false') AND NOT ({kind} = 'array' AND json_array_length({column}, "
              f"{path}) = 0) AND NOT ({kind} = 'object' AND {value} = '{{}}') AND NOT ({kind} = 'text' AND "
              f"{value} = '') AND NOT ({kind} IN ('integer', 'real') AND {value} = 0), 0)")
    # CASE, not AND: SQLite does not promise to stop before json_type() meets text that is not JSON.
    return (f"(CASE WHEN {column} IS NULL THEN 0 WHEN json_valid({column}) THEN "
            f"CASE WHEN json_type({column}) = 'object' THEN {truthy} ELSE 0 END ELSE 1 END)")


@compiles(_Requires, "postgresql")
def _requires_postgresql(element: _Requires, compiler, **kw) -> str:
    value = f"(CAST({compiler.process(element.column, **kw)} AS JSONB) -> '{element.category}')"
    return (f"COALESCE(jsonb_typeof({value}) <> 'null' AND {value} NOT IN "
            f"('false'::jsonb, '0'::jsonb, '\"\"'::jsonb, '[]'::jsonb, '{{}}'::jsonb), false)")


def visible_to(viewer: Identity) -> ColumnElement[bool]:
    """The rows of ``openai_files`` that ``viewer`` may see (everything for the operator)."""
    if viewer.sees_all:
        return true()
    c = openai_files.c
    column = c.access_attributes
    unowned = c.owner_principal.is_(None)
    public = or_(c.owner_principal == "", _JsonNull(column))
    if viewer.public:
        return or_(unowned, public)
    mine = {category: values for category, values in viewer.attributes if values}
    query_admits = [public]
    if mine:
        query_admits.append(and_(*[or_(_Lacks(column, category), _ListHoldsAny(column, category, values))
                                   for category, values in mine.items()]))
    policy_permits = and_(*[
        or_(not_(_Requires(column, category)),
            _ListHoldsAny(column, category, mine[category]) if category in mine else false())
        for category in CATEGORIES])
    return or_(unowned, and_(or_(*query_admits), policy_permits))
