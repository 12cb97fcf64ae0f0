"""The host policy on resolved compose configs (the shape `docker compose config --format json` prints).

Pure: the configs are written here in that shape; tests/e2e/test_host_policy.py has real compose
resolve real files, through `deployer validate` and a running service.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

import pytest

from deployer.errors import ConfigError
from deployer.host_policy import HostPolicy, env_files, violations
from deployer.settings import Settings

FOLDER = PurePosixPath("/state/checkouts/abc/stacks/web")


def service(**keys: Any) -> dict[str, Any]:
    return {"services": {"app": {"image": "busybox", **keys}}}


def bind(source: str) -> dict[str, Any]:
    return service(volumes=[{"type": "bind", "source": source, "target": "/x"}])


def found(config: dict[str, Any], policy: HostPolicy | None = None, *, stack: str = "web", **kw: Any) -> list[str]:
    return violations(stack, config, folder=FOLDER, policy=policy or HostPolicy(), **kw)


def test_the_stacks_own_folder_and_the_default_data_root_are_allowed() -> None:
    assert found(bind(f"{FOLDER}/config")) == []
    assert found(bind("/mnt/data/postgres")) == []
    assert found(service(volumes=[{"type": "volume", "source": "db", "target": "/db"}])) == []


@pytest.mark.parametrize("source", ["/", "/etc", "/var/run/docker.sock", "/mnt", "/mnt/data/../../etc", "/root/.ssh"])
def test_host_paths_outside_are_refused_with_service_key_and_path_named(source: str) -> None:
    [finding] = found(bind(source))
    assert finding.startswith("service app: volumes: uses host path ")
    assert source in finding
    assert "DEPLOYER_ALLOWED_BIND_ROOTS (/mnt/data)" in finding


def test_the_docker_socket_is_called_what_it_is() -> None:
    [finding] = found(bind("/var/run/docker.sock"))
    assert "the Docker socket: root on the host" in finding


def test_a_sibling_stacks_folder_is_outside() -> None:
    assert found(bind("/state/checkouts/abc/stacks/other/data"))
    assert found(bind("/state/checkouts/abc/stacks/web-evil"))  # a prefix of the name is not inside


def test_a_symlink_is_judged_by_where_it_points() -> None:
    links = {f"{FOLDER}/link": "/etc", "/mnt/data/escape": "/"}

    def resolve(path: str) -> str:
        return links.get(path, path)

    [inside] = found(bind(f"{FOLDER}/link"), resolve=resolve)
    assert f"{FOLDER}/link (which is /etc)" in inside
    [root] = found(bind("/mnt/data/escape"), resolve=resolve)
    assert "(which is /)" in root


def test_every_way_compose_reads_the_host_is_checked() -> None:
    config: dict[str, Any] = {
        "services": {"app": {"image": "x", "build": {"context": "/", "additional_contexts": {"etc": "/etc"}}}},
        "secrets": {"shadow": {"file": "/etc/shadow"}},
        "configs": {"hosts": {"file": "/etc/hosts"}},
        "volumes": {"sneaky": {"driver": "local", "driver_opts": {"type": "none", "o": "bind", "device": "/etc"}}},
    }
    wheres = [f.split(": uses")[0] for f in found(config)]
    assert wheres == [
        "service app: build.context",
        "service app: build.additional_contexts.etc",
        "secrets.shadow: file",
        "configs.hosts: file",
        "volumes.sneaky: driver_opts.device",
    ]


def test_a_url_build_context_and_an_nfs_volume_are_not_host_paths() -> None:
    config: dict[str, Any] = {
        "services": {"app": {"build": {"context": "https://github.com/x/y.git"}}},
        "volumes": {"nfs": {"driver_opts": {"type": "nfs", "o": "addr=10.0.0.1,rw", "device": ":/export"}}},
    }
    assert found(config) == []


@pytest.mark.parametrize(
    ("keys", "said"),
    [
        ({"privileged": True}, "service app: privileged: true"),
        ({"network_mode": "host"}, "service app: network_mode: host"),
        ({"pid": "host"}, "service app: pid: host"),
        ({"ipc": "host"}, "service app: ipc: host"),
        ({"uts": "host"}, "service app: uts: host"),
        ({"userns_mode": "host"}, "service app: userns_mode: host"),
        ({"cgroup": "host"}, "service app: cgroup: host"),
        ({"cap_add": ["SYS_ADMIN"]}, "service app: cap_add adds capabilities (SYS_ADMIN)"),
        ({"devices": [{"source": "/dev/kmsg", "target": "/dev/kmsg"}]}, "service app: devices maps host devices"),
        ({"device_cgroup_rules": ["c 1:3 mr"]}, "service app: device_cgroup_rules"),
        ({"security_opt": ["seccomp=unconfined"]}, "service app: security_opt seccomp=unconfined"),
        ({"security_opt": ["apparmor:unconfined"]}, "service app: security_opt apparmor:unconfined"),
        ({"security_opt": ["label=disable"]}, "service app: security_opt label=disable"),
    ],
)
def test_privileges_are_refused_unless_the_stack_is_allowed(keys: dict[str, Any], said: str) -> None:
    [finding] = found(service(**keys))
    assert finding.startswith(said)
    assert finding.endswith("which only stacks in DEPLOYER_ALLOW_PRIVILEGED may do")
    assert found(service(**keys), HostPolicy.parse(None, "web")) == []


def test_harmless_settings_are_not_privileges() -> None:
    config = service(network_mode="bridge", cap_drop=["ALL"], security_opt=["no-new-privileges:true"], read_only=True)
    assert found(config) == []


def test_a_root_may_be_given_to_one_stack_only() -> None:
    policy = HostPolicy.parse("/mnt/data, traefik:/var/run/docker.sock", None)
    assert found(bind("/var/run/docker.sock"), policy, stack="traefik") == []
    [other] = found(bind("/var/run/docker.sock"), policy, stack="web")
    assert "(/mnt/data)" in other
    [below] = found(bind("/var/run"), policy, stack="traefik")  # a file root allows exactly that file
    assert "(/mnt/data, /var/run/docker.sock)" in below


def test_an_empty_setting_allows_nothing_but_the_folder() -> None:
    policy = HostPolicy.parse("", None)
    assert found(bind("/mnt/data/x"), policy)
    assert found(bind(f"{FOLDER}/x"), policy) == []


@pytest.mark.parametrize("entry", ["relative/path", "web:relative", ":/x", "~/data"])
def test_a_root_that_is_not_absolute_is_a_start_up_error_naming_it(entry: str) -> None:
    with pytest.raises(ConfigError, match=r"DEPLOYER_ALLOWED_BIND_ROOTS: .* is not an absolute path"):
        Settings.from_env({"DEPLOYER_ALLOWED_BIND_ROOTS": entry})


def test_settings_read_both_variables() -> None:
    settings = Settings.from_env({"DEPLOYER_ALLOWED_BIND_ROOTS": "/srv/,/x/../y", "DEPLOYER_ALLOW_PRIVILEGED": "a, b"})
    assert settings.host_policy.bind_roots == (PurePosixPath("/srv"), PurePosixPath("/y"))
    assert settings.host_policy.privileged == {"a", "b"}
    assert Settings.from_env({}).host_policy == HostPolicy()


def test_env_files_are_read_from_the_file_as_written_in_every_form() -> None:
    b = {"env_file": ["b.env", {"path": "/etc/b", "required": False}]}
    document = {"services": {"a": {"env_file": "/etc/a"}, "b": b, "c": {"image": "x"}}}
    assert list(env_files(document)) == [
        ("service a: env_file", "/etc/a"), ("service b: env_file", "b.env"), ("service b: env_file", "/etc/b"),
    ]  # fmt: skip


def test_what_compose_reads_beside_its_config_is_judged_like_a_bind_mount() -> None:
    reads = [("service a: env_file", f"{FOLDER}/a.env"), ("service a: env_file", "/etc/shadow")]
    [finding] = found(service(), reads=reads)
    assert finding.startswith("service a: env_file: uses host path /etc/shadow")
