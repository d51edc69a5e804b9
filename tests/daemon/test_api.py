"""The socket API: OpenAI Files semantics and shapes, bad requests, permissions, the TCP listener."""

import io
import os
import re
import stat
import subprocess
import sys
import urllib.parse
from pathlib import Path

import httpx
import openapi_spec_validator
import pytest

import s3filesfs
from s3filesfs import config
from tests.helpers import free_port


def assert_openai_error(response, status, param=None):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if param is not None:
        assert error["param"] == param
    return error


@pytest.fixture
def daemon(env):
    return env().start()


def test_socket_is_private(daemon):
    path = daemon.env.socket
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700


def test_default_socket_path(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    assert config.load().api_socket_path == tmp_path / "run" / "s3filesfs" / "api.sock"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert str(config.load().api_socket_path) == f"/tmp/s3filesfs-{os.getuid()}/api.sock"


def test_upload_list_retrieve_content_delete(daemon):
    client = daemon.client
    made = []
    for number in range(3):
        response = client.post("/v1/files", data={"purpose": "assistants"},
                               files={"file": (f"n{number}.txt", f"body {number}".encode())})
        assert response.status_code == 200, response.text
        made.append(response.json())
    batch = client.post("/v1/files", data={"purpose": "batch", "expires_after[anchor]": "created_at",
                                           "expires_after[seconds]": "7200"},
                        files={"file": ("b.jsonl", b"{}\n")}).json()
    assert batch["expires_at"] == batch["created_at"] + 7200
    assert made[0]["expires_at"] is None and made[0]["bytes"] == 6 and made[0]["filename"] == "n0.txt"

    everything = client.get("/v1/files").json()
    assert everything["object"] == "list" and everything["has_more"] is False
    assert len(everything["data"]) == 4
    only = client.get("/v1/files", params={"purpose": "assistants", "order": "asc", "limit": 2}).json()
    ascending = [m["id"] for m in sorted(made, key=lambda m: (m["created_at"], m["id"]))]
    assert [f["id"] for f in only["data"]] == ascending[:2]
    assert only["has_more"] is True and only["first_id"] == only["data"][0]["id"]
    rest = client.get("/v1/files", params={"purpose": "assistants", "order": "asc", "after": only["last_id"]}).json()
    assert {f["id"] for f in only["data"] + rest["data"]} == {m["id"] for m in made}
    assert rest["has_more"] is False

    assert client.get(f"/v1/files/{made[1]['id']}").json() == made[1]
    content = client.get(f"/v1/files/{made[1]['id']}/content")
    assert content.status_code == 200 and content.content == b"body 1"
    deleted = client.delete(f"/v1/files/{made[1]['id']}").json()
    assert deleted == {"id": made[1]["id"], "object": "file", "deleted": True}
    assert_openai_error(client.get(f"/v1/files/{made[1]['id']}"), 404)
    assert daemon.files.check().clean


def test_large_content_is_streamed_back(daemon):
    body = os.urandom(3 * 1024 * 1024 + 17)
    made = daemon.client.post("/v1/files", data={"purpose": "user_data"}, files={"file": ("big.bin", body)}).json()
    with daemon.client.stream("GET", f"/v1/files/{made['id']}/content") as response:
        chunks = list(response.iter_bytes())
    assert b"".join(chunks) == body


# One RFC 6266 parameter: a token name, "=", then a quoted string or a token (an RFC 5987 ext-value).
DISPOSITION_PARAM = re.compile(r';\s*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;\s]+)')


def disposition(header: str) -> tuple[str, dict[str, str]]:
    """The header read by RFC 6266's rules: its type and parameters, ``filename*`` decoded as RFC 5987
    says (``charset'language'percent-encoded``); anything left over fails the test."""
    kind, _, rest = header.partition(";")
    params, end = {}, 0
    for match in DISPOSITION_PARAM.finditer(";" + rest):
        assert match.start() == end, f"unparsable at {(';' + rest)[end:]!r}"
        name, value = match.group(1).lower(), match.group(2)
        if value.startswith('"'):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        if name.endswith("*"):
            charset, _, encoded = value.split("'", 2)
            value = urllib.parse.unquote(encoded, encoding=charset, errors="strict")
        params[name] = value
        end = match.end()
    assert end == len(rest) + 1, f"unparsable at {(';' + rest)[end:]!r}"
    return kind.strip(), params


@pytest.mark.parametrize("name, plain", [
    ("report.pdf", "report.pdf"),
    ("two words & more (1).txt", "two words & more (1).txt"),
    ("résumé 2024.pdf", "r_sum_ 2024.pdf"),
    ("数据.jsonl", "__.jsonl"),
    ('say "hi" \\ back.txt', "say _hi_ _ back.txt"),
    ("line\r\nX-Injected: yes.txt", "line__X-Injected: yes.txt"),
])
def test_content_names_the_file_as_an_attachment(daemon, name, plain):
    # Straight into the store: HTTP clients percent-encode quotes and line breaks in a form's filename.
    made = daemon.files.create(io.BytesIO(b"body"), name, "assistants")
    assert daemon.client.get(f"/v1/files/{made.id}").json()["filename"] == name
    response = daemon.client.get(f"/v1/files/{made.id}/content")
    assert response.status_code == 200 and response.content == b"body"
    header = response.headers["content-disposition"]
    assert header.isascii() and "\r" not in header and "\n" not in header
    assert "x-injected" not in response.headers
    kind, params = disposition(header)
    assert kind == "attachment" and params["filename"] == plain
    if name == plain:  # a plain ASCII name is sent as the seed sends it, and nothing more
        assert header == f'attachment; filename="{name}"'
    else:  # the exact name, which clients prefer to the stand-in (RFC 6266, section 4.3)
        assert params == {"filename": plain, "filename*": name}
        assert "filename*=UTF-8''" in header


def test_a_file_whose_object_vanished_leaves_the_listing_at_once(daemon):
    """A young row whose object is gone is hidden from the listing by the first read that notices,
    in whichever process it happens, and listed again once its object is back."""
    client, s3 = daemon.client, daemon.env.server.client()
    made = [client.post("/v1/files", data={"purpose": "assistants"},
                        files={"file": (f"v{n}.txt", f"body {n}".encode())}).json()["id"] for n in range(3)]
    whole, through_api, through_cli = made

    def listed():
        return sorted(f["id"] for f in daemon.listed())

    s3.delete_object(Bucket=daemon.env.bucket, Key=through_api)
    assert listed() == sorted(made)  # nobody has read it yet
    assert_openai_error(client.get(f"/v1/files/{through_api}/content"), 404)
    assert listed() == sorted([whole, through_cli])

    # Another process notices: the command line, on the same database.
    s3.delete_object(Bucket=daemon.env.bucket, Key=through_cli)
    result = subprocess.run([str(Path(sys.executable).with_name("s3filesfs")), "--config",
                             str(daemon.env.config_path), "cat", through_cli], capture_output=True, timeout=60)
    assert result.returncode == 1 and b"not found" in result.stderr
    assert listed() == [whole]
    assert client.get(f"/v1/files/{through_cli}").status_code == 200  # the row is kept, within the grace

    s3.put_object(Bucket=daemon.env.bucket, Key=through_api, Body=b"body 1")
    assert client.get(f"/v1/files/{through_api}/content").content == b"body 1"
    assert listed() == sorted([whole, through_api])


@pytest.mark.parametrize("params, param", [
    ({"limit": 0}, "limit"),
    ({"limit": 10001}, "limit"),
    ({"limit": 99999999999}, "limit"),
    ({"limit": "lots"}, "limit"),
    ({"order": "sideways"}, "order"),
    ({"purpose": "homework"}, "purpose"),
    ({"after": "file-" + "0" * 32}, "after"),
    ({"after": "not-an-id"}, "after"),
])
def test_bad_list_parameters_are_400(daemon, params, param):
    assert_openai_error(daemon.client.get("/v1/files", params=params), 400, param)


def test_unknown_ids_are_404(daemon):
    for file_id in ("file-" + "a" * 32, "nonsense", "file-..%2F..%2Fetc"):
        assert_openai_error(daemon.client.get(f"/v1/files/{file_id}"), 404)
        assert_openai_error(daemon.client.get(f"/v1/files/{file_id}/content"), 404)
        assert_openai_error(daemon.client.delete(f"/v1/files/{file_id}"), 404)


def test_malformed_uploads_are_400_and_the_daemon_survives(daemon):
    client = daemon.client
    assert_openai_error(client.post("/v1/files", data={"purpose": "homework"}, files={"file": ("x", b"x")}),
                        400, "purpose")
    assert_openai_error(client.post("/v1/files", data={"purpose": "batch"}), 400, "file")
    assert_openai_error(client.post("/v1/files", files={"file": ("x", b"x")}), 400, "purpose")
    assert_openai_error(client.post("/v1/files", json={"purpose": "batch", "file": "x"}), 400)
    assert_openai_error(client.post("/v1/files", content=b"--zz\r\ngarbage", headers={
        "content-type": "multipart/form-data; boundary=zz"}), 400)
    assert_openai_error(client.post("/v1/files", content=b"\x00\xff" * 100, headers={
        "content-type": "multipart/form-data"}), 400)
    for seconds, anchor in (("60", "created_at"), ("soon", "created_at"), ("7200", "last_active_at")):
        assert_openai_error(client.post("/v1/files", data={"purpose": "batch", "expires_after[anchor]": anchor,
                                                          "expires_after[seconds]": seconds},
                                        files={"file": ("x", b"x")}), 400, "expires_after")
    assert_openai_error(client.get("/v1/nothing-here"), 404)
    assert_openai_error(client.put("/v1/files"), 405)
    # None of that reached the store, and the daemon still answers.
    assert client.get("/v1/status").status_code == 200
    assert client.get("/v1/files").json()["data"] == []
    assert daemon.files.check().clean  # (also creates the bucket, if nothing did)
    assert daemon.env.objects() == {}


# What each operation really answers besides 200, as the tests above provoke it (502/503: storage).
DECLARED_ERRORS = {
    ("get", "/v1/files"): {"400", "502", "503"},
    ("post", "/v1/files"): {"400", "502", "503"},
    ("get", "/v1/files/{file_id}"): {"404", "502", "503"},
    ("delete", "/v1/files/{file_id}"): {"404", "502", "503"},
    ("get", "/v1/files/{file_id}/content"): {"404", "502", "503"},
    ("get", "/v1/status"): set(),
    ("get", "/metrics"): set(),
}


def operations(schema: dict) -> dict:
    return {(method, path): operation for path, methods in schema["paths"].items()
            for method, operation in methods.items()}


def test_openapi_schema_lists_the_routes_and_the_errors_they_really_give(daemon):
    response = daemon.client.get("/openapi.json")
    assert response.status_code == 200, response.text
    schema = response.json()
    openapi_spec_validator.validate(schema)  # a well-formed OpenAPI document, as generators need
    assert schema["info"]["title"] == "s3filesfs" and schema["info"]["version"] == s3filesfs.__version__
    assert "security" not in schema  # the socket needs no key
    found = operations(schema)
    assert set(found) == set(DECLARED_ERRORS)
    for key, operation in found.items():
        assert set(operation["responses"]) == {"200"} | DECLARED_ERRORS[key], key
    assert "application/octet-stream" in found[("get", "/v1/files/{file_id}/content")]["responses"]["200"]["content"]

    # The declared error body is the one sent: provoke each declared 400 and 404 and compare.
    error_schema = schema["components"]["schemas"]["ErrorResponse"]
    detail = schema["components"]["schemas"][error_schema["properties"]["error"]["$ref"].rsplit("/", 1)[1]]
    unknown = "file-" + "a" * 32
    for method, url, status, kwargs in (
            ("GET", "/v1/files", 400, {"params": {"limit": 0}}),
            ("POST", "/v1/files", 400, {"data": {"purpose": "homework"}, "files": {"file": ("x", b"x")}}),
            ("GET", f"/v1/files/{unknown}", 404, {}),
            ("DELETE", f"/v1/files/{unknown}", 404, {}),
            ("GET", f"/v1/files/{unknown}/content", 404, {})):
        answer = daemon.client.request(method, url, **kwargs)
        assert answer.status_code == status
        assert set(answer.json()) == set(error_schema["required"]) == {"error"}
        assert set(answer.json()["error"]) == set(detail["properties"])
    # A success matches its declared model too.
    made = daemon.client.post("/v1/files", data={"purpose": "batch"}, files={"file": ("a.jsonl", b"{}\n")}).json()
    file_model = schema["components"]["schemas"]["OpenAIFile"]
    assert set(made) == set(file_model["properties"])
    listed = daemon.client.get("/v1/files").json()
    assert set(listed) == set(schema["components"]["schemas"]["OpenAIFileList"]["properties"])
    # No operation answers 405: it is the answer to a method a path does not take, outside the schema.
    assert daemon.client.put("/v1/files").status_code == 405 and ("put", "/v1/files") not in found


def test_openapi_schema_over_tcp_needs_the_key_and_says_so(env, monkeypatch):
    monkeypatch.setenv("S3FILESFS_TEST_KEY", "sekret-123")
    port = free_port()
    env(api={"listen": f"127.0.0.1:{port}", "api_key_env": "S3FILESFS_TEST_KEY"}).start()
    url = f"http://127.0.0.1:{port}/openapi.json"
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        assert_openai_error(httpx.get(url, headers=headers), 401)
    response = httpx.get(url, headers={"Authorization": "Bearer sekret-123"})
    assert response.status_code == 200
    schema = response.json()
    openapi_spec_validator.validate(schema)
    assert schema["components"]["securitySchemes"] == {"bearer": {"type": "http", "scheme": "bearer"}}
    assert schema["security"] == [{"bearer": []}]
    for key, operation in operations(schema).items():
        assert set(operation["responses"]) == {"200", "401"} | DECLARED_ERRORS[key], key
    assert "sekret-123" not in response.text


def test_status_reports_folders_queue_and_counts(daemon):
    status = daemon.client.get("/v1/status").json()
    assert status["watched_folders"] == [str(daemon.env.watch / p) for p in daemon.service.purposes]
    for key in ("queue_length", "in_flight", "recent_failures", "counts", "last_sync_at", "not_uploaded"):
        assert key in status
    assert status["queue_length"] == 0 and status["in_flight"] == [] and status["last_sync_at"] is None


def test_tcp_listener_requires_the_bearer_key(env, monkeypatch):
    monkeypatch.setenv("S3FILESFS_TEST_KEY", "sekret-123")
    port = free_port()
    daemon = env(api={"listen": f"127.0.0.1:{port}", "api_key_env": "S3FILESFS_TEST_KEY"}).start()
    base = f"http://127.0.0.1:{port}"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "sekret-123"}):
        for method, url in (("GET", "/v1/files"), ("GET", "/v1/status"), ("POST", "/v1/files"),
                            ("GET", "/nowhere")):
            response = httpx.request(method, base + url, headers=headers)
            assert_openai_error(response, 401)
    good = {"Authorization": "Bearer sekret-123"}
    assert httpx.get(base + "/v1/files", headers=good).status_code == 200
    made = httpx.post(base + "/v1/files", headers=good, data={"purpose": "evals"},
                      files={"file": ("e.csv", b"a\n")})
    assert made.status_code == 200
    # The Unix socket stays key-free (its permissions are the guard).
    assert daemon.client.get(f"/v1/files/{made.json()['id']}").status_code == 200
    assert daemon.files.check().clean


def test_listen_without_a_key_is_refused(env):
    world = env(api={"listen": "127.0.0.1:1", "api_key_env": "S3FILESFS_UNSET_KEY"})
    from s3filesfs.daemon.service import DaemonService
    from s3filesfs.errors import ConfigError

    with pytest.raises(ConfigError, match="S3FILESFS_UNSET_KEY"):
        DaemonService(world.settings()).start()


def test_a_second_daemon_on_the_same_socket_is_refused(env, tmp_path):
    world = env()
    first = world.start()
    from s3filesfs.daemon.service import DaemonService
    from s3filesfs.errors import ConfigError

    with pytest.raises(ConfigError, match="already serving"):
        DaemonService(world.settings()).start()
    assert first.client.get("/v1/status").status_code == 200  # the first one's socket survived
