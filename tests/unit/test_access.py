"""Access control as Llama Stack does it, on SQLite and on PostgreSQL: rows written with their owner
and attributes as the seed writes them, and each identity shown exactly what the seed's default
policy shows it (``tests/unit/seed_access.py`` is the seed's own deciding code). The behaviours of
the seed's ``tests/unit/providers/files/test_s3_files_auth.py`` come first, as tests of ours.
"""

import io
import itertools
import json

import pytest
from sqlalchemy import create_engine

from s3filesfs import config
from s3filesfs.access import ANONYMOUS, OPERATOR, Identity, parse_attribute_words
from s3filesfs.blobs.local import LocalBlobStore
from s3filesfs.errors import ConfigError, InvalidRequest, NotFound
from s3filesfs.files import FileService
from s3filesfs.metadata import MetadataStore, PostgresLocation
from tests.unit.seed_access import User, seed_visible
from tests.unit.stores import EPOCH, Clock, MetadataTarget, assert_clean
from tests.unit.test_seed_compat import ACCESS_AS_TEXT, seed_declaration

USER_A = Identity.of("user-a", {"roles": ["team-a"]})
USER_B = Identity.of("user-b", {"roles": ["team-b"]})
USER_X = Identity.of("user-x", {"roles": ["shared-role"]})
USER_Y = Identity.of("user-y", {"roles": ["shared-role"]})


@pytest.fixture
def store(metadata_db, tmp_path) -> FileService:
    """The operator's service on a local store and the test's database (each test acts through views)."""
    return FileService(MetadataStore(metadata_db.location), LocalBlobStore(tmp_path / "store"), clock=Clock())


def upload(service: FileService, body: bytes = b"hello world\n", name: str = "sample.txt") -> str:
    return service.create(io.BytesIO(body), name, "assistants").id


def as_user(identity: Identity) -> User:
    return User(identity.principal, identity.attribute_map() or None)


# --- the seed's test_s3_files_auth.py -----------------------------------------------------------


def test_listing_hides_other_users_file(store):
    uploaded = upload(store.acting_as(USER_A))
    listed = store.acting_as(USER_B).list()
    assert all(f.id != uploaded for f in listed.data)
    assert [f.id for f in store.acting_as(USER_A).list().data] == [uploaded]


@pytest.mark.parametrize("op", ["retrieve", "content", "delete"])
def test_cannot_access_other_user_file(store, op):
    uploaded = upload(store.acting_as(USER_A))
    missing = "file-" + "0" * 32
    other = store.acting_as(USER_B)
    with pytest.raises(NotFound) as hidden:
        getattr(other, op)(uploaded)
    with pytest.raises(NotFound) as absent:
        getattr(other, op)(missing)
    # Exactly what a missing id gets, errno, status and exit code included.
    assert hidden.value.message == absent.value.message.replace(missing, uploaded)
    assert (hidden.value.errno, hidden.value.http_status, hidden.value.exit_code) == \
        (absent.value.errno, absent.value.http_status, absent.value.exit_code)
    # Nothing happened to it.
    _, chunks = store.acting_as(USER_A).content(uploaded)
    assert b"".join(chunks) == b"hello world\n"
    assert_clean(store)


def test_shared_role_allows_listing(store):
    uploaded = upload(store.acting_as(Identity.of("user-a", {"roles": ["shared-role"]})))
    listed = store.acting_as(Identity.of("user-b", {"roles": ["shared-role"]})).list()
    assert any(f.id == uploaded for f in listed.data)


@pytest.mark.parametrize("op", ["retrieve", "content", "delete"])
def test_shared_role_allows_access(store, op):
    uploaded = upload(store.acting_as(USER_X))
    getattr(store.acting_as(USER_Y), op)(uploaded)
    if op == "delete":
        with pytest.raises(NotFound):
            store.retrieve(uploaded)
    assert_clean(store)


# --- the rest of what a caller may do -------------------------------------------------------------


def test_rename_and_pages_of_a_file_not_ours_answer_as_for_a_missing_one(store):
    theirs = upload(store.acting_as(USER_A), name="theirs.txt")
    other = store.acting_as(USER_B)
    with pytest.raises(NotFound):
        other.rename(theirs, "mine.txt", "batch")
    assert store.retrieve(theirs).filename == "theirs.txt"
    with pytest.raises(InvalidRequest, match=f"after: no file '{theirs}' to continue from"):
        other.list(after=theirs)
    renamed = store.acting_as(USER_A).rename(theirs, "kept.txt", "batch")
    assert store.retrieve(theirs) == renamed


