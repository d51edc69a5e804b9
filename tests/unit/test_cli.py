"""The installed ``s3filesfs`` command, run as a subprocess the way users and scripts run it."""

import json
import os
import pty
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest
import yaml

import s3filesfs
from s3filesfs import cli
from tests.s3server import SECRET_KEY

SCRIPT = Path(sys.executable).with_name("s3filesfs")
FILE_ID = re.compile(r"file-[0-9a-f]{32}")


def run(*args, stdin: bytes | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the command with the test's isolated environment (temp XDG folders, no AWS settings)."""
    return subprocess.run([str(SCRIPT), *map(str, args)], input=stdin, capture_output=True, timeout=60,
                          env={**os.environ, **(env or {})})


def ok(*args, **kwargs) -> str:
    result = run(*args, **kwargs)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


def json_documents(text: str) -> list:
    """Every JSON document printed one after the other (pretty-printed, so not one per line)."""
    decoder, documents, index = json.JSONDecoder(), [], 0
    while index < len(text):
        if text[index].isspace():
            index += 1
            continue
        document, index = decoder.raw_decode(text, index)
        documents.append(document)
    return documents


def assert_file_object(data: dict) -> None:
    assert set(data) == {"object", "id", "bytes", "created_at", "expires_at", "filename", "purpose"}
    assert data["object"] == "file"
    assert FILE_ID.fullmatch(data["id"])
    assert isinstance(data["bytes"], int) and isinstance(data["created_at"], int)


def assert_list_object(data: dict) -> None:
    assert set(data) == {"object", "data", "has_more", "first_id", "last_id"}
    assert data["object"] == "list"
    for item in data["data"]:
        assert_file_object(item)
    assert data["first_id"] == (data["data"][0]["id"] if data["data"] else "")
    assert data["last_id"] == (data["data"][-1]["id"] if data["data"] else "")


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def samples(tmp_path):
    folder = tmp_path / "samples"
    folder.mkdir()
    (folder / "a.txt").write_bytes(b"alpha\n")
    (folder / "b.jsonl").write_bytes(b'{"custom_id": 1}\n{"custom_id": 2}\n')
    (folder / "c.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    return folder


# --- the basics -------------------------------------------------------------------------------


def test_version():
    assert ok("--version").strip() == f"s3filesfs, version {s3filesfs.__version__}"
    assert ok("-V") == ok("--version")


def _all_commands(group: click.Group, prefix=()):
    yield prefix
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from _all_commands(command, (*prefix, name))
        else:
            yield (*prefix, name)


@pytest.mark.parametrize("command", list(_all_commands(cli.main)), ids=lambda c: " ".join(c) or "main")
def test_help_on_every_command(command):
    out = ok(*command, "--help")
    assert out.startswith(f"Usage: s3filesfs {' '.join(command)}".rstrip())
    assert "Show this message and exit." in out
    if not command:
        assert ok("-h") == out


# --- a session on the embedded local store ----------------------------------------------------


def test_upload_list_info_cat_rm_on_the_local_store(samples, tmp_path):
    # Into a pipe, upload prints just the ids, one per line, in the order of the files.
    out = ok("upload", samples / "a.txt", samples / "b.jsonl", samples / "c.bin", "--purpose", "batch")
    ids = out.splitlines()
    assert len(ids) == 3 and all(FILE_ID.fullmatch(line) for line in ids)
    assert [json.loads(ok("info", i, "--json"))["filename"] for i in ids] == ["a.txt", "b.jsonl", "c.bin"]

    listing = json.loads(ok("ls", "--json"))
    assert_list_object(listing)
    assert {item["id"] for item in listing["data"]} == set(ids)
    assert listing["has_more"] is False

    table = ok("ls").splitlines()
    assert table[0].split() == ["ID", "SIZE", "CREATED", "EXPIRES", "PURPOSE", "FILENAME"]
    assert sorted(line.split()[0] for line in table[1:]) == sorted(ids)

    info = json.loads(ok("info", ids[1], "--json"))
    assert_file_object(info)
    assert (info["id"], info["filename"], info["purpose"], info["bytes"]) == (ids[1], "b.jsonl", "batch", 34)
    assert info["expires_at"] == info["created_at"] + 2592000
    human = ok("info", ids[1])
    assert f"id:          {ids[1]}" in human and "filename:    b.jsonl" in human

    assert run("cat", ids[0]).stdout == b"alpha\n"
    target = tmp_path / "out" / "copy.bin"
    target.parent.mkdir()
    assert ok("cat", ids[2], "-o", target) == ""
    assert target.read_bytes() == (samples / "c.bin").read_bytes()
    assert not Path(f"{target}.part").exists()

    assert ok("check").strip() == "bucket and table agree"
    assert ok("rm", ids[0], ids[1]).splitlines() == [f"deleted {ids[0]}", f"deleted {ids[1]}"]
    assert [item["id"] for item in json.loads(ok("ls", "--json"))["data"]] == [ids[2]]
    gone = run("info", ids[0])
    assert gone.returncode == 1
    assert gone.stderr.decode().strip() == f"error: File '{ids[0]}' not found"
    assert json.loads(ok("check", "--json")) == {"clean": True, "rows_without_objects": [],
                                                 "objects_without_rows": [], "size_mismatches": [], "warnings": []}
    # The files really are in the embedded store under the data folder.
    objects = tmp_path / "data" / "s3filesfs" / "local" / "objects"
    assert sorted(p.name for p in objects.iterdir()) == [ids[2]]


def test_cat_into_a_reader_that_goes_away_is_not_an_error(samples):
    file_id = json.loads(ok("upload", samples / "c.bin", "-p", "batch", "--json"))["id"]
    # `s3filesfs cat ID | head -c 10`: the reader closes the pipe long before the 3 MiB are written.
    process = subprocess.Popen([str(SCRIPT), "cat", file_id], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env=dict(os.environ))
    assert process.stdout is not None and process.stderr is not None
    assert process.stdout.read(10) == (samples / "c.bin").read_bytes()[:10]
    process.stdout.close()
    assert process.wait(timeout=60) == 0
    assert process.stderr.read() == b""
    process.stderr.close()


def test_upload_json_gives_openai_file_objects(samples):
    out = ok("upload", samples / "a.txt", samples / "b.jsonl", "--purpose", "assistants",
             "--expires-after", "7200", "--json")
    documents = json_documents(out)
    assert len(documents) == 2
    for document, name in zip(documents, ["a.txt", "b.jsonl"], strict=True):
        assert_file_object(document)
        assert (document["filename"], document["purpose"]) == (name, "assistants")
        assert document["expires_at"] == document["created_at"] + 7200


def test_upload_from_stdin_with_filename():
    body = bytes(range(256)) * 100
    file = json.loads(ok("upload", "-", "--filename", "piped.bin", "--purpose", "user_data", "--json", stdin=body))
    assert_file_object(file)
    assert (file["filename"], file["bytes"]) == ("piped.bin", len(body))
    assert run("cat", file["id"]).stdout == body


def test_upload_with_a_filename_renames_a_single_file(samples):
    file = json.loads(ok("upload", samples / "a.txt", "--filename", "renamed.txt", "-p", "vision", "--json"))
    assert file["filename"] == "renamed.txt"


def test_ls_pages_with_limit_order_and_after(samples):
    ids = [json.loads(ok("upload", samples / name, "-p", "evals", "--json"))["id"]
           for name in ("a.txt", "b.jsonl", "c.bin")]
    ok("upload", samples / "a.txt", "-p", "vision")
    first = json.loads(ok("ls", "--purpose", "evals", "--order", "asc", "--limit", "2", "--json"))
    assert_list_object(first)
    assert first["has_more"] is True
    rest = json.loads(ok("ls", "--purpose", "evals", "--order", "asc", "--limit", "2",
                         "--after", first["last_id"], "--json"))
    assert rest["has_more"] is False
    seen = [item["id"] for item in first["data"] + rest["data"]]
    assert sorted(seen) == sorted(ids) and len(seen) == 3
    hinted = run("ls", "--limit", "1")
    assert hinted.returncode == 0
    assert re.search(r"\(more: s3filesfs ls --after file-[0-9a-f]{32}\)", hinted.stderr.decode())


def test_gc_removes_expired_files(samples, tmp_path):
    keep = json.loads(ok("upload", samples / "a.txt", "-p", "assistants", "--json"))["id"]
    doomed = json.loads(ok("upload", samples / "b.jsonl", "-p", "batch", "--expires-after", "3600", "--json"))["id"]
    assert ok("gc").strip() == "removed 0 expired file(s)"
    # Let an hour pass for that file: its expiry is moved into the past, behind the command's back.
    with sqlite3.connect(tmp_path / "data" / "s3filesfs" / "local" / "metadata.db") as conn:
        conn.execute("UPDATE openai_files SET expires_at = expires_at - 7200 WHERE id = ?", (doomed,))
    assert [item["id"] for item in json.loads(ok("ls", "--json"))["data"]] == [keep]
    assert json.loads(ok("gc", "--json")) == {"removed": [doomed]}
    assert not (tmp_path / "data" / "s3filesfs" / "local" / "objects" / doomed).exists()
    assert ok("check").strip() == "bucket and table agree"


def test_check_exits_1_when_bucket_and_table_disagree(samples, tmp_path):
    file_id = json.loads(ok("upload", samples / "a.txt", "-p", "assistants", "--json"))["id"]
    (tmp_path / "data" / "s3filesfs" / "local" / "objects" / file_id).unlink()
    result = run("check")
    assert result.returncode == 1
    assert result.stdout.decode().splitlines() == ["bucket and table disagree:", f"  row without object: {file_id}"]
    report = run("check", "--json")
    assert report.returncode == 1
    assert json.loads(report.stdout)["rows_without_objects"] == [file_id]


def test_check_warns_about_purposes_outside_the_setting_without_failing(samples):
    """A store shared with a Llama Stack server that knows only assistants and batch: `check` under
    that restriction points at the rows such a server could not list, and still agrees."""
    ok("upload", samples / "a.txt", "-p", "assistants")
    ok("upload", samples / "b.jsonl", "-p", "user_data")
    ok("upload", samples / "b.jsonl", "-p", "user_data")
    ok("upload", samples / "a.txt", "-p", "vision")
    restricted = {"S3FILESFS_PURPOSES": "assistants,batch"}
    result = run("check", env=restricted)
    assert result.returncode == 0
    assert result.stdout.decode() == "bucket and table agree\n"
    warning = ("warning: the table holds files whose purpose the purposes setting (assistants, batch) does not "
               "include: user_data (2), vision (1); a Llama Stack server sharing the table that does not know "
               "these purposes fails to list any file (see 'purposes' in docs/configuration.md)\n")
    assert result.stderr.decode() == warning
    report = run("check", "--json", env=restricted)
    assert report.returncode == 0 and report.stderr.decode() == warning
    assert json.loads(report.stdout) == {"clean": True, "rows_without_objects": [], "objects_without_rows": [],
                                         "size_mismatches": [], "warnings": [warning[len("warning: "):-1]]}
    quiet = run("-q", "check", "--json", env=restricted)
    assert (quiet.returncode, quiet.stderr) == (0, b"")
    assert json.loads(quiet.stdout)["warnings"] == [warning[len("warning: "):-1]]
    # Unrestricted, nothing to say; with a disagreement as well, the exit status is the disagreement's.
    assert run("check").stderr == b""
    stray = json.loads(ok("upload", samples / "a.txt", "-p", "evals", "--json"))["id"]
    (Path(os.environ["XDG_DATA_HOME"]) / "s3filesfs" / "local" / "objects" / stray).unlink()
    both = run("check", env=restricted)
    assert both.returncode == 1 and "evals (1)" in both.stderr.decode()
    assert both.stdout.decode().splitlines() == ["bucket and table disagree:", f"  row without object: {stray}"]


# --- exit codes -------------------------------------------------------------------------------


def test_unknown_id_exits_1(samples):
    unknown = "file-" + "0" * 32
    for command in (["info", unknown], ["cat", unknown], ["rm", unknown]):
        result = run(*command)
        assert result.returncode == 1, command
        assert result.stderr.decode().strip() == f"error: File '{unknown}' not found"
        assert result.stdout == b""


def test_rm_deletes_what_it_can_and_exits_1_for_the_rest(samples):
    file_id = json.loads(ok("upload", samples / "a.txt", "-p", "assistants", "--json"))["id"]
    result = run("rm", "file-" + "0" * 32, file_id, "--json")
    assert result.returncode == 1
    assert json.loads(result.stdout) == {"id": file_id, "object": "file", "deleted": True}
    assert json.loads(ok("ls", "--json"))["data"] == []


def test_bad_expires_after_exits_1_and_uploads_nothing(samples):
    result = run("upload", samples / "a.txt", "-p", "batch", "--expires-after", "10")
    assert result.returncode == 1
    assert "expires_after.seconds: Input should be greater than or equal to 3600" in result.stderr.decode()
    assert json.loads(ok("ls", "--json"))["data"] == []


def test_cat_to_a_path_that_cannot_be_written_exits_1(samples, tmp_path):
    file_id = json.loads(ok("upload", samples / "a.txt", "-p", "assistants", "--json"))["id"]
    target = tmp_path / "no-such-folder" / "out.txt"
    result = run("cat", file_id, "-o", target)
    assert result.returncode == 1, result.stderr.decode()
    assert result.stderr.decode() == f"error: cannot write {target}: No such file or directory\n"
    assert not target.parent.exists()


def test_unreadable_input_file_exits_1(tmp_path):
    result = run("upload", tmp_path / "no-such-file.txt", "-p", "batch")
    assert result.returncode == 1
    assert "no-such-file.txt" in result.stderr.decode()


@pytest.mark.parametrize("args, complaint", [
    (["upload", "{a}", "--purpose", "training"], "Invalid value for '--purpose'"),
    (["upload", "{a}"], "Missing option '--purpose'"),
    (["upload", "{a}", "-p", "batch", "--expires-after", "soon"], "Invalid value for '--expires-after'"),
    (["upload", "-", "-p", "batch"], "uploading standard input needs --filename"),
    (["upload", "{a}", "{a}", "-p", "batch", "--filename", "x"], "--filename works with a single file"),
    (["ls", "--limit", "0"], "Invalid value for '--limit'"),
    (["ls", "--order", "random"], "Invalid value for '--order'"),
    (["rm"], "Missing argument"),
    (["frobnicate"], "No such command 'frobnicate'"),
])
def test_usage_errors_exit_2(samples, args, complaint):
    result = run(*[arg.format(a=samples / "a.txt") for arg in args])
    assert result.returncode == 2
    assert complaint in result.stderr.decode()
    if args[0] == "upload":
        assert not (samples.parent / "data" / "s3filesfs" / "local" / "metadata.db").exists()


def test_bad_config_exits_1_with_one_line_naming_the_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("bucket_name: files\nauto_create: true\n")
    result = run("--config", path, "ls")
    assert result.returncode == 1
    assert result.stderr.decode() == (f"error: config error in {path}: unknown key 'auto_create' "
                                      "(did you mean 'auto_create_bucket'?)\n")
    missing = run("--config", tmp_path / "missing.yaml", "ls")
    assert missing.returncode == 1
    assert "does not exist" in missing.stderr.decode()


def test_unreachable_storage_exits_3(samples, tmp_path):
    env = {"AWS_ACCESS_KEY_ID": "AKIAEXAMPLEKEY123456", "AWS_SECRET_ACCESS_KEY": "secret-that-stays-hidden"}
    endpoint = f"http://127.0.0.1:{closed_port()}"
    common = ["--bucket", "files", "--endpoint-url", endpoint, "--db-path", tmp_path / "files.db"]
    result = run(*common, "upload", samples / "a.txt", "-p", "batch", env=env)
    assert result.returncode == 3, result.stderr.decode()
    stderr = result.stderr.decode()
    assert f"S3 endpoint {endpoint} is unreachable" in stderr
    assert "secret-that-stays-hidden" not in stderr
    assert "Traceback" not in stderr
    # Listing checks the bucket too, rather than answer from a table it cannot vouch for.
    listing = run(*common, "ls", "--json", env=env)
    assert listing.returncode == 3 and listing.stdout == b""
    assert f"S3 endpoint {endpoint} is unreachable" in listing.stderr.decode()


# --- against a real S3 server -----------------------------------------------------------------


@pytest.fixture
def server_config(s3_server, tmp_path):
    bucket = s3_server.new_bucket_name()
    values = s3_server.settings_values(bucket, aws_session_token="session-token-value-9876",
                                       metadata_store={"type": "sqlite", "db_path": str(tmp_path / "s3.db")})
    path = tmp_path / "s3.yaml"
    path.write_text(yaml.safe_dump(values))
    return path, bucket


def test_session_against_the_s3_server(server_config, samples, s3_server, tmp_path):
    path, bucket = server_config
    created = json_documents(ok("--config", path, "upload", samples / "a.txt", samples / "c.bin",
                                "-p", "fine-tune", "--json"))
    ids = [file["id"] for file in created]
    client = s3_server.client()
    assert sorted(item["Key"] for item in client.list_objects_v2(Bucket=bucket)["Contents"]) == sorted(ids)
    assert client.get_object(Bucket=bucket, Key=ids[0])["Body"].read() == b"alpha\n"
    listing = json.loads(ok("--config", path, "ls", "--json"))
    assert_list_object(listing)
    assert {item["id"] for item in listing["data"]} == set(ids)
    target = tmp_path / "copy.bin"
    ok("--config", path, "cat", ids[1], "-o", target)
    assert target.read_bytes() == (samples / "c.bin").read_bytes()
    assert ok("--config", path, "check").strip() == "bucket and table agree"
    ok("--config", path, "rm", ids[1])
    assert [item["Key"] for item in client.list_objects_v2(Bucket=bucket)["Contents"]] == [ids[0]]
    assert ok("--config", path, "check").strip() == "bucket and table agree"


def test_config_show_masks_the_secrets(server_config, s3_server, tmp_path):
    path, bucket = server_config
    out = ok("--config", path, "config", "show")
    assert out.startswith(f"# s3filesfs configuration in effect (s3 backend), from {path}\n# Secrets are masked")
    shown = yaml.safe_load(out)
    assert shown["bucket_name"] == bucket
    assert shown["endpoint_url"] == s3_server.endpoint_url
    assert shown["metadata_store"] == {"type": "sqlite", "db_path": str(tmp_path / "s3.db")}
    assert shown["aws_secret_access_key"] == "********"
    assert shown["aws_session_token"] == "********"
    for secret in (SECRET_KEY, "session-token-value-9876"):
        assert secret not in out
    # Flags show through, secrets stay hidden however they arrive.
    out = ok("--config", path, "--prefix", "team", "config", "show",
             env={"S3FILESFS_AWS_SECRET_ACCESS_KEY": "another-secret-from-env"})
    assert yaml.safe_load(out)["prefix"] == "team/"
    assert "another-secret-from-env" not in out and SECRET_KEY not in out
    shown = json.loads(ok("--config", path, "config", "show", "--json"))
    assert (shown["backend"], shown["source"]) == ("s3", str(path))
    assert shown["config"]["aws_session_token"] == "********"


def test_config_show_on_a_fresh_machine(tmp_path):
    out = ok("config", "show")
    assert out.startswith("# s3filesfs configuration in effect (local backend), from defaults")
    assert "Secrets are masked" not in out
    shown = yaml.safe_load(out)
    assert shown["bucket_name"] is None
    assert shown["metadata_store"]["db_path"] == str(tmp_path / "data" / "s3filesfs" / "local" / "metadata.db")
    assert json.loads(ok("config", "show", "--json"))["backend"] == "local"


def test_config_show_output_loads_back_as_the_same_config(server_config, tmp_path):
    """What `config show` prints is a config file: keys it lists are keys the file accepts."""
    path, bucket = server_config
    flags = ["--prefix", "team"]
    env = {"S3FILESFS_UPLOAD_PART_SIZE_MB": "16", "S3FILESFS_SYNC_WORKERS": "2",
           "XDG_RUNTIME_DIR": str(tmp_path / "run")}
    shown = ok("--config", path, *flags, "config", "show", env=env)
    pasted = tmp_path / "pasted.yaml"
    pasted.write_text(shown)
    again = ok("--config", pasted, "config", "show")
    # The same settings, in the same words; only the header's "from" line differs.
    assert again.splitlines()[2:] == shown.splitlines()[2:]
    loaded = yaml.safe_load(again)
    assert loaded["upload"]["part_size_mb"] == 16 and loaded["sync"]["workers"] == 2
    assert loaded["prefix"] == "team/"
    assert loaded["api"]["socket"] == str(tmp_path / "run" / "s3filesfs" / "api.sock")
    assert loaded["mount"]["staging_dir"] == str(tmp_path / "data" / "s3filesfs" / "staging")
    assert json.loads(ok("--config", pasted, "config", "show", "--json"))["config"] == loaded


# --- logs: levels, and no secret at any level ---------------------------------------------------

API_KEY = "api-key-value-5432-never-logged"


@pytest.fixture
def secret_config(s3_server, tmp_path):
    """A bucket on the S3 server with a secret key, a session token and a TCP API key configured."""
    bucket = s3_server.new_bucket_name()
    values = s3_server.settings_values(bucket, aws_session_token="session-token-value-9876",
                                       metadata_store={"type": "sqlite", "db_path": str(tmp_path / "s3.db")},
                                       api={"listen": "127.0.0.1:1", "api_key_env": "S3FILESFS_TEST_API_KEY"})
    path = tmp_path / "secret.yaml"
    path.write_text(yaml.safe_dump(values))
    return path, {"S3FILESFS_TEST_API_KEY": API_KEY}


SECRETS = (SECRET_KEY, "session-token-value-9876", API_KEY)


@pytest.mark.parametrize("http_debug", [False, True], ids=["debug", "debug-http"])
def test_debug_output_never_shows_a_secret(secret_config, samples, tmp_path, http_debug):
    path, env = secret_config
    flags = ["--config", path, "--debug", *(["--debug-http"] if http_debug else [])]
    outputs = []
    upload = run(*flags, "upload", samples / "a.txt", samples / "c.bin", "-p", "batch", env=env)
    outputs.append(upload)
    ids = FILE_ID.findall(upload.stdout.decode())
    assert upload.returncode == 0 and len(ids) == 2, upload.stderr.decode()[-2000:]
    for args in (["ls"], ["ls", "--json"], ["info", ids[0]], ["cat", ids[0]], ["check"], ["rm", ids[0]],
                 ["config", "show"]):
        outputs.append(run(*flags, *args, env=env))
        assert outputs[-1].returncode == 0, (args, outputs[-1].stderr.decode()[-2000:])
    stderr = b"".join(o.stderr for o in outputs).decode()
    everything = stderr + b"".join(o.stdout for o in outputs).decode()
    for secret in SECRETS:
        assert secret not in everything
    assert "DEBUG s3filesfs.cli: settings from" in stderr  # --debug is on
    if http_debug:
        # The requests were logged, headers and all, with their credentials blotted out.
        assert "DEBUG botocore.endpoint: Sending http request" in stderr
        assert "'X-Amz-Security-Token': b'****'" in stderr and "'Authorization': b'****'" in stderr
        assert "x-amz-security-token:****" in stderr
    else:
        assert not re.search(r"DEBUG (botocore|boto3|urllib3|s3transfer)", stderr)


def test_redaction_of_credential_shaped_text():
    from s3filesfs import logs

    logs.protect("a-registered-secret-value", "short")
    text = logs.redact("token a-registered-secret-value; Authorization: Bearer abc.def\n"
                       "headers={'Authorization': b'AWS4-HMAC-SHA256 Credential=AKIA/x, Signature=ff'}\n"
                       "<SecretAccessKey>wJalr</SecretAccessKey> aws_session_token=FQoG http://u:pw@h/ short")
    for value in ("a-registered-secret-value", "abc.def", "AKIA", "wJalr", "FQoG", "pw@"):
        assert value not in text
    assert "short" in text  # too short to be replaced wherever it occurs


@pytest.mark.parametrize("url", ["http://admin:hunter2-secret@127.0.0.1:1", "admin:hunter2-secret@127.0.0.1:1",
                                 "http://127.0.0.1:1/?X-Amz-Security-Token=hunter2-secret"])
def test_a_secret_in_endpoint_url_never_reaches_the_terminal(url, tmp_path):
    for args in (["ls"], ["config", "show"], ["--debug", "ls"]):
        result = run("--bucket", "files", "--endpoint-url", url, *args)
        assert result.returncode == 1
        assert "endpoint_url" in result.stderr.decode()
        assert b"hunter2-secret" not in result.stderr + result.stdout


def test_quiet_and_verbose(samples):
    assert run("upload", samples / "a.txt", "-p", "batch").stderr == b""
    verbose = run("-v", "upload", samples / "b.jsonl", "-p", "batch")
    assert verbose.returncode == 0
    assert re.search(r"INFO s3filesfs.cli: uploaded .*b.jsonl as file-[0-9a-f]{32} \(34 bytes\)",
                     verbose.stderr.decode())
    assert "(more: s3filesfs ls --after" in run("ls", "--limit", "1").stderr.decode()
    quiet = run("-q", "ls", "--limit", "1")
    assert quiet.returncode == 0 and quiet.stderr == b"" and len(quiet.stdout.splitlines()) == 2
    clash = run("-q", "--debug", "ls")
    assert clash.returncode == 2 and "cannot be combined" in clash.stderr.decode()


# --- a missing bucket ---------------------------------------------------------------------------


def test_a_missing_bucket_fails_every_command_that_works_on_files(s3_server, samples, tmp_path):
    bucket = s3_server.new_bucket_name()
    client = s3_server.client()
    client.create_bucket(Bucket=bucket)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(s3_server.settings_values(
        bucket, auto_create_bucket=False, metadata_store={"type": "sqlite", "db_path": str(tmp_path / "s3.db")})))
    file_id = FILE_ID.search(ok("--config", path, "upload", samples / "a.txt", "-p", "batch")).group()
    # The bucket goes away behind the table's back: every command says so, none answers from the table.
    client.delete_object(Bucket=bucket, Key=file_id)
    client.delete_bucket(Bucket=bucket)
    message = (f"error: S3 bucket '{bucket}' does not exist. Either create the bucket manually or set "
               "'auto_create_bucket: true' in your configuration.\n")
    for args in (["ls"], ["ls", "--json"], ["info", file_id], ["info", file_id, "--json"], ["gc"], ["cat", file_id],
                 ["rm", file_id], ["check"], ["upload", samples / "a.txt", "-p", "batch"]):
        result = run("--config", path, *args)
        assert (result.returncode, result.stdout, result.stderr.decode()) == (1, b"", message), args


# --- pipes, Ctrl-C, terminals -------------------------------------------------------------------


def test_upload_into_a_reader_that_goes_away_uploads_every_file_and_exits_141(tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    files = [folder / f"{n:02}.txt" for n in range(40)]
    for n, file in enumerate(files):
        file.write_text(f"body {n}\n")
    # `s3filesfs upload many/*.txt | head -1`: one line read, then the pipe is closed.
    process = subprocess.Popen([str(SCRIPT), "upload", *map(str, files), "-p", "batch"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, env=dict(os.environ))
    first = FILE_ID.search(process.stdout.readline().decode()).group()
    process.stdout.close()
    assert process.wait(timeout=60) == 141
    assert process.stderr.read() == b""
    process.stderr.close()
    listed = json.loads(ok("ls", "--json"))["data"]
    assert len(listed) == 40 and first in {item["id"] for item in listed}
    assert sorted(item["filename"] for item in listed) == [f.name for f in files]


def test_rm_into_a_closed_pipe_deletes_every_file_and_exits_141(samples):
    ids = [FILE_ID.search(ok("upload", samples / "a.txt", "-p", "batch")).group() for _ in range(3)]
    # `s3filesfs rm ID1 ID2 ID3 | head -0`: the reader is gone before the first line.
    process = subprocess.Popen([str(SCRIPT), "rm", *ids], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env=dict(os.environ))
    process.stdout.close()
    assert process.wait(timeout=60) == 141
    assert process.stderr.read() == b""
    process.stderr.close()
    assert json.loads(ok("ls", "--json"))["data"] == []


def test_ls_into_a_closed_pipe_is_not_an_error(samples):
    ok("upload", samples / "a.txt", "-p", "batch")
    process = subprocess.Popen([str(SCRIPT), "ls"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env=dict(os.environ))
    process.stdout.close()
    assert process.wait(timeout=60) == 0
    assert process.stderr.read() == b""
    process.stderr.close()


def test_ctrl_c_exits_130_and_registers_nothing(tmp_path):
    process = subprocess.Popen([str(SCRIPT), "upload", "-", "--filename", "big.bin", "-p", "batch"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env=dict(os.environ))
    process.stdin.write(os.urandom(3 * 1024 * 1024))
    process.stdin.flush()
    # Wait until the body is being written into the store, then press Ctrl-C.
    tmp = tmp_path / "data" / "s3filesfs" / "local" / "tmp"
    deadline = time.monotonic() + 30
    while not (tmp.is_dir() and any(p.stat().st_size for p in tmp.iterdir())):
        assert time.monotonic() < deadline, "the upload never started"
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=30) == 130
    assert process.stderr.read().decode() == "Aborted!\n"
    assert process.stdout.read() == b""
    for stream in (process.stdin, process.stdout, process.stderr):
        stream.close()
    assert list(tmp.iterdir()) == []
    assert json.loads(ok("ls", "--json"))["data"] == []


def _read_terminal(master: int) -> bytes:
    """Everything a process wrote to its pseudo-terminal, until it closed it; closes ``master``."""
    output = b""
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the process has closed the terminal
            break
        if not data:
            break
        output += data
    os.close(master)
    return output


def run_on_terminal(*args) -> tuple[int, bytes, str]:
    """Run the command with standard output on a pseudo-terminal: (exit code, output, stderr)."""
    master, slave = pty.openpty()
    process = subprocess.Popen([str(SCRIPT), *map(str, args)], stdout=slave, stderr=subprocess.PIPE,
                               stdin=subprocess.DEVNULL, env=dict(os.environ))
    os.close(slave)
    output = _read_terminal(master)
    code = process.wait(timeout=60)
    stderr = process.stderr.read().decode()
    process.stderr.close()
    return code, output.replace(b"\r\n", b"\n"), stderr


def test_cat_refuses_binary_content_on_a_terminal(samples, tmp_path):
    binary = ok("upload", samples / "c.bin", "-p", "batch").strip()
    text = ok("upload", samples / "b.jsonl", "-p", "batch").strip()
    code, output, stderr = run_on_terminal("cat", binary)
    assert (code, output) == (1, b"")
    assert stderr == (f"error: {binary} holds binary data, which can upset a terminal: use -o PATH, "
                      "redirect the output, or add --force\n")
    assert run_on_terminal("cat", text) == (0, (samples / "b.jsonl").read_bytes(), "")
    no_newlines = bytes(b for b in range(256) if b != 10) * 4
    forced = ok("upload", "-", "--filename", "x.bin", "-p", "batch", stdin=no_newlines).strip()
    assert run_on_terminal("cat", forced, "--force") == (0, no_newlines, "")
    code, output, _ = run_on_terminal("cat", binary, "-o", tmp_path / "copy.bin")
    assert (code, output) == (0, b"")
    assert (tmp_path / "copy.bin").read_bytes() == (samples / "c.bin").read_bytes()
    assert run("cat", binary).stdout == (samples / "c.bin").read_bytes()  # into a pipe: as asked


def test_upload_prints_a_row_on_a_terminal_and_the_id_into_a_pipe(samples):
    code, output, stderr = run_on_terminal("upload", samples / "a.txt", "-p", "batch")
    assert (code, stderr) == (0, "")
    file_id, size, unit, purpose, name = output.decode().split()
    assert FILE_ID.fullmatch(file_id) and (size, unit, purpose, name) == ("6", "B", "batch", "a.txt")
    piped = ok("upload", samples / "a.txt", "-p", "batch")
    assert FILE_ID.fullmatch(piped.strip()) and piped.endswith("\n") and len(piped.split()) == 1


def test_info_of_something_that_is_not_an_id_says_so():
    for command in (["info", "nonsense"], ["cat", "nonsense"], ["rm", "nonsense"]):
        result = run(*command)
        assert result.returncode == 1, command
        assert result.stderr.decode() == ("error: 'nonsense' is not a file id (ids are 'file-' and 32 hex digits; "
                                          "`s3filesfs ls` lists them)\n")


# --- PostgreSQL as the metadata store ------------------------------------------------------------


@pytest.fixture
def postgres_config(postgres_server, s3_server, tmp_path):
    """A bucket on the S3 server and the metadata in PostgreSQL, configured with the seed's keys."""
    location = postgres_server.new_role()
    bucket = s3_server.new_bucket_name()
    values = s3_server.settings_values(bucket, metadata_store={
        "type": "postgres", "host": location.host, "port": "${env.TEST_PG_PORT:=5432}", "db": location.db,
        "user": location.user, "password": "${env.TEST_PG_PASSWORD}"})
    path = tmp_path / "pg.yaml"
    path.write_text(yaml.safe_dump(values))
    return path, location, {"TEST_PG_PORT": str(location.port), "TEST_PG_PASSWORD": location.password}


def test_session_with_the_metadata_in_postgresql(postgres_config, samples):
    path, location, env = postgres_config
    flags = ["--config", path, "--debug"]
    outputs = [run(*flags, "upload", samples / "a.txt", samples / "b.jsonl", "-p", "batch", env=env)]
    ids = FILE_ID.findall(outputs[0].stdout.decode())
    assert outputs[0].returncode == 0 and len(ids) == 2, outputs[0].stderr.decode()[-2000:]
    for args in (["ls", "--json"], ["cat", ids[0]], ["check"], ["rm", ids[1]], ["config", "show"]):
        outputs.append(run(*flags, *args, env=env))
        assert outputs[-1].returncode == 0, (args, outputs[-1].stderr.decode()[-2000:])
    assert {item["id"] for item in json.loads(outputs[1].stdout)["data"]} == set(ids)
    assert outputs[2].stdout == b"alpha\n"
    shown = yaml.safe_load(outputs[-1].stdout)["metadata_store"]
    assert shown == {"type": "postgres", "host": location.host, "port": location.port, "db": location.db,
                     "user": location.user, "password": "********", "pool_size": 5, "max_overflow": 10,
                     "pool_recycle": -1}
    everything = b"".join(o.stdout + o.stderr for o in outputs).decode()
    assert f"database postgresql://{location.user}@{location.host}:{location.port}/{location.db}" in everything
    assert location.password not in everything
    # The rows are in PostgreSQL, where another host would see them.
    remaining = json.loads(ok("--config", path, "ls", "--json", env=env))["data"]
    assert [item["id"] for item in remaining] == [ids[0]]


def test_postgresql_that_cannot_be_reached_or_refuses_the_password_exits_3(postgres_config, samples):
    path, location, env = postgres_config
    database = f"postgresql://{location.user}@{location.host}:{{port}}/{location.db}"
    port = closed_port()
    unreachable = run("--config", path, "--debug", "ls", env={**env, "TEST_PG_PORT": str(port)})
    assert unreachable.returncode == 3, unreachable.stderr.decode()
    stderr = unreachable.stderr.decode()
    assert f"metadata database {database.format(port=port)} is unreachable (open)" in stderr
    assert location.password not in stderr and "Traceback" not in stderr
    wrong = "wrong-password-that-stays-hidden"
    refused = run("--config", path, "--debug", "ls", env={**env, "TEST_PG_PASSWORD": wrong})
    assert refused.returncode == 3, refused.stderr.decode()
    stderr = refused.stderr.decode()
    assert f"metadata database {database.format(port=location.port)} failed (open)" in stderr
    assert "password authentication failed" in stderr
    assert wrong not in stderr and location.password not in stderr and "Traceback" not in stderr


def run_with_stderr_on_terminal(*args, stdout_path: Path | None = None) -> tuple[int, str]:
    """Run the command with standard error on a pseudo-terminal (and standard output there too, or
    into ``stdout_path``): (exit code, what the terminal showed)."""
    master, slave = pty.openpty()
    stdout = open(stdout_path, "wb") if stdout_path else slave
    process = subprocess.Popen([str(SCRIPT), *map(str, args)], stdout=stdout, stderr=slave,
                               stdin=subprocess.DEVNULL, env=dict(os.environ))
    os.close(slave)
    if stdout_path:
        stdout.close()
    shown = _read_terminal(master)
    return process.wait(timeout=60), shown.decode("utf-8", "replace")


def percentages(shown: str) -> list[int]:
    return [int(n) for n in re.findall(r"(\d+)%", shown)]


def test_large_downloads_show_progress_on_a_terminal_that_does_not_get_the_content(tmp_path):
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(cli.PROGRESS_THRESHOLD + 1024 * 1024))
    # upload shows the same bar, which `cat` mirrors.
    code, shown = run_with_stderr_on_terminal("upload", big, "-p", "batch", stdout_path=tmp_path / "id")
    assert code == 0 and "big.bin" in shown and percentages(shown)[-1] == 100
    big_id = (tmp_path / "id").read_text().strip()
    small_id = ok("upload", "-", "--filename", "small.bin", "-p", "batch", stdin=os.urandom(4096)).strip()

    # cat -o: the bar, frame by frame up to 100%, labelled with the file's name; the file arrives whole.
    code, shown = run_with_stderr_on_terminal("cat", big_id, "-o", tmp_path / "copy.bin")
    assert code == 0
    assert (tmp_path / "copy.bin").read_bytes() == big.read_bytes()
    assert "big.bin" in shown and shown.count("\r") >= 5
    seen = percentages(shown)
    assert seen[-1] == 100 and seen == sorted(seen) and len(set(seen)) >= 5, seen

    # cat into a file (or a pipe) while standard error is a terminal: the same bar.
    code, shown = run_with_stderr_on_terminal("cat", big_id, stdout_path=tmp_path / "redirected.bin")
    assert code == 0 and (tmp_path / "redirected.bin").read_bytes() == big.read_bytes()
    assert "big.bin" in shown and percentages(shown)[-1] == 100

    # No bar: for a small file, with -q, or when the content itself goes to the terminal.
    assert run_with_stderr_on_terminal("cat", small_id, "-o", tmp_path / "small.bin") == (0, "")
    assert run_with_stderr_on_terminal("-q", "cat", big_id, "-o", tmp_path / "quiet.bin") == (0, "")
    assert (tmp_path / "quiet.bin").read_bytes() == big.read_bytes()
    text = b"".join(b"line %07d of a long text file\n" % n for n in range(330_000))
    assert len(text) > cli.PROGRESS_THRESHOLD
    text_id = ok("upload", "-", "--filename", "long.txt", "-p", "batch", stdin=text).strip()
    code, shown = run_with_stderr_on_terminal("cat", text_id)
    assert code == 0 and shown.replace("\r\n", "\n") == text.decode()
    # Nor when standard error is not a terminal: a redirected cat prints nothing but the content.
    result = run("cat", big_id, "-o", tmp_path / "piped.bin")
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")
