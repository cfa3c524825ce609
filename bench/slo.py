"""The figures of docs/slo.md: what a client of ``tether up`` sees, per model tier.

Starts ``tether up --metrics`` (every service its own process, as a user runs it), then
sends requests to the gateway's OpenAI-style HTTP API from client threads:

* ``cpu-textgen``  ``kjv-textgen``, streamed (server-sent events), ``--tokens`` tokens,
  greedy: time to first token (the first event carrying text) and to the last event;
* ``embeddings``   ``all-minilm-l6-v2``, one text per request: the answer's latency
  (its first token is its whole answer).

For each tier and concurrency it reports p50/p95 time to first token and request
latency, and the success ratio; then the gateway's own SLIs read back from its metrics
port (the success, throttle and stale-cache counts the rules in deploy/prometheus/
record). The last line printed is JSON with every figure.

    python bench/slo.py [--requests 40] [--tokens 32] [--concurrency 1 4]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PROMPTS = ["and the lord spake unto moses, saying", "in the beginning", "and god said",
           "blessed are the meek", "the lord is my shepherd"]
TIERS = {"cpu-textgen": "kjv-textgen", "embeddings": "all-minilm-l6-v2"}


@dataclass
class Sample:
    ok: bool
    first_s: float = 0.0
    total_s: float = 0.0
    status: int = 0


def start_network(data_dir: Path) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TETHER_LOG_LEVEL": "WARNING",
           "TETHER_RATE": "1000", "TETHER_BURST": "1000"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "up", "--metrics", "--data-dir", str(data_dir)],
        cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    deadline, buf = time.monotonic() + 300, b""
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0 or proc.poll() is not None:
            proc.kill()
            raise SystemExit("bench: tether up did not become ready")
        if select.select([proc.stdout], [], [], left)[0]:
            buf += os.read(proc.stdout.fileno(), 4096)
    return proc, dict(json.loads(buf.split(b"\n", 1)[0]))


def wait_ready(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=5) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"bench: {url} is not ready")


def call(http_url: str, token: str, tier: str, i: int, tokens: int) -> Sample:
    """One request; the times as the client sees them."""
    parts = urllib.parse.urlsplit(http_url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=120)
    prompt = PROMPTS[i % len(PROMPTS)]
    if tier == "cpu-textgen":
        path, body = "/v1/completions", {"model": TIERS[tier], "prompt": prompt,
                                         "max_tokens": tokens, "temperature": 0, "stream": True}
    else:
        path, body = "/v1/embeddings", {"model": TIERS[tier], "input": f"{prompt} {i}"}
    start = time.perf_counter()
    first = None
    try:
        conn.request("POST", path, json.dumps(body), {
            "authorization": f"Bearer {token}", "content-type": "application/json"})
        reply = conn.getresponse()
        if reply.status != 200:
            reply.read()
            return Sample(False, status=reply.status)
        if tier == "cpu-textgen":
            while line := reply.readline():
                if first is None and line.startswith(b"data: {") and b'"text":"' in line:
                    first = time.perf_counter()
        else:
            reply.read()
        end = time.perf_counter()
        return Sample(True, (first or end) - start, end - start, 200)
    except OSError:
        return Sample(False)
    finally:
        conn.close()


def quantile(values: list[float], q: float) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[int(q * 100) - 1]


def run_tier(http_url: str, token: str, tier: str, *, requests: int, concurrency: int,
             tokens: int) -> dict[str, Any]:
    for i in range(3):  # warm: the worker loads the model on its first request
        call(http_url, token, tier, i, tokens)
    with ThreadPoolExecutor(concurrency) as pool:
        samples = list(pool.map(lambda i: call(http_url, token, tier, i, tokens),
                                range(requests)))
    good = [s for s in samples if s.ok]
    first = [s.first_s * 1000 for s in good]
    total = [s.total_s * 1000 for s in good]
    return {
        "tier": tier, "model": TIERS[tier], "concurrency": concurrency, "requests": requests,
        "success": len(good) / requests,
        "ttft_p50_ms": round(quantile(first, 0.50), 1),
        "ttft_p95_ms": round(quantile(first, 0.95), 1),
        "latency_p50_ms": round(quantile(total, 0.50), 1),
        "latency_p95_ms": round(quantile(total, 0.95), 1),
    }


def gateway_slis(metrics_url: str) -> dict[str, float]:
    """The gateway's own counts (what Prometheus scrapes): requests by code, cache lookups
    by result."""
    with urllib.request.urlopen(metrics_url + "/metrics", timeout=10) as reply:
        text = reply.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        for family, key in (("tether_requests_total{", "code"),
                            ("tether_cache_lookups_total{", "result")):
            if line.startswith(family):
                labels, value = line[len(family):].rsplit("} ", 1)
                found = dict(kv.split("=", 1) for kv in labels.split(","))
                name = f"{family[:-1]}:{found[key].strip(chr(34))}"
                out[name] = out.get(name, 0.0) + float(value)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tether-slo-") as tmp:
        proc, ready = start_network(Path(tmp))
        try:
            for url in (*ready["metrics"].values(), ready["http"]):
                wait_ready(url)
            rows = [run_tier(ready["http"], ready["token"], tier, requests=args.requests,
                             concurrency=c, tokens=args.tokens)
                    for tier in TIERS for c in args.concurrency]
            slis = gateway_slis(ready["metrics"]["gateway"])
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=60)
    print(f"{'tier':<12} {'conc':>4} {'ok':>6} {'ttft p50':>9} {'ttft p95':>9} "
          f"{'lat p50':>9} {'lat p95':>9}  (ms)")
    for r in rows:
        print(f"{r['tier']:<12} {r['concurrency']:>4} {r['success']:>6.1%} "
              f"{r['ttft_p50_ms']:>9} {r['ttft_p95_ms']:>9} {r['latency_p50_ms']:>9} "
              f"{r['latency_p95_ms']:>9}")
    print("gateway SLIs:", ", ".join(f"{k}={v:g}" for k, v in sorted(slis.items())))
    print(json.dumps({"tokens": args.tokens, "cpus": os.cpu_count(), "rows": rows,
                      "gateway": slis}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
