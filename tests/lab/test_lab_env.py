"""A machine that cannot make labs fails the lab tests and says why, unless
TETHER_ALLOW_NO_LAB=1 asks for a skip (which then says why too)."""

from __future__ import annotations

import pytest

from tests import lab_env


@pytest.fixture
def no_lab(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lab_env, "_why", ["lab tests need root (network namespaces, ...)"])


@pytest.mark.usefixtures("no_lab")
def test_missing_capability_fails_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TETHER_ALLOW_NO_LAB", raising=False)
    with pytest.raises(pytest.fail.Exception, match=r"need root.*TETHER_ALLOW_NO_LAB=1 to skip"):
        lab_env.require_lab()


@pytest.mark.usefixtures("no_lab")
def test_opt_out_variable_turns_it_into_a_skip(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TETHER_ALLOW_NO_LAB", "1")
    with pytest.raises(pytest.skip.Exception, match="TETHER_ALLOW_NO_LAB=1: lab tests need root"):
        lab_env.require_lab()
