"""The ``sync:`` and ``api:`` configuration sections, and the temporary-name rule the daemon uses."""

from pathlib import Path

import pytest

from s3filesfs import config
from s3filesfs.errors import ConfigError
from s3filesfs.model import is_temporary_name


def load(tmp_path, text):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return config.load(path)


def test_defaults():
    settings = config.load()
    assert settings.sync_watch_dir == Path.home() / "S3Files"
    assert (settings.sync_settle_seconds, settings.sync_workers, settings.sync_delete,
            settings.sync_max_retries) == (2.0, 4, False, 8)
    assert settings.api_listen is None and settings.api_api_key_env is None


def test_sections_are_read(tmp_path):
    settings = load(tmp_path, "sync:\n  watch_dir: ~/Drop\n  settle_seconds: 0.5\n  workers: 8\n"
                              "  delete: yes\n  max_retries: 3\n"
                              "api:\n  socket: /tmp/x.sock\n  listen: 127.0.0.1:8321\n  api_key_env: MY_KEY\n")
    assert settings.sync_watch_dir == Path.home() / "Drop"
    assert settings.sync_settle_seconds == 0.5 and settings.sync_workers == 8
    assert settings.sync_delete is True and settings.sync_max_retries == 3
    assert settings.api_socket_path == Path("/tmp/x.sock")
    assert settings.api_listen == "127.0.0.1:8321" and settings.api_api_key_env == "MY_KEY"
    assert config.load(tmp_path / "config.yaml").masked()["api"]["api_key_env"] == "MY_KEY"


def test_environment_and_flags_override(tmp_path, monkeypatch):
    monkeypatch.setenv("S3FILESFS_SYNC_WORKERS", "2")
    assert config.load().sync_workers == 2
    assert config.load(flags={"sync_watch_dir": str(tmp_path), "sync_delete": True}).sync_delete is True


@pytest.mark.parametrize("text, message", [
    ("sync:\n  watchdir: /x\n", "unknown key 'sync.watchdir' (did you mean 'sync.watch_dir'?)"),
    ("api:\n  sock: /x\n", "unknown key 'api.sock' (did you mean 'api.socket'?)"),
    ("snyc:\n  workers: 2\n", "unknown key 'snyc' (did you mean 'sync'?)"),
    ("sync:\n  workers: 0\n", "sync.workers must be between 1 and 64"),
    ("sync:\n  workers: many\n", "sync.workers must be a whole number"),
    ("sync:\n  settle_seconds: soon\n", "sync.settle_seconds must be a number"),
    ("sync:\n  settle_seconds: 0\n", "sync.settle_seconds must be between"),
    ("sync:\n  delete: maybe\n", "sync.delete must be true or false"),
    ("sync:\n  max_retries: -1\n", "sync.max_retries must be between 0 and 1000"),
    ("sync: [1]\n", "sync must be a mapping"),
    ("api:\n  listen: localhost\n  api_key_env: K\n", "api.listen must be HOST:PORT"),
    ("api:\n  listen: 127.0.0.1:99999\n  api_key_env: K\n", "api.listen must be HOST:PORT"),
    ("api:\n  listen: 127.0.0.1:8000\n", "api.listen needs api.api_key_env"),
])
def test_mistakes_name_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text)
    assert message in caught.value.message


@pytest.mark.parametrize("name", [".hidden", ".notes.txt.swp", "notes.txt~", "a.swp", "b.tmp", "c.part",
                                  "movie.mp4.crdownload", ".photo.jpg.a1B2c3", "X.TMP"])
def test_temporary_names(name):
    assert is_temporary_name(name)


@pytest.mark.parametrize("name", ["data.jsonl", "report.pdf", "partial.txt", "tmp", "swp.csv", "a~b", ""])
def test_real_names(name):
    assert not is_temporary_name(name)
