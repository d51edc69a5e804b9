"""The seed's access control, as its code decides it, for the tests to compare ours with.

Llama Stack is not installed here, so the parts that decide who sees a row of ``openai_files`` are
copied from its source (github.com/llamastack/llama-stack, MIT licence, at 87c11f66, the last
commit before the project was renamed ``ogx``; unchanged in meaning since):

* ``core/access_control/conditions.py``: ``UserInOwnersList``, ``UserIsOwner``, ``ResourceIsUnowned``,
  verbatim but for their docstrings;
* ``core/access_control/access_control.py``: ``default_policy()`` (its ``when`` conditions: every rule
  permits every action) and the loop of ``is_action_allowed`` for such rules;
* ``core/storage/sqlstore/authorized_sqlstore.py``: ``_build_default_policy_where_clause`` with its
  ``_json_extract_text`` and ``_get_public_access_conditions``, verbatim but for ``self``, and the
  owner its ``fetch_all`` builds from a row before asking the policy.

What the seed shows a user is the rows its SQL lets through *and* its policy then permits
(``AuthorizedSqlStore.fetch_all``): ``seed_visible`` is that.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

ALLOWED_ATTRIBUTE_KEYS = frozenset({"roles", "teams", "projects", "namespaces"})


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
        defined = self.owners_values(resource)
        if not defined:
            return False
        if not user.attributes or self.name not in user.attributes or not user.attributes[self.name]:
            return False
        user_values = user.attributes[self.name]
        for value in defined:
            if value in user_values:
                return True
        return False


class UserIsOwner:
    def matches(self, resource, user: User) -> bool:
        return resource.owner.principal == user.principal if resource.owner else False


class ResourceIsUnowned:
    def matches(self, resource, user: User) -> bool:
        return not resource.owner


# --- access_control.py: default_policy() and is_action_allowed for it -----------------------------

Condition = UserInOwnersList | UserIsOwner | ResourceIsUnowned
DEFAULT_POLICY: list[list[Condition]] = [[UserInOwnersList(name)] for name in ["roles", "teams", "projects",
                                                                          "namespaces"]]
DEFAULT_POLICY += [[UserIsOwner()], [ResourceIsUnowned()]]


def is_action_allowed(resource, user: User | None) -> bool:
    if not user:
        return True  # "no auth"
    for conditions in DEFAULT_POLICY:
        if all(condition.matches(resource, user) for condition in conditions):
            return True
    return False


# --- authorized_sqlstore.py ------------------------------------------------------------------------


def _json_extract_text(database_type: str, column: str, path: str) -> str:
    if database_type == "postgres":
        return f"{column}->>'{path}'"
    return f"JSON_EXTRACT({column}, '$.{path}')"


def build_default_policy_where_clause(database_type: str, current_user: User | None) -> tuple[str, dict[str, Any]]:
    base_conditions = ["owner_principal = ''"]
    params: dict[str, Any] = {}
    if current_user:
        params["owner_principal_match"] = current_user.principal
        base_conditions.append("owner_principal = :owner_principal_match")
        if current_user.attributes:
            for attr_key, user_values in current_user.attributes.items():
                if attr_key not in ALLOWED_ATTRIBUTE_KEYS:
                    continue
                if user_values:
                    value_conditions = []
                    for j, value in enumerate(user_values):
                        param_name = f"attr_{attr_key}_{j}"
                        json_text = _json_extract_text(database_type, "access_attributes", attr_key)
                        value_conditions.append(f"({json_text} LIKE :{param_name})")
                        params[param_name] = f'%"{value}"%'
                    if value_conditions:
                        base_conditions.append(f"({' OR '.join(value_conditions)})")
    return f"({' OR '.join(base_conditions)})", params


def record_of(row: dict) -> SqlRecord:
    """The resource ``fetch_all`` asks the policy about: owned only when ``owner_principal`` is set."""
    attributes = row["access_attributes"]
    if isinstance(attributes, str):
        attributes = json.loads(attributes)
    owner = User(principal=row["owner_principal"], attributes=attributes) if row["owner_principal"] else None
    return SqlRecord(owner)


def seed_visible(conn, user: User | None) -> set[str]:
    """The ids of ``openai_files`` the seed shows ``user`` (None: a server without authentication),
    over a plain connection (``tests.unit.stores.PlainConnection``): its SQL, then its policy."""
    where, params = build_default_policy_where_clause(conn.engine, user)
    names = re.findall(r":(\w+)", where)
    sql = re.sub(r":(\w+)", "?", where)
    access = "access_attributes::text" if conn.engine == "postgres" else "access_attributes"
    rows = conn.query(f"SELECT id, owner_principal, {access} AS access_attributes FROM openai_files WHERE {sql}",
                      [params[name] for name in names])
    return {row["id"] for row in rows if is_action_allowed(record_of(row), user)}
