"""Expired files removed by the daemon's own timer (expiry.interval_seconds), with real daemon
processes on a real bucket: within the interval, and by one process at a time on a shared database."""

import copy
import re
import signal
import time

import yaml

from s3filesfs import config
from s3filesfs.access import OPERATOR
from s3filesfs.files import FileService, open_service
from tests.helpers import wait_for

INTERVAL = 0.5
REMOVED = re.compile(r"expiry: removed expired file (file-[0-9a-f]{32})")


def plant_expired(service: FileService, count: int, stem: str) -> set[str]:
    """Files that expired an hour ago (written two hours ago, for one hour)."""
    ids = set()
    for number in range(count):
        pending = service.begin(f"{stem}-{number}.txt", "user_data", expires_after=3600,
                                created_at=int(time.time()) - 7200)
        pending.write(b"expired")
        ids.add(pending.commit().id)
    return ids


def removed_in(log_path) -> list[str]:
    return REMOVED.findall(log_path.read_text(errors="replace"))


def test_the_daemon_removes_an_expired_file_within_its_interval(env, daemon_process, tmp_path):
    world = env(expiry={"interval_seconds": INTERVAL})
    proc = daemon_process(world, tmp_path / "daemon.log")
    service = open_service(world.settings())
    keep = service.create(open(__file__, "rb"), "kept.py", "assistants")
    doomed = plant_expired(service, 1, "gone")
    planted = time.monotonic()
    wait_for(lambda: not doomed & set(world.object_keys()), 10, "the expired object to go", interval=0.05)
    took = time.monotonic() - planted
    assert took < INTERVAL + 1.5, took
    assert all(service.metadata.get(file_id, viewer=OPERATOR) is None for file_id in doomed)
    assert set(world.object_keys()) == {keep.id}
    wait_for(lambda: removed_in(tmp_path / "daemon.log") == sorted(doomed), 5, "the removal in the log")
    assert proc.kill(signal.SIGTERM) == 0
    assert service.check().clean


def test_two_daemons_on_one_database_never_both_remove(env, daemon_process, tmp_path, short_dir):
    first = env(expiry={"interval_seconds": INTERVAL})
    # A second daemon on the same bucket and database, with its own socket and drop folder.
    document = yaml.safe_load(first.config_path.read_text())
    document["api"]["socket"] = str(short_dir / "second.sock")
    document["sync"]["watch_dir"] = str(tmp_path / "S3Files-2")
    second = copy.copy(first)
    second.config_path, second.socket = tmp_path / "second.yaml", short_dir / "second.sock"
    second.config_path.write_text(yaml.safe_dump(document))

    assert config.load(second.config_path).bucket_name == config.load(first.config_path).bucket_name == first.bucket
    service = open_service(config.load(first.config_path))
    doomed = plant_expired(service, 40, "early")  # waiting for both when they start
    logs = {"one": tmp_path / "one.log", "two": tmp_path / "two.log"}
    procs = {"one": daemon_process(first, logs["one"]), "two": daemon_process(second, logs["two"])}
    wait_for(lambda: not doomed & set(first.object_keys()), 30, "the expired files to go")
    later = plant_expired(service, 10, "later")  # and while both run
    wait_for(lambda: not later & set(first.object_keys()), 30, "the later ones to go")

    wanted = sorted(doomed | later)
    wait_for(lambda: sorted(removed_in(logs["one"]) + removed_in(logs["two"])) == wanted, 10,
             "every removal in the logs")
    removed = {name: removed_in(path) for name, path in logs.items()}
    # Each file was removed by exactly one process, and only one process swept at all (the lease
    # holder keeps it while it lives).
    assert sorted(removed["one"] + removed["two"]) == wanted
    holder = "one" if removed["one"] else "two"
    other = "two" if holder == "one" else "one"
    assert removed[other] == []

    # The holder stops (SIGTERM): it hands the lease on, and the other takes the job over.
    assert procs[holder].kill(signal.SIGTERM) == 0
    last = plant_expired(service, 3, "last")
    wait_for(lambda: not last & set(first.object_keys()), 10, "the other daemon to take over")
    wait_for(lambda: sorted(removed_in(logs[other])) == sorted(last), 5, "its removals in its log")
    assert procs[other].kill(signal.SIGTERM) == 0
    assert service.check().clean