def test_the_operator_sees_every_file_and_the_anonymous_caller_only_public_ones(store):
    public = upload(store.acting_as(ANONYMOUS))
    owned = upload(store.acting_as(USER_A))
    assert {f.id for f in store.list().data} == {public, owned}  # a FileService acts as the operator
    assert {f.id for f in store.acting_as(USER_A.with_full_view()).list().data} == {public, owned}
    assert [f.id for f in store.acting_as(ANONYMOUS).list().data] == [public]
    assert {f.id for f in store.acting_as(USER_B).list().data} == {public}
    # gc, check and the rest of upkeep see every row, whoever the service acts as.
    assert store.acting_as(ANONYMOUS).has_row(owned)
    assert store.acting_as(ANONYMOUS).check().clean


def test_expired_files_of_others_are_removed_by_gc_from_any_view(store, tmp_path):
    owned = store.acting_as(USER_A).create(io.BytesIO(b"x"), "x.txt", "batch", expires_after=3600).id
    store.clock.advance(3601)
    assert store.acting_as(USER_B).gc() == [owned]
    assert not store.has_row(owned)
    assert_clean(store)


# --- rows as Llama Stack writes them, both ways ----------------------------------------------------


def test_rows_carry_the_owner_and_attributes_as_the_seed_writes_them(store, metadata_db):
    team = Identity.of("alice", {"teams": ["ml", "infra"], "roles": ["admin"]})
    owned = upload(store.acting_as(team))
    bare = upload(store.acting_as(Identity.of("bob")))
    public = upload(store.acting_as(ANONYMOUS))
    with metadata_db.plain() as conn:
        rows = {row["id"]: row for row in conn.query(
            f"SELECT id, owner_principal, {ACCESS_AS_TEXT[metadata_db.engine]} AS access FROM openai_files")}
    assert rows[owned]["owner_principal"] == "alice"
    assert json.loads(rows[owned]["access"]) == {"roles": ["admin"], "teams": ["ml", "infra"]}
    assert (rows[bare]["owner_principal"], rows[bare]["access"]) == ("bob", "null")  # User("bob", None)
    assert (rows[public]["owner_principal"], rows[public]["access"]) == ("", "null")


def seed_engine(db: MetadataTarget):
    location = db.location
    if isinstance(location, PostgresLocation):
        return create_engine(f"postgresql+psycopg://{location.user}:{location.password}@{location.host}:"
                             f"{location.port}/{location.db}")
    return create_engine(f"sqlite:///{location}")


def seed_insert(engine, file_id: str, user: User | None) -> None:
    """``AuthorizedSqlStore.insert`` for ``user`` through the seed's SQLAlchemy table: its principal and
    attributes (the JSON column serializes them), or '' and JSON null without authentication."""
    row = {"id": file_id, "filename": f"{file_id}.txt", "purpose": "assistants", "bytes": 0,
           "created_at": EPOCH - 10, "expires_at": None}
    if user:
        row.update(owner_principal=user.principal, access_attributes=user.attributes)
    else:
        row.update(owner_principal="", access_attributes=None)
    table = seed_declaration()
    with engine.begin() as conn:
        conn.execute(table.insert(), row)


# Rows every way the seed writes or may hold them, and callers every way its policy tells apart.
ROW_OWNERS = [
    None,  # no authentication: a public row
    User("alice", None),
    User("alice", {}),
    User("bob", {"roles": ["admin"]}),
    User("carol", {"roles": ["admin", "dev"], "teams": ["ml"]}),
    User("dave", {"teams": ["ml"], "projects": ["p1"]}),
    User("erin", {"namespaces": ["prod"]}),
    User("frank", {"teams": []}),
    User("grace", {"teams": ["ml_ops"]}),  # '_' is a LIKE wildcard in the seed's SQL
    User("heidi", {"roles": ["Admin"]}),
]
CALLERS = [
    ANONYMOUS,
    Identity.of("alice"),
    Identity.of("zed"),
    Identity.of("zed", {"roles": ["admin"]}),
    Identity.of("zed", {"teams": ["ml"]}),
    Identity.of("zed", {"roles": ["dev"], "teams": ["other"]}),
    Identity.of("zed", {"projects": ["p1"], "namespaces": ["prod"]}),
    Identity.of("zed", {"teams": ["mlxops"]}),
    Identity.of("bob", {"teams": ["ml"]}),
    Identity.of("zed", {"roles": ["admin", "Admin"], "teams": ["ml_ops"], "projects": ["p1"],
                        "namespaces": ["prod"]}),
]


