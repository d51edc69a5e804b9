"""The daemon's API with several keys, each acting as its own identity, driven by the official
``openai`` SDK over the real Unix socket: each key sees its own files and public ones, and the other's
ids answer 404 exactly as missing ones do."""

import importlib
import json
import sqlite3

import openai
import pytest

from tests.daemon.conftest import socket_client

ML_KEY = "ml-team-key-0123456789abcdef"
WEB_KEY = "web-team-key-0123456789abcdef"
KEYS = [{"env": "S3FILESFS_TEST_KEY_ML", "principal": "alice", "attributes": {"teams": ["ml"]}},
        {"env": "S3FILESFS_TEST_KEY_WEB", "principal": "bob", "attributes": {"teams": ["web"]}}]


def sdk(socket, key: str) -> openai.OpenAI:
    # The SDK's own HTTP library (httpx, or its fork httpx2 in newer releases), pointed at the socket.
    http = importlib.import_module(openai.DefaultHttpxClient.__mro__[1].__module__.partition(".")[0])
    transport = http.HTTPTransport(uds=str(socket))
    return openai.OpenAI(api_key=key, base_url="http://daemon/v1", max_retries=0,
                         http_client=openai.DefaultHttpxClient(transport=transport))


@pytest.fixture
def keyed(env, monkeypatch):
    monkeypatch.setenv("S3FILESFS_TEST_KEY_ML", ML_KEY)
    monkeypatch.setenv("S3FILESFS_TEST_KEY_WEB", WEB_KEY)
    world = env(api={"keys": KEYS})
    daemon = world.start()
    yield world, daemon
    daemon.stop()


def test_two_keys_see_their_own_files_and_public_ones(keyed):
    world, daemon = keyed
    ml, web = sdk(world.socket, ML_KEY), sdk(world.socket, WEB_KEY)
    local = socket_client(world.socket)  # no key: the daemon's own identity, anonymous here
    public = local.post("/v1/files", data={"purpose": "assistants"}, files={"file": ("public.txt", b"for all")})
    assert public.status_code == 200, public.text
    public_id = public.json()["id"]
    ml_file = ml.files.create(file=("model.txt", b"weights"), purpose="assistants")
    web_file = web.files.create(file=("site.txt", b"html"), purpose="assistants")

    assert {f.id for f in ml.files.list()} == {ml_file.id, public_id}
    assert {f.id for f in web.files.list()} == {web_file.id, public_id}
    assert [f["id"] for f in local.get("/v1/files").json()["data"]] == [public_id]
    assert ml.files.content(ml_file.id).read() == b"weights"
    assert web.files.content(public_id).read() == b"for all"

    missing = "file-" + "0" * 32
    for call in ("retrieve", "content", "delete"):
        with pytest.raises(openai.NotFoundError) as hidden:
            getattr(web.files, call)(ml_file.id)
        with pytest.raises(openai.NotFoundError) as absent:
            getattr(web.files, call)(missing)
        assert hidden.value.status_code == absent.value.status_code == 404
        assert hidden.value.body == json.loads(json.dumps(absent.value.body).replace(missing, ml_file.id))
    assert local.get(f"/v1/files/{web_file.id}").status_code == 404
    assert ml.files.retrieve(ml_file.id).filename == "model.txt"  # the other's delete did nothing

    # Written as Llama Stack writes an authenticated user's row.
    with sqlite3.connect(world.db) as conn:
        rows = {row[0]: row[1:] for row in conn.execute(
            "SELECT id, owner_principal, access_attributes FROM openai_files")}
    assert rows[ml_file.id][0] == "alice" and json.loads(rows[ml_file.id][1]) == {"teams": ["ml"]}
    assert rows[public_id] == ("", "null")

    assert ml.files.delete(ml_file.id).deleted
    assert {f.id for f in ml.files.list()} == {public_id}


def test_a_wrong_key_on_the_socket_is_refused(keyed):
    world, _ = keyed
    with pytest.raises(openai.AuthenticationError) as refused:
        sdk(world.socket, "not-a-key-of-this-daemon").files.list()
    assert refused.value.status_code == 401
    assert sdk(world.socket, ML_KEY).files.list().data == []
    # The config names the variables; the keys themselves are nowhere in the settings.
    shown = world.settings().masked()
    assert shown["api"]["keys"] == KEYS
    assert ML_KEY not in repr(shown) and WEB_KEY not in repr(world.settings())


def test_a_key_named_in_the_config_must_be_set(env, monkeypatch):
    from s3filesfs.daemon.service import DaemonService
    from s3filesfs.errors import ConfigError

    monkeypatch.setenv("S3FILESFS_TEST_KEY_ML", ML_KEY)
    monkeypatch.delenv("S3FILESFS_TEST_KEY_WEB", raising=False)
    with pytest.raises(ConfigError, match="set the environment variable S3FILESFS_TEST_KEY_WEB"):
        DaemonService(env(api={"keys": KEYS}).settings()).start()
