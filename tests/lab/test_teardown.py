"""A lab never outlives its test: a failing body, a SIGTERM'd test process and (with
``tools/lab clean``) a SIGKILL'd one all leave no namespace and no process behind."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest

from tests.lab_env import ROOT, netlab, require_lab

pytestmark = pytest.mark.lab

CHILD = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {tools!r})
    import lab as netlab
    lab = netlab.Lab()
    nat = lab.add_nat("home", "random")
    host = lab.add_host("inside", behind=nat)
    lab.run(host, ["sleep", "600"])
    print(lab.prefix, flush=True)
    time.sleep(600)
    """
).format(tools=str(ROOT / "tools"))


def start_child() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    prefix = proc.stdout.readline().strip()
    assert prefix.startswith(netlab.PREFIX), prefix
    assert len(netlab.list_netns_with(prefix)) == 3  # the internet, the NAT router, the host
    return proc, prefix


def test_a_failing_body_leaves_nothing_behind() -> None:
    require_lab()
    with pytest.raises(RuntimeError, match="the test failed"), netlab.Lab() as lab:
        a = lab.add_host("a")
        lab.add_host("b", behind=lab.add_nat("n", "consistent"))
        sleeper = lab.run(a, ["sleep", "600"])
        assert len(lab.leftovers()) == 4  # internet, a, the NAT, b
        raise RuntimeError("the test failed")
    assert lab.leftovers() == []
    assert sleeper.returncode is not None


def test_sigterm_to_the_test_process_still_tears_down() -> None:
    require_lab()
    proc, prefix = start_child()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    proc.stdout.close()  # type: ignore[union-attr]
    assert netlab.list_netns_with(prefix) == []


def test_lab_clean_removes_what_a_killed_run_left() -> None:
    require_lab()
    proc, prefix = start_child()
    proc.kill()  # no handler runs: the namespaces and the sleeper stay
    proc.wait(timeout=60)
    proc.stdout.close()  # type: ignore[union-attr]
    assert len(netlab.list_netns_with(prefix)) == 3
    out = subprocess.run([str(ROOT / "tools" / "lab"), "clean", "--prefix", prefix],
                         capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.count("deleted ") == 3
    assert netlab.list_netns_with(prefix) == []
