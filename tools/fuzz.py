"""Run the fuzz targets of ``tests/fuzz/targets.py`` under atheris (coverage-guided libFuzzer).

    tools/fuzz --all --runs 1000000          every target, a million executions each
    tools/fuzz cenc udx --seconds 60         two targets, a minute each
    tools/fuzz --list                        the target names
    tools/fuzz --write-corpus                rewrite tests/fuzz/corpus/ from the codecs

Each target runs in a process of its own (libFuzzer owns the process) and starts from its
committed seeds (``tests/fuzz/corpus/<target>/``) plus what earlier runs found
(``var/fuzz/corpus/<target>/``). One JSON line per target goes to stdout:
``{"target", "executions", "seconds", "crashes", "coverage"}``; an input that crashed (an
exception other than the decoder's typed error) or hung (``--hang-seconds``) is saved
under ``var/fuzz/crashes/<target>/`` and its path is in ``crashes``. The exit status is 1 if
any target crashed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VAR = ROOT / "var" / "fuzz"

_RUNS = re.compile(rb"^#(\d+)\s+(?:INITED|NEW|REDUCE|pulse|DONE|RELOAD)\b", re.M)
_COV = re.compile(rb"^#\d+\s+\w+\s+cov: (\d+)", re.M)
_DONE = re.compile(rb"^Done (\d+) runs in", re.M)


def _worker(name: str, libfuzzer_args: list[str]) -> None:
    """Inside the target's process: instrument the project's code, hand over to libFuzzer."""
    import logging

    import atheris

    logging.disable(logging.CRITICAL)  # decoders log what they refuse: millions of lines
    with atheris.instrument_imports(include=["p2p_transport", "tether", "gateway", "tests"]):
        from tests.fuzz.targets import TARGETS
    atheris.Setup([sys.argv[0], *libfuzzer_args], TARGETS[name])
    atheris.Fuzz()


def run_target(name: str, *, runs: int | None, seconds: float | None,
               hang_seconds: int) -> dict[str, object]:
    crashes = VAR / "crashes" / name
    work = VAR / "corpus" / name
    crashes.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    seeds = ROOT / "tests" / "fuzz" / "corpus" / name
    args = [f"-artifact_prefix={crashes}/", f"-timeout={hang_seconds}", "-max_len=4096",
            "-print_final_stats=1", "-rss_limit_mb=2048"]
    if runs is not None:
        args.append(f"-runs={runs}")
    if seconds is not None:
        args.append(f"-max_total_time={max(1, round(seconds))}")
    before = set(crashes.iterdir())
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--worker", name, *args, str(work),
         str(seeds)],
        cwd=ROOT, capture_output=True, check=False,
    )
    elapsed = time.monotonic() - started
    log = proc.stdout + proc.stderr
    (VAR / f"{name}.log").write_bytes(log)
    done = _DONE.findall(log)
    stats = _RUNS.findall(log)
    executions = int(done[-1]) if done else (int(stats[-1]) if stats else 0)
    coverage = max((int(c) for c in _COV.findall(log)), default=0)
    found = sorted(str(p.relative_to(ROOT)) for p in set(crashes.iterdir()) - before)
    if proc.returncode != 0 and not found:
        # the process died without libFuzzer saving the input (an import error, a signal)
        path = crashes / f"log-{hashlib.sha1(log).hexdigest()[:12]}.txt"
        path.write_bytes(log)
        found.append(str(path.relative_to(ROOT)))
    return {"target": name, "executions": executions, "seconds": round(elapsed, 1),
            "crashes": found, "coverage": coverage}


def write_corpus() -> None:
    from tests.fuzz.targets import CORPUS, SEEDS

    for name, make in SEEDS.items():
        folder = CORPUS / name
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.iterdir():
            old.unlink()
        for i, seed in enumerate(make()):
            (folder / f"seed-{i:02d}").write_bytes(seed)


def main(argv: list[str]) -> int:
    if argv[:1] == ["--worker"]:
        _worker(argv[1], argv[2:])
        return 0
    from tests.fuzz.targets import TARGETS

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("targets", nargs="*", choices=[[], *TARGETS], metavar="TARGET")
    parser.add_argument("--all", action="store_true", help="every target")
    parser.add_argument("--runs", type=int, help="executions per target")
    parser.add_argument("--seconds", type=float, help="seconds per target")
    parser.add_argument("--hang-seconds", type=int, default=10,
                        help="an input running longer is a hang (default 10)")
    parser.add_argument("--list", action="store_true", help="print the target names")
    parser.add_argument("--write-corpus", action="store_true",
                        help="rewrite tests/fuzz/corpus/ from the codecs and golden vectors")
    opts = parser.parse_args(argv)
    if opts.list:
        print("\n".join(TARGETS))
        return 0
    if opts.write_corpus:
        write_corpus()
        return 0
    names = list(TARGETS) if opts.all else opts.targets
    if not names:
        parser.error("name targets or pass --all")
    if opts.runs is None and opts.seconds is None:
        parser.error("pass --runs N and/or --seconds S")
    crashed = False
    for name in names:
        result = run_target(name, runs=opts.runs, seconds=opts.seconds,
                            hang_seconds=opts.hang_seconds)
        crashed = crashed or bool(result["crashes"])
        print(json.dumps(result), flush=True)
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main(sys.argv[1:]))
