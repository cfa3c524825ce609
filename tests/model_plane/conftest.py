"""Fixtures of the model-plane tests: metadata stores on SQLite and PostgreSQL, a real
S3-compatible server process, the shipped models, and signed artifact stores.

PostgreSQL: tests read the server's URL from ``TETHER_TEST_POSTGRES_URL`` (``tools/postgres.sh
start`` starts a throwaway cluster and prints it). When the variable is unset the PostgreSQL
tests FAIL and say how to start the server; ``TETHER_ALLOW_NO_POSTGRES=1`` turns that into a
visible skip for a developer without PostgreSQL. Each test gets a fresh database.

S3: MinIO's own server is in no package registry these machines can reach, so the tests start
the server mode of moto (``python -m moto.server``, from PyPI's ``moto[server]``), a real HTTP
S3 implementation, on 127.0.0.1 and a free port, and talk to it with the ``minio`` client.
"""

from __future__ import annotations

import functools
import inspect
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import trio
from model_plane_support import ManualClock, free_port

from tether.artifacts import ArtifactStore, LocalDirectoryStore
from tether.keys import KeyPair
from tether.metadata import MetadataStore

REPO = Path(__file__).resolve().parents[2]
MODELS = REPO / "worker" / "models"
MINILM_DIR = REPO / "var" / "models" / "all-minilm-l6-v2"
SMOLLM2_DIR = REPO / "var" / "models" / "smollm2-135m-instruct"
PG_ENV = "TETHER_TEST_POSTGRES_URL"
PG_HOWTO = (
    f"PostgreSQL tests need {PG_ENV}. Start a throwaway server with `tools/postgres.sh start` "
    f"and run `export {PG_ENV}=$(tools/postgres.sh url)`; or set TETHER_ALLOW_NO_POSTGRES=1 "
    "to skip them on purpose."
)


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run ``async def`` tests of this folder under ``trio.run``."""
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    names = pyfuncitem._fixtureinfo.argnames
    trio.run(functools.partial(pyfuncitem.obj, **{n: pyfuncitem.funcargs[n] for n in names}))
    return True


def postgres_base_url() -> str:
    url = os.environ.get(PG_ENV, "")
    if url:
        return url
    if os.environ.get("TETHER_ALLOW_NO_POSTGRES") == "1":
        pytest.skip(f"TETHER_ALLOW_NO_POSTGRES=1 and {PG_ENV} unset: PostgreSQL not tested")
    pytest.fail(PG_HOWTO)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database; dropped afterwards."""
    base = postgres_base_url()
    name = "tether_test_" + uuid.uuid4().hex[:12]
    plain = base.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    head, _, _ = base.rpartition("/")
    yield f"{head}/{name}"
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MetadataStore]:
    """A migrated metadata store on each database, with a controllable clock."""
    clock = ManualClock()
    if request.param == "sqlite":
        s = MetadataStore.sqlite(tmp_path / "meta.db", clock=clock)
    else:
        s = MetadataStore(request.getfixturevalue("postgres_url"), clock=clock)
    s.migrate()
    s.test_clock = clock  # type: ignore[attr-defined]
    yield s
    s.close()


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server process on 127.0.0.1 (see the module docstring for why moto)."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail("the moto S3 server did not start")
            time.sleep(0.05)  # waiting for a real child process; there is no clock to inject
    yield f"127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def publisher() -> KeyPair:
    return KeyPair.from_seed(b"\x07" * 32)


@pytest.fixture
def local_artifacts(tmp_path: Path, publisher: KeyPair) -> ArtifactStore:
    replicas = [LocalDirectoryStore(tmp_path / f"replica{i}", name=f"r{i}") for i in range(3)]
    return ArtifactStore(replicas, trusted_keys={publisher.public_key})


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The MiniLM ONNX build (too big to commit): built here if it is not there yet."""
    if not (MINILM_DIR / "model.onnx").is_file():
        subprocess.run([sys.executable, str(REPO / "tools" / "build_minilm.py")], check=True)
    return MINILM_DIR


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The SmolLM2 ONNX build (too big to commit): built here if it is not there yet."""
    if not (SMOLLM2_DIR / "verification.json").is_file():
        subprocess.run([sys.executable, str(REPO / "tools" / "build_smollm2.py")], check=True)
    return SMOLLM2_DIR
