"""Common mistakes at the ``tether`` command: one clear line and a status, never a
traceback, and nothing made where it should not be."""

from __future__ import annotations

from pathlib import Path

import pytest

from app import cli


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    try:
        code = cli.main(argv)
    except SystemExit as exc:
        code = int(exc.code or 0)
    err = capsys.readouterr().err.strip()
    return code, err


@pytest.mark.parametrize("argv", [
    ["dlq"], ["usage"], ["admit", "--list"], ["fleet", "--bootstrap", "127.0.0.1:9"],
    ["drain", "--bootstrap", "127.0.0.1:9"],
])
def test_operator_commands_outside_a_data_dir_say_so(
    argv: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TETHER_DATA_DIR", raising=False)
    code, err = run(argv, capsys)
    assert code == 2
    assert err == (f"tether {argv[0]}: var/tether is not a Tether data dir (no metadata.db, "
                   "no keys/): run this where `tether up` ran, or pass --data-dir (env "
                   "TETHER_DATA_DIR) or --metadata-url")
    assert list(tmp_path.iterdir()) == []  # no empty database made here


@pytest.mark.parametrize(("argv", "wanted"), [
    (["--max-tokens", "-3"], "argument --max-tokens: -3 is below the minimum of 0"),
    (["--timeout", "0"], "argument --timeout: '0' is not a positive number"),
    (["--timeout", "soon"], "argument --timeout: 'soon' is not a number"),
    (["--gateway", "zz"], "--gateway: not a public key (64 hex characters): 'zz'"),
    (["--region", "Not A Region"], "argument --region: "),
])
def test_bad_infer_flags_are_one_line(
    argv: list[str], wanted: str, capsys: pytest.CaptureFixture[str],
) -> None:
    code, err = run(["infer", "--token", "tt_x", "--bootstrap", "127.0.0.1:9", *argv], capsys)
    assert code == 2
    assert err.startswith(f"tether infer: {wanted}") and "\n" not in err, err


def test_a_bad_tether_region_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("TETHER_REGION", "EU WEST")
    code, err = run(["fleet", "--bootstrap", "127.0.0.1:9"], capsys)
    assert code == 2 and err.startswith("tether fleet: argument --region: ") and "\n" not in err


def test_an_unreachable_bootstrap_is_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, err = run(["infer", "--token", "tt_x", "--bootstrap", "127.0.0.1:9",
                     "--timeout", "2"], capsys)
    assert code == 1
    assert err == ("tether infer: no DHT bootstrap node answered (127.0.0.1:9): is the "
                   "network up? (--bootstrap: the one `tether up` prints)")


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith("tether ")


def test_every_flag_has_help() -> None:
    parser = cli.build_parser()
    [subcommands] = [a for a in parser._actions if isinstance(a.choices, dict)]
    assert isinstance(subcommands.choices, dict)
    missing = [
        f"{name} {flag.option_strings[0] if flag.option_strings else flag.dest}"
        for name, sub in subcommands.choices.items()
        if name not in cli.SERVICES  # a service's own parser (tether <service> --help)
        for flag in sub._actions
        if not flag.help and flag.dest != "help"
    ]
    assert missing == []


def test_a_service_whose_bootstrap_does_not_answer_stops_with_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from p2p_transport.dht_rpc.query import QueryError
    from tether import process

    async def body() -> None:
        raise QueryError("no node responded to the query")  # what HyperDht.open raises

    assert process.run_service("worker", body) == 1
    assert capsys.readouterr().err == (
        "tether worker: no DHT bootstrap node answered; is the network up? (--bootstrap: "
        "the one `tether up` prints)\n")
