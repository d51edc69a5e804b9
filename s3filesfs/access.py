"""Who is asking: the ``Identity`` a face acts as, and which rows of ``openai_files`` it may see.

The rows are shared with Llama Stack, whose ``AuthorizedSqlStore`` writes an authenticated caller's
principal into ``owner_principal`` and its attributes (``{"roles": [...], "teams": [...]}``) into
``access_attributes``, and a caller without authentication as a public row ('' and JSON null). We
write rows the same way and show them as the seed of the ``remote::s3`` provider (Llama Stack of
September 2025) does under its default policy: one rule, "user in owners" for each of ``roles``,
``teams``, ``projects`` and ``namespaces``, which its store applies as a SQL query and then a
check of each row. A caller with a principal sees a row when

* the row is public (``owner_principal`` '' or ``access_attributes`` JSON null), or the caller has
  attributes and, for each category it has values in, the row names no such category or shares a
  value with it (the query); **and**
* for **every** category the row names (with a non-empty list), the caller has a value in that list
  (the policy: any value within a category, all categories the row names).

So a row written by a user without attributes (JSON null) is seen by everyone; a row with
``{"roles": ["admin"], "teams": ["ml"]}`` only by callers who are admins *and* in ml, its owner
included (the rule never looks at the principal). The anonymous caller (no principal: the seed
without authentication) sees the public rows only. ``may_see`` is that rule in Python, for reading
and testing; the metadata layer applies it in SQL (``metadata/visibility.py``), which is what every
query for a caller uses. ``Identity.sees_all`` is the operator's view: every row, for maintenance
(check, gc, rebuild, repair, expiry, reconcile) and ``--all``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

# The attribute categories of the seed's default policy (its ALLOWED_ATTRIBUTE_KEYS).
CATEGORIES = ("roles", "teams", "projects", "namespaces")

Attributes = tuple[tuple[str, tuple[str, ...]], ...]  # (category, values) pairs, sorted: hashable


@dataclass(frozen=True)
class Identity:
    """A principal and its attributes; ``sees_all`` lifts the visibility rule (writes are unchanged).

    The empty principal is the anonymous caller: it writes public rows and sees only those.
    """

    principal: str = ""
    attributes: Attributes = ()
    sees_all: bool = False

    @classmethod
    def of(cls, principal: str = "", attributes: Mapping[str, Iterable[str]] | None = None) -> Identity:
        """An identity from a plain mapping of category -> values (checked: ``ValueError``)."""
        return cls(principal=principal, attributes=normalized(attributes or {}))

    def attribute_map(self) -> dict[str, list[str]]:
        return {category: list(values) for category, values in self.attributes}

    def with_full_view(self) -> Identity:
        """The same writer, seeing every row (the operator's ``--all``)."""
        return replace(self, sees_all=True)

    @property
    def public(self) -> bool:
        """Rows written as this identity are public: no principal."""
        return not self.principal

    def row_access(self) -> tuple[str, dict[str, list[str]] | None]:
        """``(owner_principal, access_attributes)`` of a row this identity writes, as Llama Stack's
        ``AuthorizedSqlStore`` writes them: '' and JSON null for the anonymous caller, else the
        principal and its attributes (JSON null when it has none, as for a user without any)."""
        if self.public:
            return "", None
        return self.principal, (self.attribute_map() or None)

    def may_see(self, owner_principal: str | None, access_attributes: object) -> bool:
        """The seed's query and policy for one row; ``access_attributes`` as stored (JSON text or
        already decoded). A row whose owner is NULL (from before access control) is public."""
        if self.sees_all or owner_principal is None:
            return True
        stored = access_attributes
        if isinstance(stored, str):
            try:
                stored = json.loads(stored)
            except ValueError:
                return False  # not JSON: the seed cannot read it either
        public = owner_principal == "" or stored is None
        if self.public:
            return public
        row = stored if isinstance(stored, dict) else {}
        mine = dict(self.attributes)

        def shares(category: str) -> bool:
            listed = row.get(category)
            return isinstance(listed, list) and any(isinstance(v, str) and v in mine.get(category, ()) for v in listed)

        admitted = public or (bool(mine) and all(row.get(category) is None or shares(category) for category in mine))
        return admitted and all(not row.get(category) or shares(category) for category in CATEGORIES)

    def describe(self) -> str:
        """For logs and status: the principal and attributes (never a key)."""
        if self.sees_all:
            return "every file (operator)"
        if self.public:
            return "anonymous (public files only)"
        shown = ", ".join(f"{category}={','.join(values)}" for category, values in self.attributes)
        return f"{self.principal}" + (f" ({shown})" if shown else "")

    def to_dict(self) -> dict:
        return {"principal": self.principal, "attributes": self.attribute_map(), "all": self.sees_all}


# Anonymous: public rows only, and writes public rows.
ANONYMOUS = Identity()
# The operator: every row. What maintenance uses; it writes public rows (rebuild's restored rows).
OPERATOR = Identity(sees_all=True)


def normalized(attributes: Mapping[str, Iterable[str]]) -> Attributes:
    """Checked, sorted, without duplicates or empty categories; ``ValueError`` says what is wrong."""
    if not isinstance(attributes, Mapping):
        raise ValueError(f"attributes must map a category to a list of values (got {attributes!r})")
    pairs = []
    for category, values in attributes.items():
        if category not in CATEGORIES:
            raise ValueError(f"unknown attribute category {category!r}: must be one of {', '.join(CATEGORIES)}")
        if isinstance(values, str):
            values = [values]
        if not isinstance(values, Iterable):
            raise ValueError(f"attributes.{category} must be a list of strings (got {values!r})")
        cleaned = []
        for value in values:
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"attributes.{category}: values must be non-empty strings (got {value!r})")
            cleaned.append(value.strip())
        if cleaned:
            pairs.append((category, tuple(dict.fromkeys(cleaned))))
    return tuple(sorted(pairs))


def parse_attribute_words(words: Iterable[str]) -> dict[str, list[str]]:
    """``["roles=admin", "teams=ml,infra"]`` (the ``--attribute`` flags, or an environment value split
    on whitespace) as a mapping; ``ValueError`` for a word that is not ``CATEGORY=VALUE[,VALUE]``."""
    found: dict[str, list[str]] = {}
    for word in words:
        category, sep, values = word.partition("=")
        category = category.strip()
        if not sep or not category or not values.strip():
            raise ValueError(f"attribute {word!r} must be CATEGORY=VALUE (e.g. teams=ml)")
        found.setdefault(category, []).extend(v for v in (v.strip() for v in values.split(",")) if v)
    return found
