"""The monitoring and minio stacks' seed files agree with each other.

Grafana dashboards only name datasources that provisioning defines; the Mimir, Loki, Tempo and Alloy
configs are readable and point at the right places; and every bucket those configs use is one that
the minio stack's one-shot init creates. Files only: no engine, no network.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import ROOT

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
    dashboard = json.loads((MONITORING / "grafana" / "dashboards" / "deployer.json").read_text(encoding="utf-8"))
    queries = [(uid_of(t.get("datasource")), t["expr"]) for p in panels(dashboard) for t in p.get("targets", [])]
    loki = [expr for uid, expr in queries if uid == "loki"]
    mimir = [expr for uid, expr in queries if uid == "mimir"]
    assert all('{service_name="deployer"}' in expr for expr in loki), "audit queries select the deployer stream"
    assert any('event="deployment.finished"' in expr and "by (result)" in expr for expr in loki)
    assert any('event="stack.failed"' in expr for expr in loki)
    assert any("quantile_over_time(0.95" in expr and "unwrap duration_ms" in expr for expr in loki)
    assert any(re.search(r"\bdeployer_[a-z_]+", expr) for expr in mimir)


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
