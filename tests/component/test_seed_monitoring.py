"""The monitoring and minio stacks' seed files agree with each other.

Grafana dashboards only name datasources that provisioning defines; the Mimir, Loki, Tempo and Alloy
configs are readable and point at the right places; and every bucket those configs use is one that
the minio stack's one-shot init creates. Every query of the "Deployments" dashboard and of the
monitoring doc parses with the real grammars: PromQL with Prometheus' own parser (`promtool check
rules`), LogQL with Grafana's (`@grafana/lezer-logql`, through tests/logql_check.mjs). Files and
local tools only: no engine, no network.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import ROOT, require_tool

MONITORING = ROOT / "stacks" / "monitoring"
MINIO = ROOT / "stacks" / "minio"
DATASOURCES = MONITORING / "grafana" / "provisioning" / "datasources" / "datasources.yaml"
DASHBOARD_PROVIDERS = MONITORING / "grafana" / "provisioning" / "dashboards" / "dashboards.yaml"
DASHBOARDS = sorted((MONITORING / "grafana" / "dashboards").rglob("*.json"))
YAML_CONFIGS = {
    "mimir": MONITORING / "mimir" / "mimir.yaml",
    "alertmanager-fallback": MONITORING / "mimir" / "alertmanager-fallback.yaml",
    "loki": MONITORING / "loki" / "config.yaml",
    "tempo": MONITORING / "tempo" / "tempo.yaml",
}
ALLOY_CONFIG = MONITORING / "alloy" / "config.alloy"
BUCKETS_FILE = MINIO / "init" / "buckets.txt"
#: keys under which Mimir (bucket_name), Loki (bucketnames, comma-separated) and Tempo (bucket) name buckets
BUCKET_KEYS = ("bucket_name", "bucketnames", "bucket")
DEPLOYER_DASHBOARD = MONITORING / "grafana" / "dashboards" / "deployer.json"
MONITORING_DOC = ROOT / "docs" / "stacks" / "monitoring.md"
LOGQL_CHECK = ROOT / "tests" / "logql_check.mjs"
#: where scripts/bootstrap installs Grafana's LogQL grammar (npm --prefix)
NODE_TOOLS = Path(os.environ.get("DEPLOYER_NODE_TOOLS", ROOT / ".tools" / "node"))
#: Grafana's interval variables, which neither promtool nor the LogQL grammar knows: a plain duration instead
GRAFANA_INTERVALS = re.compile(r"\$__(?:rate_interval|interval|range|auto)\b")
#: what the deployer exports on /metrics (deployer/report/metrics.py); the doc's table and the dashboard follow it
DEPLOYER_METRICS = {
    "deployer_build_info",
    "deployer_deployments_total",
    "deployer_queue_depth",
    "deployer_deployments_running",
    "deployer_stack_deploy_duration_seconds",
    "deployer_stack_deployments_total",
    "deployer_stack_last_success_timestamp_seconds",
    "deployer_webhook_deliveries_total",
    "deployer_statuses_waiting",
    "deployer_statuses_oldest_waiting_seconds",
    "deployer_audit_events_waiting",
    "deployer_audit_events_oldest_waiting_seconds",
    "deployer_audit_events_set_aside",
    "deployer_audit_shipping_ok",
    "deployer_notifications_ok",
    "deployer_worker_heartbeat_age_seconds",
    "deployer_state_store_up",
}
HISTOGRAMS = {"deployer_stack_deploy_duration_seconds"}


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def walk(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every (dotted path, value) pair of a YAML/JSON document, depth first."""
    if isinstance(node, dict):
        for key, value in node.items():
            here = f"{path}.{key}" if path else str(key)
            yield here, value
            yield from walk(value, here)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from walk(value, f"{path}[{index}]")


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel of a dashboard, including those nested in (collapsed) rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panels(panel)


def uid_of(datasource: object) -> str | None:
    """The uid a panel or target names, or None when it inherits its panel's / the default datasource."""
    if datasource is None:
        return None
    if isinstance(datasource, dict):
        uid = datasource.get("uid")
        return None if uid is None else str(uid)
    return str(datasource)  # legacy form: the datasource's name or uid as a plain string


def provisioned_datasources() -> list[dict[str, Any]]:
    return load_yaml(DATASOURCES)["datasources"]


def provisioned_uids() -> set[str]:
    return {str(source["uid"]) for source in provisioned_datasources()}


