"""deploy/observability/: the files, and the metric names their queries use."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
OBSERVABILITY = ROOT / "deploy" / "observability"
PROMETHEUS_CONFIG = OBSERVABILITY / "prometheus.yml"
RULES = OBSERVABILITY / "rules" / "oms.yml"
RULE_TESTS = OBSERVABILITY / "rule-tests" / "oms.yml"
DASHBOARDS = sorted((OBSERVABILITY / "grafana" / "dashboards").glob("*.json"))
DATASOURCES = OBSERVABILITY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"

# Label names and values never start with `oms_` (labels are method, route, status, outcome,
# reason, limit, job, instance, le), so every such token of a query is a metric name.
_METRIC = re.compile(r"\boms_[a-z0-9_]+\b")


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(RULES)["groups"] for rule in group["rules"]]


def dashboard_queries() -> dict[str, list[str]]:
    """Dashboard file name -> the PromQL of every panel target."""
    queries = {}
    for path in DASHBOARDS:
        panels = json.loads(path.read_text(encoding="utf-8"))["panels"]
        queries[path.name] = [t["expr"] for p in panels for t in p.get("targets", [])]
    return queries


def referenced_metrics() -> dict[str, set[str]]:
    """Metric name -> where it is used (alert name or dashboard file)."""
    used: dict[str, set[str]] = {}
    for rule in rules():
        for name in _METRIC.findall(rule["expr"]):
            used.setdefault(name, set()).add(rule["alert"])
    for dashboard, expressions in dashboard_queries().items():
        for expression in expressions:
            for name in _METRIC.findall(expression):
                used.setdefault(name, set()).add(dashboard)
    return used