def test_every_caller_sees_what_the_seed_shows_it(store, metadata_db):
    """Rows the seed wrote and rows we wrote, each for every kind of owner: each caller is shown
    what the seed's SQL and policy together show it, no more and no less, and nobody sees all."""
    engine = seed_engine(metadata_db)
    written = {}
    for index, owner in enumerate(ROW_OWNERS):
        seed_id = f"file-{index:032x}"
        seed_insert(engine, seed_id, owner)
        written[seed_id] = owner
        ours = store.acting_as(Identity.of(owner.principal, owner.attributes) if owner else ANONYMOUS)
        written[ours.begin("ours.txt", "assistants").commit().id] = owner
    engine.dispose()
    with metadata_db.plain() as conn:
        stored = conn.query(f"SELECT id, owner_principal, {ACCESS_AS_TEXT[metadata_db.engine]} AS access "
                            "FROM openai_files")
        for caller in CALLERS:
            expected = seed_visible(conn, as_user(caller) if caller.principal else None)
            shown = {f.id for f in store.acting_as(caller).list().data}
            assert shown == expected, (caller, sorted(shown ^ expected))
            assert shown == {row["id"] for row in stored if caller.may_see(row["owner_principal"], row["access"])}
            assert shown != set(written)
            for file_id in written:
                if file_id in shown:
                    assert store.acting_as(caller).retrieve(file_id).id == file_id
                else:
                    with pytest.raises(NotFound):
                        store.acting_as(caller).retrieve(file_id)


def test_a_row_of_a_user_without_attributes_is_seen_by_everyone_who_signs_in(store):
    """Its attributes are JSON null, which the seed's query takes as public; a row with attributes
    is another matter, whoever its owner is."""
    mine = upload(store.acting_as(Identity.of("alice")))
    public = upload(store.acting_as(ANONYMOUS))
    bobs = upload(store.acting_as(Identity.of("bob")))
    upload(store.acting_as(USER_A))
    assert {f.id for f in store.acting_as(Identity.of("alice")).list().data} == {mine, public, bobs}
    assert {f.id for f in store.acting_as(ANONYMOUS).list().data} == {mine, public, bobs}


def test_rows_of_a_table_from_before_access_control_are_unowned(store, metadata_db):
    """An older seed's rows gain the columns as SQL NULL. The policy calls them unowned ("resource is
    unowned": no owner_principal), so every caller sees them; the seed's own SQL (``owner_principal
    = ''``) happens to drop them before its policy is asked, which we do not copy."""
    file_id = "file-" + "7" * 32
    with metadata_db.plain() as conn:
        conn.execute("INSERT INTO openai_files (id, filename, purpose, bytes, created_at, expires_at) "
                     "VALUES (?, ?, ?, ?, ?, ?)", (file_id, "old.txt", "assistants", 0, EPOCH - 5, None))
    for caller in (ANONYMOUS, USER_A):
        assert [f.id for f in store.acting_as(caller).list().data] == [file_id]


