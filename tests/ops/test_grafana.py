"""deploy/grafana/tether-slo.json: a dashboard Grafana can import, whose panels query the
series deploy/prometheus/tether-rules.yml records, one panel or more for every SLI. (The
queries themselves run against a real Prometheus in test_prometheus.py.)"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "tether-slo.json"
RULES = ROOT / "deploy" / "prometheus" / "tether-rules.yml"

#: The SLIs (spec 3.5 and docs/slo.md) and the recorded series that show each.
SLIS = {
    "latency by model": {"tether:request_duration_ms:p50_5m", "tether:request_duration_ms:p95_5m",
                         "tether:first_chunk_ms:p50_5m", "tether:first_chunk_ms:p95_5m"},
    "success rate": {"tether:request_success:ratio_rate5m"},
    "throttle rate": {"tether:request_throttled:ratio_rate5m"},
    "stale-cache rate": {"tether:cache_stale:ratio_rate5m"},
    "error budget": {"tether:request_errors:ratio_rate1h", "tether:request_errors:ratio_rate5m"},
}


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text(encoding="utf-8")))


def panel_queries() -> list[str]:
    """Every panel's PromQL, with the dashboard's variables replaced as Grafana would."""
    return [target["expr"].replace("$model", ".*")
            for panel in dashboard()["panels"] for target in panel["targets"]]


def recorded() -> set[str]:
    return set(re.findall(r"^\s*- record:\s*(\S+)\s*$", RULES.read_text(encoding="utf-8"),
                          re.MULTILINE))


def test_the_dashboard_is_an_importable_grafana_dashboard() -> None:
    board = dashboard()
    assert board["uid"] == "tether-slo" and board["title"]
    assert isinstance(board["schemaVersion"], int)
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"] for v in board["templating"]["list"]}
    assert variables == {"datasource", "model"}
    for panel in board["panels"]:
        assert panel["type"] in ("timeseries", "stat") and panel["title"]
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"}
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs))


def test_panels_read_the_recorded_series_and_show_every_sli() -> None:
    known = recorded()
    assert len(known) >= 15
    used = {name for query in panel_queries()
            for name in re.findall(r"\btether:[a-z0-9_:]+", query)}
    assert used <= known, f"panels read series no rule records: {sorted(used - known)}"
    for sli, series in SLIS.items():
        assert series <= used, f"no panel shows the {sli} ({sorted(series - used)})"
    for query in panel_queries():  # raw series stay in the rules, panels read records
        assert "tether_requests_total" not in query and "_bucket" not in query
