"""deploy/observability/: the Prometheus configuration, the alert rules and their unit tests
(promtool), the Grafana provisioning and the compose profile that runs them.

Whether the metric names the rules and the dashboard query exist is checked against the real
processes' /metrics in tests/events/test_metric_names.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from tests.support.observability import (
    DASHBOARDS,
    DATASOURCES,
    OBSERVABILITY,
    PROMETHEUS_CONFIG,
    ROOT,
    RULE_TESTS,
    RULES,
    load_yaml,
    rules,
)
from tests.support.services import IN_CI

ROLES = ("api", "relay", "consumer", "worker")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("promtool") is None:
        message = "promtool is missing: apt-get install prometheus (.ci/run installs it)"
        if IN_CI:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return subprocess.run(
        ["promtool", *args], capture_output=True, text=True, timeout=60, check=False, cwd=ROOT
    )


def test_promtool_accepts_the_configuration_and_the_rules() -> None:
    config = promtool("check", "config", "--syntax-only", str(PROMETHEUS_CONFIG))
    assert config.returncode == 0, config.stdout + config.stderr
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(rules())} rules found" in checked.stdout


def test_the_rule_unit_tests_pass() -> None:
    result = promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_unit_test() -> None:
    tested = {
        case["alertname"]
        for test in load_yaml(RULE_TESTS)["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")  # a test that only expects silence proves nothing fires
    }
    assert {rule["alert"] for rule in rules()} == tested


def test_the_alerts_cover_what_an_operator_must_hear_about() -> None:
    expressions = {rule["alert"]: rule["expr"] for rule in rules()}
    must_watch = {
        "API 5xx rate": 'status=~"5.."',
        "p99 latency": "histogram_quantile(0.99",
        "outbox backlog age": "oms_outbox_oldest_unpublished_age_seconds",
        "Celery queue depth": "oms_celery_queue_depth",
        "oldest unprocessed order": "oms_oldest_unprocessed_order_age_seconds",
        "DLQ": "oms_events_dead_lettered_total",
        "a worker not consuming": "oms_worker_last_task_received_timestamp_seconds",
        "relay down": 'up{job="oms-relay"}',
        "consumer down": 'up{job="oms-consumer"}',
    }
    missing = [what for what, text in must_watch.items()
               if not any(text in expr for expr in expressions.values())]  # fmt: skip
    assert missing == []
    for rule in rules():
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"]
        assert rule["annotations"]["description"]


def test_prometheus_scrapes_every_role_where_compose_serves_its_metrics() -> None:
    config = load_yaml(PROMETHEUS_CONFIG)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {f"oms-{role}" for role in ROLES}
    compose = load_yaml(ROOT / "docker-compose.yml")
    metrics_port = int(compose["x-oms-role"]["environment"]["METRICS_PORT"])
    for role in ROLES:
        (discovery,) = jobs[f"oms-{role}"]["dns_sd_configs"]
        assert discovery["names"] == [role]  # the compose service: every replica's address
        assert role in compose["services"]
        assert discovery["port"] == (8000 if role == "api" else metrics_port)
    assert config["rule_files"] == ["/etc/prometheus/rules/*.yml"]


def test_the_compose_profile_provisions_prometheus_and_grafana() -> None:
    services = load_yaml(ROOT / "docker-compose.yml")["services"]
    for name in ("prometheus", "grafana"):
        assert services[name]["profiles"] == ["observability"], name
        for volume in services[name]["volumes"]:
            source = volume.split(":", 1)[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), volume
    prometheus_mounts = {
        v.split(":")[1]: v.split(":")[0] for v in services["prometheus"]["volumes"]
    }
    assert (
        prometheus_mounts["/etc/prometheus/prometheus.yml"]
        == "./deploy/observability/prometheus.yml"
    )
    assert prometheus_mounts["/etc/prometheus/rules"] == "./deploy/observability/rules"
    assert not list((OBSERVABILITY / "rules").glob("*test*")), "unit tests live in rule-tests/"


def test_the_dashboard_uses_the_provisioned_data_source() -> None:
    (datasource,) = load_yaml(DATASOURCES)["datasources"]
    assert datasource["url"] == "http://prometheus:9090"
    assert DASHBOARDS
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text(encoding="utf-8"))
        assert dashboard["uid"]
        assert dashboard["panels"]
        for panel in dashboard["panels"]:
            assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]
            assert panel["targets"], panel["title"]
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == datasource["uid"]
