"""The seed's access control, as its code decides it, for the tests to compare ours with.

Llama Stack is not installed here, so the parts that decide who sees a row of ``openai_files`` are
copied from its source (github.com/llamastack/llama-stack, MIT licence, at 606f4cf28 of 30 September
2025: the revision the ``remote::s3`` files provider was taken from, whose default policy is the one
the provider's releases of that time apply):

* ``llama_stack/core/access_control/conditions.py``: ``UserInOwnersList``, verbatim but for its
  docstring;
* ``llama_stack/core/access_control/access_control.py``: ``default_policy()`` (one rule: "user in
  owners" for all four categories) and the part of ``is_action_allowed`` such a rule takes;
* ``llama_stack/providers/utils/sqlstore/authorized_sqlstore.py``: ``_build_default_policy_where_clause``
  with its ``_json_extract``/``_json_extract_text`` and ``_get_public_access_conditions``, verbatim
  but for ``self`` and bound parameters for the values, and the owner its ``fetch_all`` builds from a
  row before asking the policy.

What the seed shows a user is the rows its SQL lets through *and* its policy then permits
(``AuthorizedSqlStore.fetch_all``): ``seed_visible`` is that.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any


@dataclass
class User:
    principal: str
    attributes: dict[str, list[str]] | None = None


@dataclass
class SqlRecord:
    owner: User | None


# --- conditions.py -------------------------------------------------------------------------------


class UserInOwnersList:
    def __init__(self, name: str):
        self.name = name

    def owners_values(self, resource) -> list[str] | None:
        if (
            hasattr(resource, "owner")
            and resource.owner
            and resource.owner.attributes
            and self.name in resource.owner.attributes
        ):
            return resource.owner.attributes[self.name]
        else:
            return None

    def matches(self, resource, user: User) -> bool:
        required = self.owners_values(resource)
        if not required:
            return True
        if not user.attributes or self.name not in user.attributes or not user.attributes[self.name]:
            return False
        user_values = user.attributes[self.name]
        for value in required:
            if value in user_values:
                return True
        return False


# --- access_control.py: default_policy() and is_action_allowed for it -----------------------------

DEFAULT_POLICY = [UserInOwnersList(name) for name in ["roles", "teams", "projects", "namespaces"]]


def is_action_allowed(resource, user: User | None) -> bool:
    if not user:
        return True  # "no auth"
    return all(condition.matches(resource, user) for condition in DEFAULT_POLICY)


# --- authorized_sqlstore.py ------------------------------------------------------------------------


def _json_extract(database_type: str, column: str, path: str) -> str:
    if database_type == "postgres":
        return f"{column}->'{path}'"
    return f"JSON_EXTRACT({column}, '$.{path}')"


def _json_extract_text(database_type: str, column: str, path: str) -> str:
    if database_type == "postgres":
        return f"{column}->>'{path}'"
    return f"JSON_EXTRACT({column}, '$.{path}')"


def _get_public_access_conditions(database_type: str) -> list[str]:
    conditions = ["owner_principal = ''"]
    if database_type == "postgres":
        conditions.append("access_attributes::text = 'null'")
    else:
        conditions.append("access_attributes = 'null'")
    return conditions


def build_default_policy_where_clause(database_type: str, current_user: User | None) -> tuple[str, dict[str, Any]]:
    base_conditions = _get_public_access_conditions(database_type)
    params: dict[str, Any] = {}
    user_attr_conditions = []
    if current_user and current_user.attributes:
        for attr_key, user_values in current_user.attributes.items():
            if user_values:
                value_conditions = []
                for j, value in enumerate(user_values):
                    param_name = f"attr_{attr_key}_{j}"
                    json_text = _json_extract_text(database_type, "access_attributes", attr_key)
                    value_conditions.append(f"({json_text} LIKE :{param_name})")
                    params[param_name] = f'%"{value}"%'
                if value_conditions:
                    category_missing = f"{_json_extract(database_type, 'access_attributes', attr_key)} IS NULL"
                    user_matches_category = f"({' OR '.join(value_conditions)})"
                    user_attr_conditions.append(f"({category_missing} OR {user_matches_category})")
        if user_attr_conditions:
            base_conditions.append(f"({' AND '.join(user_attr_conditions)})")
    return f"({' OR '.join(base_conditions)})", params


def record_of(row: dict) -> SqlRecord:
    """The resource ``fetch_all`` asks the policy about: an owner always, its principal '' if none."""
    attributes = row["access_attributes"]
    if isinstance(attributes, str):
        attributes = json.loads(attributes)
    return SqlRecord(User(principal=row["owner_principal"] or "", attributes=attributes))


def seed_visible(conn, user: User | None) -> set[str]:
    """The ids of ``openai_files`` the seed shows ``user`` (None: a server without authentication),
    over a plain connection (``tests.unit.stores.PlainConnection``): its SQL, then its policy."""
    where, params = build_default_policy_where_clause(conn.engine, user)
    names = re.findall(r"(?<!:):(\w+)", where)  # bound parameters, not a ::cast
    sql = re.sub(r"(?<!:):(\w+)", "?", where)
    access = "access_attributes::text" if conn.engine == "postgres" else "access_attributes"
    rows = conn.query(f"SELECT id, owner_principal, {access} AS access_attributes FROM openai_files WHERE {sql}",
                      [params[name] for name in names])
    return {row["id"] for row in rows if is_action_allowed(record_of(row), user)}
