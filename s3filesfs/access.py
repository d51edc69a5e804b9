"""Who is asking: the ``Identity`` a face acts as, and which rows of ``openai_files`` it may see.

The rows are shared with Llama Stack, whose ``AuthorizedSqlStore`` writes an authenticated caller's
principal into ``owner_principal`` and its attributes (``{"roles": [...], "teams": [...]}``) into
``access_attributes``, and a caller without authentication as a public row ('' and JSON null). We
write rows the same way and show them by the seed's default access policy (``default_policy()`` in
its ``core/access_control/access_control.py``), which permits every action on a row when

* the row is unowned (``owner_principal`` empty: "resource is unowned"), or
* the caller is its owner ("user is owner"), or
* for one of the categories ``roles``, ``teams``, ``projects``, ``namespaces``, the row's list and
  the caller's list share a value ("user in owners <category>"; any one category is enough).

So a caller without attributes sees public rows and its own; a row whose attributes are null or
``{}`` is seen only by its owner (unless it is unowned). ``may_see`` is that rule in Python, for
reading and testing; the metadata layer applies the same rule in SQL (``metadata/visibility.py``),
which is what every query for a caller uses. ``Identity.sees_all`` is the operator's view: every
row, for maintenance (check, gc, rebuild, repair, expiry, reconcile) and ``--all``.
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
        """The seed's default policy for one row; ``access_attributes`` as stored (JSON text or
        already decoded)."""
        if self.sees_all or not owner_principal:
            return True
        if owner_principal == self.principal:
            return True
        stored = access_attributes
        if isinstance(stored, str):
            try:
                stored = json.loads(stored)
            except ValueError:
                return False
        if not isinstance(stored, dict):
            return False
        for category, values in self.attributes:
            defined = stored.get(category)
            if isinstance(defined, list) and any(isinstance(v, str) and v in values for v in defined):
                return True
        return False

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
