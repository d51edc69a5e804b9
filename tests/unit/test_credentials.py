"""Wrong credentials against a real S3 server that checks them: a clear error, nothing written."""

import io

import pytest

from s3filesfs import config
from s3filesfs.errors import AccessDenied
from s3filesfs.files import open_service
from tests.s3server import MotoServer


@pytest.fixture(scope="module")
def strict_server():
    try:
        server = MotoServer(require_auth=True).start()
    except Exception as exc:
        pytest.fail(f"could not start the S3 test server: {exc}")
    yield server
    server.stop()


def test_unknown_access_key_is_named_and_nothing_is_registered(strict_server, tmp_path):
    settings = config.load(flags={
        **strict_server.settings_values("team-files"),
        "aws_access_key_id": "AKIAUNKNOWNKEY000001",
        "db_path": str(tmp_path / "files.db"),
    })
    service = open_service(settings)
    with pytest.raises(AccessDenied) as raised:
        service.create(io.BytesIO(b"data"), "a.txt", "assistants")
    message = str(raised.value)
    assert message == ("Access denied to S3 bucket 'team-files': "
                       "the server does not know this access key id")
    assert settings.aws_secret_access_key and settings.aws_secret_access_key not in message
    assert raised.value.exit_code == 1 and raised.value.http_status == 502
    assert service.metadata.all_files() == []


def test_cli_reports_denied_access_with_exit_code_1(strict_server, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(sys.executable).with_name("s3filesfs")
    sample = tmp_path / "a.txt"
    sample.write_text("data")
    result = subprocess.run(
        [str(script), "--bucket", "team-files", "--endpoint-url", strict_server.endpoint_url,
         "--db-path", str(tmp_path / "files.db"), "upload", str(sample), "--purpose", "batch"],
        capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "AWS_ACCESS_KEY_ID": "AKIAUNKNOWNKEY000002",
             "AWS_SECRET_ACCESS_KEY": "wrong-secret-value", "AWS_EC2_METADATA_DISABLED": "true"},
    )
    assert result.returncode == 1, result.stderr
    assert "Access denied to S3 bucket 'team-files'" in result.stderr
    assert "wrong-secret-value" not in result.stderr + result.stdout
