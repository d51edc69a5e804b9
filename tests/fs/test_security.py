"""The mount's log keeps secrets out at every level, and the mount refuses a runtime folder (where
its pid files go, beside the daemon's socket) that someone else could control."""

import os
import shutil

import pytest

from tests.fs.mounting import Mount
from tests.s3server import SECRET_KEY

SESSION_TOKEN = "mount-session-token-16180"


class DebugMount(Mount):
    """A mount started with --debug (and the given environment), on a bucket signed with a session token."""

    def __init__(self, *args, extra_env=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.extra_env = extra_env or {}

    @property
    def global_args(self) -> list[str]:
        return ["--debug", *super().global_args]

    @property
    def env(self) -> dict:
        return {**super().env, "AWS_SESSION_TOKEN": SESSION_TOKEN, **self.extra_env}


@pytest.mark.parametrize("http_debug", [False, True], ids=["debug", "debug-http"])
def test_mount_log_never_shows_a_secret(fuse, s3_server, http_debug):
    mount = DebugMount("s3", s3_server, extra_env={"S3FILESFS_DEBUG_HTTP": "1"} if http_debug else {})
    try:
        mount.start()
        (mount / "assistants" / "secret-test.txt").write_bytes(b"signed with a session token\n")
        assert (mount / "assistants" / "secret-test.txt").read_bytes() == b"signed with a session token\n"
        listed = mount.cli("ls").stdout
        assert "secret-test.txt" in listed
        assert mount.stop() == 0
        log = mount.log()
        for secret in (SECRET_KEY, SESSION_TOKEN):
            assert secret not in log
        assert "DEBUG s3filesfs.cli: settings from" in log and "INFO s3filesfs.fs.mount: mounting" in log
        if http_debug:
            assert "'X-Amz-Security-Token': b'****'" in log and "'Authorization': b'****'" in log
        else:
            assert "DEBUG botocore" not in log and "DEBUG urllib3" not in log
    finally:
        mount.stop()
        shutil.rmtree(mount.root, ignore_errors=True)


def test_mount_refuses_a_runtime_folder_others_can_write(fuse):
    mount = Mount("local")
    try:
        runtime = mount.root / "run" / "s3filesfs"
        runtime.mkdir(parents=True)
        os.chmod(runtime, 0o777)
        with pytest.raises(AssertionError, match="exited with 1 before mounting"):
            mount.start()
        assert f"error: {runtime} can be written by other users (mode 0777)" in mount.log()
        assert not os.path.ismount(mount.mountpoint)
        assert list(runtime.iterdir()) == []
    finally:
        mount.stop()
        shutil.rmtree(mount.root, ignore_errors=True)