def test_attributes_that_are_not_lists_of_strings_match_nothing(store, metadata_db):
    """What the seed never writes, and its policy would not match either: a category holding a string,
    numbers, a JSON text that is not JSON (SQLite keeps any text)."""
    odd = {"file-" + "1" * 32: '{"roles": "admin"}', "file-" + "2" * 32: '{"roles": [1, 2]}',
           "file-" + "3" * 32: '{"roles": {"other": 1}}'}
    if metadata_db.engine == "sqlite":
        odd["file-" + "4" * 32] = "not json ["
    with metadata_db.plain() as conn:
        for file_id, attributes in odd.items():
            conn.execute("INSERT INTO openai_files VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                         (file_id, "odd.txt", "assistants", 0, EPOCH - 5, None, attributes, "mallory"))
    caller = Identity.of("zed", {"roles": ["admin", "1", "other"]})
    assert store.acting_as(caller).list().data == []
    assert {f.id for f in store.list().data} == set(odd)


# --- identities -----------------------------------------------------------------------------------


def test_identity_attributes_are_checked():
    assert Identity.of("a", {"teams": ["ml", "ml", " infra "], "roles": []}).attributes == (("teams", ("ml", "infra")),)
    assert parse_attribute_words(["roles=admin", "teams=ml,infra", "roles=dev"]) == {
        "roles": ["admin", "dev"], "teams": ["ml", "infra"]}
    with pytest.raises(ValueError, match="unknown attribute category 'groups'"):
        Identity.of("a", {"groups": ["x"]})
    with pytest.raises(ValueError, match="must be CATEGORY=VALUE"):
        parse_attribute_words(["teams"])
    with pytest.raises(ValueError, match="values must be non-empty strings"):
        Identity.of("a", {"teams": [3]})  # type: ignore[list-item]
    assert OPERATOR.sees_all and not ANONYMOUS.sees_all and ANONYMOUS.row_access() == ("", None)


def test_a_caller_must_share_a_value_in_every_category_the_row_names(store):
    """Any value within a category, all the categories the row names, whichever they are; the
    owner is held to the same rule, and categories the row does not name do not matter."""
    categories = ("roles", "teams", "projects", "namespaces")
    for shared, other in itertools.permutations(categories, 2):
        owner = Identity.of(f"owner-{shared}-{other}", {shared: ["s"], other: ["o"]})
        file_id = upload(store.acting_as(owner))
        unnamed = [category for category in categories if category not in (shared, other)]
        for caller in (owner, Identity.of("zed", {shared: ["x", "s"], other: ["o", "y"], unnamed[0]: ["z"]})):
            assert store.acting_as(caller).retrieve(file_id).id == file_id
        for caller in (Identity.of("zed", {shared: ["s"], other: ["nope"]}), Identity.of("zed", {shared: ["s"]}),
                       Identity.of(owner.principal, {shared: ["s"]})):
            with pytest.raises(NotFound):
                store.acting_as(caller).retrieve(file_id)


def test_identity_and_keys_in_the_config(tmp_path, monkeypatch):
    path = tmp_path / "config.yaml"
    path.write_text("identity:\n  principal: alice\n  attributes:\n    teams: [ml]\n"
                    "api:\n  keys:\n    - env: KEY_OF_BOB\n      principal: bob\n      attributes: {roles: [admin]}\n")
    monkeypatch.setenv("KEY_OF_BOB", "the-secret-key-of-bob-0123456789")
    settings = config.load(path)
    assert settings.identity == Identity.of("alice", {"teams": ["ml"]})
    assert [key.identity for key in settings.api_keys] == [Identity.of("bob", {"roles": ["admin"]})]
    shown = settings.masked()
    assert shown["identity"] == {"principal": "alice", "attributes": {"teams": ["ml"]}}
    assert shown["api"]["keys"] == [{"env": "KEY_OF_BOB", "principal": "bob", "attributes": {"roles": ["admin"]}}]
    assert "the-secret-key" not in config.dump_yaml(shown) + repr(settings)
    # Flags and the environment override the file, as for every key.
    flagged = config.load(path, {"identity_principal": "carol", "identity_attributes": ("projects=p1,p2",)})
    assert flagged.identity == Identity.of("carol", {"projects": ["p1", "p2"]})
    monkeypatch.setenv("S3FILESFS_IDENTITY_ATTRIBUTES", "roles=dev namespaces=prod")
    assert config.load(path).identity == Identity.of("alice", {"roles": ["dev"], "namespaces": ["prod"]})


@pytest.mark.parametrize("text, message", [
    ("identity:\n  attributes: {teams: [ml]}\n", "identity.attributes need identity.principal"),
    ("identity:\n  principal: a\n  attributes: {groups: [x]}\n", "unknown attribute category 'groups'"),
    ("identity:\n  principal: a\n  attributes: [teams]\n", "must be CATEGORY=VALUE"),
    ("api:\n  keys: [{principal: bob}]\n", r"api.keys\[0\].env must name the environment variable"),
    ("api:\n  keys: [{env: 'abc-def!', principal: bob}]\n", r"api.keys\[0\].env must name"),
    ("api:\n  keys: [{env: K}]\n", r"api.keys\[0\].principal is required"),
    ("api:\n  keys: [{env: K, principal: a}, {env: K, principal: b}]\n", "K is used by another key"),
    ("api:\n  keys: [{env: K, principal: a, key: x}]\n", r"unknown key 'api.keys\[0\].key'"),
    ("api:\n  keys: {env: K}\n", "api.keys must be a list"),
])
def test_identity_mistakes_name_the_key(tmp_path, text, message):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        config.load(path)
