"""Fixtures for the mount tests: real FUSE mounts in a subprocess over two backends.

* ``mount``: one mount per test module and backend ("local": the embedded store; "s3": a fresh
  bucket on the session's moto server; "s3-postgres": the same with its metadata on the session's
  PostgreSQL server instead of a SQLite file). Tests share it, so they use unique names
  (``unique()``).
* ``fresh_mount``: a mount of the test's own, for tests that need an empty store.

After every test the store is checked: bucket and table agree and no staging file or multipart
upload was left behind by that test. Without /dev/fuse or fusermount3 the tests are skipped, except
under ``CI=true``, where that is a failure.
"""

import os
import shutil

import pytest

from tests.fs.mounting import Mount
from tests.helpers import lacking

BACKENDS = ["local", "s3"]
# The shared mount also runs on PostgreSQL: every behaviour of the mount on both metadata engines.
SHARED_BACKENDS = [*BACKENDS, "s3-postgres"]


def _fuse_missing() -> str | None:
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is not installed"
    return None


@pytest.fixture(scope="session")
def fuse():
    missing = _fuse_missing()
    if missing:
        lacking(f"FUSE mount tests need FUSE: {missing}")


def _start(request, backend: str) -> Mount:
    postgres = request.getfixturevalue("postgres_server").new_role() if backend == "s3-postgres" else None
    backend = "s3" if postgres is not None else backend
    server = request.getfixturevalue("s3_server") if backend == "s3" else None
    m = Mount(backend, server, postgres=postgres)
    try:
        return m.start()
    except BaseException:
        m.stop()
        shutil.rmtree(m.root, ignore_errors=True)
        raise


@pytest.fixture(scope="module", params=SHARED_BACKENDS)
def mount(request, fuse):
    m = _start(request, request.param)
    yield m
    m.stop()
    shutil.rmtree(m.root, ignore_errors=True)


@pytest.fixture(params=BACKENDS)
def fresh_mount(request, fuse):
    m = _start(request, request.param)
    yield m
    m.stop()
    shutil.rmtree(m.root, ignore_errors=True)


@pytest.fixture(autouse=True)
def _store_agrees(request):
    """Every mount test ends with bucket and table agreeing, and nothing of its own left staged."""
    mounts = [request.getfixturevalue(name) for name in ("mount", "fresh_mount") if name in request.fixturenames]
    baselines = [m.snapshot() for m in mounts]
    yield
    for m, baseline in zip(mounts, baselines, strict=True):
        if m.process is not None:
            m.assert_consistent(baseline)