def dashboard_queries(path: Path, datasource: str) -> list[tuple[str, str]]:
    """(where, expr) of every panel target and annotation of a dashboard that queries `datasource` (a uid)."""
    dashboard = json.loads(path.read_text(encoding="utf-8"))
    found = []
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            if (uid_of(target.get("datasource")) or uid_of(panel.get("datasource"))) == datasource:
                found.append((f"panel {panel['id']} {panel.get('title')!r} {target.get('refId')}", target["expr"]))
    for annotation in dashboard.get("annotations", {}).get("list", []):
        if uid_of(annotation.get("datasource")) == datasource:
            found.append((f"annotation {annotation.get('name')!r}", annotation["expr"]))
    return found


def doc_logql() -> list[str]:
    """The LogQL of the monitoring doc: every ```logql fenced block."""
    text = MONITORING_DOC.read_text(encoding="utf-8")
    return [block.strip() for block in re.findall(r"^```logql\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)]


def without_grafana_variables(expr: str) -> str:
    return GRAFANA_INTERVALS.sub("5m", expr)


def check_promql(exprs: list[tuple[str, str]], folder: Path) -> subprocess.CompletedProcess[str]:
    """Prometheus' own parser on each expression: one recording rule each, `promtool check rules`."""
    promtool = require_tool("promtool")
    rules = [
        {"record": f"dashboard:query_{index}", "expr": without_grafana_variables(expr), "labels": {"where": where}}
        for index, (where, expr) in enumerate(exprs)
    ]
    path = folder / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}), encoding="utf-8")
    argv = [promtool, "check", "rules", str(path)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def logql_errors(queries: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Each query's error nodes in Grafana's LogQL grammar (@grafana/lezer-logql); an empty list: it parses."""
    node = require_tool("node")
    if not (NODE_TOOLS / "node_modules" / "@grafana" / "lezer-logql" / "package.json").is_file():
        message = f"@grafana/lezer-logql is not installed in {NODE_TOOLS} (scripts/bootstrap installs it)"
        if os.environ.get("DEPLOYER_REQUIRE_TOOLS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    done = subprocess.run(
        [node, str(LOGQL_CHECK)],
        input=json.dumps([without_grafana_variables(query) for query in queries]),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "DEPLOYER_NODE_TOOLS": str(NODE_TOOLS)},
    )
    assert done.returncode == 0, f"{LOGQL_CHECK.name} failed: {done.stderr}"
    report = json.loads(done.stdout)
    assert [item["query"] for item in report] == [without_grafana_variables(query) for query in queries]
    return {query: item["errors"] for query, item in zip(queries, report, strict=True)}


def init_buckets() -> set[str]:
    lines = (line.strip() for line in BUCKETS_FILE.read_text(encoding="utf-8").splitlines())
    return {line for line in lines if line and not line.startswith("#")}


def test_datasources_file_is_valid_yaml_with_unique_uids_and_names() -> None:
    document = load_yaml(DATASOURCES)
    assert document["apiVersion"] == 1
    sources = document["datasources"]
    assert sources, "no datasource is provisioned"
    uids = [source.get("uid") for source in sources]
    names = [source.get("name") for source in sources]
    assert all(isinstance(uid, str) and uid for uid in uids), f"every datasource needs a uid: {uids}"
    assert len(set(uids)) == len(uids), f"duplicate datasource uids: {uids}"
    assert len(set(names)) == len(names), f"duplicate datasource names: {names}"
    assert {source["type"] for source in sources} >= {"prometheus", "loki", "tempo"}
    assert sum(bool(source.get("isDefault")) for source in sources) <= 1


def test_datasource_cross_references_name_provisioned_uids() -> None:
    """Tempo's trace-to-logs/metrics links and Mimir's exemplar links point at datasources that exist."""
    uids = provisioned_uids()
    references = [
        (f"{source['uid']}.{path}", value)
        for source in provisioned_datasources()
        for path, value in walk(source.get("jsonData", {}))
        if path.rsplit(".", 1)[-1] == "datasourceUid"
    ]
    assert references, "expected the Tempo and Mimir datasources to link to others"
    unknown = [(path, uid) for path, uid in references if uid not in uids]
    assert not unknown, f"datasourceUid not provisioned: {unknown}"


def test_dashboards_exist_and_the_provider_reads_them_where_compose_mounts_them() -> None:
    assert DASHBOARDS, "no dashboard JSON under stacks/monitoring/grafana/dashboards"
    provider_paths = {provider["options"]["path"] for provider in load_yaml(DASHBOARD_PROVIDERS)["providers"]}
    grafana = load_yaml(MONITORING / "compose.yaml")["services"]["grafana"]
    mounts = {volume.split(":")[1] for volume in grafana["volumes"] if volume.startswith("./grafana/dashboards:")}
    assert provider_paths == mounts, f"provider reads {provider_paths}, compose mounts dashboards at {mounts}"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda path: path.name)
def test_dashboard_is_valid_json_and_names_only_provisioned_datasources(path: Path) -> None:
    dashboard = json.loads(path.read_text(encoding="utf-8"))
    uids = provisioned_uids()
    assert dashboard.get("uid") and dashboard.get("title")
    seen: list[str] = []
    for panel in panels(dashboard):
        where = f"{path.name}: panel {panel.get('id')} {panel.get('title')!r}"
        if panel.get("type") == "row":
            continue
        panel_uid = uid_of(panel.get("datasource"))
        assert panel_uid is not None, f"{where} names no datasource"
        assert panel_uid in uids, f"{where} uses datasource {panel_uid!r}, provisioned: {sorted(uids)}"
        assert panel.get("targets"), f"{where} has no query"
        for target in panel["targets"]:
            target_uid = uid_of(target.get("datasource")) or panel_uid
            assert target_uid in uids, f"{where} target {target.get('refId')} uses {target_uid!r}"
            assert target.get("expr"), f"{where} target {target.get('refId')} has no expr"
            seen.append(target_uid)
    for annotation in dashboard.get("annotations", {}).get("list", []):
        assert uid_of(annotation.get("datasource")) in uids, f"{path.name}: annotation {annotation.get('name')!r}"
    ids = [panel.get("id") for panel in panels(dashboard)]
    assert len(set(ids)) == len(ids), f"{path.name}: duplicate panel ids"
    assert seen, f"{path.name}: no panel queries anything"


def test_deployer_dashboard_reads_audit_events_from_loki_and_deployer_metrics_from_mimir() -> None:
    dashboard = json.loads(DEPLOYER_DASHBOARD.read_text(encoding="utf-8"))
    assert (dashboard["title"], dashboard["uid"]) == ("Deployments", "deployer-deployments")
    queries = [(uid_of(t.get("datasource")), t["expr"]) for p in panels(dashboard) for t in p.get("targets", [])]
    loki = [expr for uid, expr in queries if uid == "loki"]
    mimir = [expr for uid, expr in queries if uid == "mimir"]
    assert all('{service_name="deployer"}' in expr for expr in loki), "audit queries select the deployer stream"
    assert any('event="deployment.finished"' in expr and "by (result)" in expr for expr in loki)
    assert any('event="stack.failed"' in expr for expr in loki)
    assert any("quantile_over_time(0.95" in expr and "unwrap duration_ms" in expr for expr in loki)
    # The history: each deployment.finished, which carries its trigger and actor.
    history = [expr for expr in loki if 'event="deployment.finished"' in expr and 'trigger="trigger"' in expr]
    assert history, "no history table of deployment.finished with its trigger and actor"
    fields = ("commit", "actor", "result", "duration_ms", "time")
    assert all(f'{field}="{field}"' in history[0] for field in fields)
    assert any(re.search(r"\bdeployer_[a-z_]+", expr) for expr in mimir)
    assert any(
        re.search(
            r"histogram_quantile\(0\.95, sum by \(le, stack\) \(rate\(deployer_stack_deploy_duration_seconds_bucket", e
        )
        for e in mimir
    )
    assert any("by (trigger, result)" in expr and "increase(deployer_deployments_total[" in expr for expr in mimir)
    assert any("by (outcome, reason)" in expr and "deployer_webhook_deliveries_total" in expr for expr in mimir)


def test_deployer_dashboard_and_doc_name_exactly_the_metrics_the_deployer_exports() -> None:
    """No panel reads a deployer_* name the deployer does not export, and every exported one is shown and
    documented (the histogram through its _bucket/_sum/_count series)."""
    used = set()
    for _, expr in dashboard_queries(DEPLOYER_DASHBOARD, "mimir"):
        for name in re.findall(r"\bdeployer_[a-z_]+", expr):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            used.add(base if base in HISTOGRAMS else name)
    assert used == DEPLOYER_METRICS, (
        f"unknown: {sorted(used - DEPLOYER_METRICS)}, not shown: {sorted(DEPLOYER_METRICS - used)}"
    )
    documented = set(re.findall(r"^\| `(deployer_[a-z_]+)` \|", MONITORING_DOC.read_text(encoding="utf-8"), re.M))
    assert documented == DEPLOYER_METRICS, (
        f"{MONITORING_DOC.name}: unknown {sorted(documented - DEPLOYER_METRICS)}, "
        f"missing {sorted(DEPLOYER_METRICS - documented)}"
    )


def test_every_mimir_query_of_the_dashboard_parses_with_promtool(tmp_path: Path) -> None:
    exprs = dashboard_queries(DEPLOYER_DASHBOARD, "mimir")
    assert len(exprs) >= 10
    checked = check_promql(exprs, tmp_path)
    assert checked.returncode == 0, f"promtool check rules:\n{checked.stdout}{checked.stderr}"
    assert f"SUCCESS: {len(exprs)} rules found" in checked.stdout


def test_promtool_check_fails_on_a_broken_query(tmp_path: Path) -> None:
    """The PromQL check can fail: an unclosed call, and a Grafana variable the substitution does not know."""
    for broken in ("sum by (stack) (rate(deployer_stack_deployments_total[$__rate_interval])", "max(up[$__unknown])"):
        checked = check_promql([("broken", broken)], tmp_path)
        assert checked.returncode != 0, f"promtool accepted {broken!r}: {checked.stdout}"
        assert "parse" in (checked.stdout + checked.stderr).lower()


def test_every_loki_query_of_the_dashboard_and_the_doc_parses_with_grafanas_logql_grammar() -> None:
    dashboard = dashboard_queries(DEPLOYER_DASHBOARD, "loki")
    documented = doc_logql()
    assert len(dashboard) >= 10
    # the doc answers: every deployment of a stack, failures last week, who triggered manual deploys,
    # which secrets a deploy decrypted
    for answer in ('stack="monitoring"', 'result="failed"', 'trigger=~"manual|cli"', 'event="secrets.decrypted"'):
        assert any(answer in query for query in documented), f"{MONITORING_DOC.name}: no LogQL with {answer}"
    assert all('{service_name="deployer"}' in query for query in documented)
    errors = logql_errors([expr for _, expr in dashboard] + documented)
    wrong = {query: found for query, found in errors.items() if found}
    assert not wrong, f"LogQL that does not parse: {json.dumps(wrong, indent=1)}"


def test_the_logql_check_reports_broken_queries() -> None:
    good = '{service_name="deployer"} | json event="event" | __error__="" | event="deployment.finished"'
    broken = [
        '{service_name="deployer" | json',
        '{service_name="deployer"} | json | event=',
        'sum by (stack (count_over_time({service_name="deployer"}[5m]))',
        'count_over_time({service_name="deployer"} [$__unknown])',
        "",
    ]
    errors = logql_errors([good, *broken])
    assert errors[good] == []
    assert all(errors[query] for query in broken), errors


@pytest.mark.parametrize("name", sorted(YAML_CONFIGS))
def test_service_config_parses_as_a_yaml_mapping(name: str) -> None:
    document = load_yaml(YAML_CONFIGS[name])
    assert isinstance(document, dict) and document, f"{YAML_CONFIGS[name]} is empty or not a mapping"


def test_object_storage_configs_use_minio_and_the_monitoring_account_from_the_environment() -> None:
    """No credential is written into a config: each reads ${S3_ACCESS_KEY}/${S3_SECRET_KEY} (expand-env)."""
    for name in ("mimir", "loki", "tempo"):
        pairs = list(walk(load_yaml(YAML_CONFIGS[name])))
        endpoints = {value for path, value in pairs if path.endswith(".endpoint") and ".s3." in f".{path}"}
        assert endpoints == {"minio:9000"}, f"{name}: S3 endpoints {endpoints}"
        secrets = [
            value
            for path, value in pairs
            if path.rsplit(".", 1)[-1] in ("access_key_id", "secret_access_key", "access_key", "secret_key")
        ]
        assert secrets, f"{name}: no S3 credentials configured"
        assert set(secrets) <= {"${S3_ACCESS_KEY}", "${S3_SECRET_KEY}"}, f"{name}: hard-coded S3 credentials"
    compose = load_yaml(MONITORING / "compose.yaml")
    for service in ("mimir-1", "mimir-2", "mimir-3", "loki", "tempo"):
        assert "-config.expand-env=true" in compose["services"][service]["command"], service


def test_mimir_nodes_join_each_other_and_compose_runs_each_of_them() -> None:
    members = load_yaml(YAML_CONFIGS["mimir"])["memberlist"]["join_members"]
    services = load_yaml(MONITORING / "compose.yaml")["services"]
    hosts = sorted(member.split(":")[0] for member in members)
    assert hosts == ["mimir-1", "mimir-2", "mimir-3"]
    for host in hosts:
        assert services[host]["hostname"] == host, f"{host}: the ring id must not change with the container"
        assert "mimir" in services[host]["networks"]["backend"]["aliases"], "the alias lives on the internal network"


def test_alloy_config_exists_and_ships_to_loki_and_mimir() -> None:
    """Alloy's River syntax has no Python parser: check the endpoints and that the blocks are closed."""
    text = ALLOY_CONFIG.read_text(encoding="utf-8")
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("//"))
    assert 'url = "http://loki:3100/loki/api/v1/push"' in code
    assert 'url = "http://mimir:8080/api/v1/push"' in code
    assert "loki.source.docker" in code and "prometheus.exporter.unix" in code
    # The engine only through the stack's socket proxy; no cAdvisor (it needs privileges and the host's /).
    hosts = re.findall(r'\bhost\s*=\s*"([^"]+)"', code)
    assert hosts and set(hosts) == {"tcp://socket-proxy:2375"}, hosts
    assert "docker.sock" not in code and "prometheus.exporter.cadvisor" not in code
    # The host's /proc and /sys, where compose mounts them read-only.
    assert 'procfs_path    = "/host/proc"' in code and 'sysfs_path     = "/host/sys"' in code
    alloy = load_yaml(MONITORING / "compose.yaml")["services"]["alloy"]
    assert {"/proc:/host/proc:ro", "/sys:/host/sys:ro"} <= set(alloy["volumes"])
    assert "traefik:8080" in code and "traefik_metrics" in alloy["networks"], "Traefik's metrics, over traefik_metrics"
    for opening, closing in ("{}", "[]", "()"):
        assert code.count(opening) == code.count(closing), f"unbalanced {opening}{closing} in {ALLOY_CONFIG}"


def test_alloy_scrapes_the_deployers_metrics_as_job_deployer() -> None:
    code = "\n".join(
        line for line in ALLOY_CONFIG.read_text(encoding="utf-8").splitlines() if not line.lstrip().startswith("//")
    )
    block = re.search(r'prometheus\.scrape "deployer" \{(.*?)\n\}', code, flags=re.DOTALL)
    assert block, f'no prometheus.scrape "deployer" in {ALLOY_CONFIG}'
    body = block.group(1)
    assert '"__address__" = sys.env("DEPLOYER_METRICS_ADDR"), "job" = "deployer"' in body
    assert re.search(r'\bmetrics_path\s*=\s*"/metrics"', body)
    assert re.search(r"\bforward_to\s*=\s*\[prometheus\.remote_write\.mimir\.receiver\]", body)
    alloy = load_yaml(MONITORING / "compose.yaml")["services"]["alloy"]
    assert "DEPLOYER_METRICS_ADDR" in alloy["environment"]


def test_minio_init_creates_every_bucket_the_monitoring_configs_use() -> None:
    used: dict[str, str] = {}
    for name in ("mimir", "loki", "tempo"):
        for path, value in walk(load_yaml(YAML_CONFIGS[name])):
            if path.rsplit(".", 1)[-1] in BUCKET_KEYS and isinstance(value, str):
                for bucket in value.split(","):
                    used[bucket.strip()] = f"{name}: {path}"
    assert set(used) >= {"mimir-blocks", "mimir-ruler", "mimir-alertmanager", "loki-chunks", "loki-ruler"}
    assert "tempo-traces" in used
    missing = {bucket: where for bucket, where in used.items() if bucket not in init_buckets()}
    assert not missing, f"buckets used but not created by stacks/minio/init/buckets.txt: {missing}"


def test_minio_init_service_runs_the_bucket_script_and_is_waited_for() -> None:
    """The one-shot init reads buckets.txt, and a long-running service depends on its success (up --wait)."""
    services = load_yaml(MINIO / "compose.yaml")["services"]
    init = services["minio-init"]
    assert "./init:/init:ro" in init["volumes"]
    assert init["entrypoint"][-1] == "/init/create-buckets.sh"
    assert init["depends_on"]["minio"]["condition"] == "service_healthy"
    script = (MINIO / "init" / "create-buckets.sh").read_text(encoding="utf-8")
    assert "/init/buckets.txt" in script and "mc mb --ignore-existing" in script
    waiting = [
        name
        for name, service in services.items()
        if (service.get("depends_on") or {}).get("minio-init", {}).get("condition") == "service_completed_successfully"
    ]
    assert waiting, "nothing depends on minio-init completing, so `docker compose up --wait` would fail"
    assert all(services[name].get("healthcheck") for name in waiting)
