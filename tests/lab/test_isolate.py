"""``Lab.isolate``: a host that drops everything in and out (a machine that lost power), with
the rules in its own namespace only, so that the others' sends leave them without an error
(a local drop rule would make their ``sendto`` fail with EPERM, which a dead machine does not
cause); ``heal()`` brings it back."""

from __future__ import annotations

import pytest

from tests.lab.test_topology import echo, probe
from tests.lab_env import netlab

pytestmark = pytest.mark.lab


def test_an_isolated_host_is_silent_and_heals(lab: netlab.Lab) -> None:
    a, b, c = lab.add_host("a"), lab.add_host("b"), lab.add_host("c")
    at_a, at_c = echo(lab, a), echo(lab, c)
    lab.isolate(a)
    cut, other = probe(b, at_a, at_c, tries=1, timeout=0.5)
    assert cut["answer"] is None and other["answer"] is not None
    assert cut.get("error") == "timed out", cut  # sent from b (no EPERM); a dropped it
    assert not b.sh(["nft", "list", "ruleset"]).strip()  # no rule outside a
    lab.heal()
    assert probe(b, at_a)[0]["answer"] is not None
