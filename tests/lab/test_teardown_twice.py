"""A second SIGTERM (or SIGHUP) while a lab is being torn down does not cut the teardown
short: ``timeout`` and a user's Ctrl-C-then-kill both send one while ``close()`` waits for
a slow process (up to 10 s), and every namespace must still go. And ``tools/lab clean``
removes what a killed lab's PostgreSQL servers left in the temp folder."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from tests.lab_env import ROOT, netlab, require_lab

pytestmark = pytest.mark.lab

CHILD = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {tools!r})
    import lab as netlab
    lab = netlab.Lab()
    host = lab.add_host("slow")
    # a process that ignores SIGTERM: close() waits its grace period, then kills it
    lab.run(host, ["bash", "-c", "trap '' TERM; sleep 600 & wait"])
    print(lab.prefix, flush=True)
    time.sleep(600)
    """
).format(tools=str(ROOT / "tools"))


def test_a_second_signal_during_teardown_does_not_leave_namespaces() -> None:
    require_lab()
    proc = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    prefix = proc.stdout.readline().strip()
    assert len(netlab.list_netns_with(prefix)) == 2  # the internet and the host
    proc.send_signal(signal.SIGTERM)
    time.sleep(1)  # (real time: close() is waiting out the stubborn process's grace period)
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGHUP)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    proc.stdout.close()
    assert netlab.list_netns_with(prefix) == []


def test_lab_clean_removes_a_killed_labs_postgres_folders() -> None:
    require_lab()
    prefix = "tl-c1ea2e-"
    folder = Path(tempfile.gettempdir()) / f"{prefix}pg-db-abc123"
    (folder / "data").mkdir(parents=True)
    other = Path(tempfile.gettempdir()) / "tl-0ther0-pg-db-abc123"  # another lab's: kept
    other.mkdir(exist_ok=True)
    try:
        netlab.clean(prefix)
        assert not folder.exists() and other.exists()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        other.rmdir()
