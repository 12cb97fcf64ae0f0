"""A Docker engine of a test's own: a second real dockerd on its own socket, data root and exec root.

For what the suite's engine must not undergo: being stopped and started again (tests/e2e/test_engine_restart.py)
or made a swarm manager (tests/e2e/test_swarm.py). It runs in a network namespace of its own, so nothing of
it reaches the host's networking, and the fixture checks that it did not.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.e2e.served import wait_for
from tests.helpers import TEST_IMAGE, require_tool

__all__ = [
    "SWARM_ADDRESS", "Engine", "SshHost", "make_tls", "module_engine", "own_engine", "running_engine", "ssh_host",
    "tls_engine",
]  # fmt: skip

#: the address a test engine's swarm advertises: inside its own network namespace only
SWARM_ADDRESS = "10.199.0.1"


class Engine:
    """A dockerd of the test's own; start() and stop() it as an operator restarting Docker would.

    It runs in a network namespace of its own (nsenter: `ip netns exec` would remount /sys and hide the
    cgroups dockerd needs): a second dockerd in the host's namespace takes the host's
    networking with it (restarted, it deleted the real engine's docker0; its networks took subnets the
    real engine's use, and their bridges outlived it). Its containers need no network beyond their own.
    """

    def __init__(self, *, dockerd_args: tuple[str, ...] = ()) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="dte", dir="/tmp"))  # unix socket paths are short
        self.socket = self.root / "docker.sock"
        self.host = f"unix://{self.socket}"
        self.netns = self.root.name
        self.dockerd_args = dockerd_args
        subprocess.run(["ip", "netns", "add", self.netns], check=True)
        subprocess.run(["ip", "netns", "exec", self.netns, "ip", "link", "set", "lo", "up"], check=True)
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = ["nsenter", f"--net=/run/netns/{self.netns}", require_tool("dockerd"), "--host", self.host,
                "--data-root", str(self.root / "data"), "--exec-root", str(self.root / "exec"),
                "--pidfile", str(self.root / "dockerd.pid"), *self.dockerd_args]  # fmt: skip
        log = (self.root / "dockerd.log").open("ab")
        self._process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        wait_for(self.answers, timeout=60, what="the test's dockerd to answer")

    def answers(self) -> bool:
        return self.docker("version", check=False).returncode == 0

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            self._process.wait(timeout=60)
        self._process = None

    def docker(self, *args: str, check: bool = True, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["docker", "--host", self.host, *args], capture_output=True, text=stdin is None,
                              input=stdin, check=check, timeout=120)  # fmt: skip

    def env(self, project: str) -> dict[str, str]:
        ids = self.docker("ps", "--filter", f"label=com.docker.compose.project={project}", "-q").stdout.split()
        assert len(ids) == 1, ids
        lines = self.docker("inspect", "--format", "{{range .Config.Env}}{{println .}}{{end}}", ids[0]).stdout
        return dict(line.split("=", 1) for line in lines.splitlines() if "=" in line)

    def swarm_init(self) -> None:
        """Make this engine a one-node swarm manager, advertised on a veth pair inside its namespace."""
        ns = ["ip", "netns", "exec", self.netns]
        subprocess.run([*ns, "ip", "link", "add", "swarm0", "type", "veth", "peer", "name", "swarm1"], check=True)
        subprocess.run([*ns, "ip", "addr", "add", f"{SWARM_ADDRESS}/24", "dev", "swarm0"], check=True)
        subprocess.run([*ns, "ip", "link", "set", "swarm0", "up"], check=True)
        subprocess.run([*ns, "ip", "link", "set", "swarm1", "up"], check=True)
        self.docker("swarm", "init", "--advertise-addr", SWARM_ADDRESS)

    def services(self, stack: str) -> dict[str, dict[str, object]]:
        """Each service of swarm stack `stack` by name: its spec's env, update state and running tasks."""
        ids = self.docker("service", "ls", "--quiet", "--filter", f"label=com.docker.stack.namespace={stack}").stdout
        found = {}
        for service_id in ids.split():
            [spec] = json.loads(self.docker("service", "inspect", service_id).stdout)
            tasks = self.docker("service", "ps", "--quiet", "--filter", "desired-state=running", service_id).stdout
            env = spec["Spec"]["TaskTemplate"]["ContainerSpec"].get("Env") or []
            found[spec["Spec"]["Name"]] = {
                "env": dict(e.split("=", 1) for e in env),
                "update": (spec.get("UpdateStatus") or {}).get("State"),
                "tasks": len(tasks.split()),
            }
        return found


@contextmanager
def running_engine(*, dockerd_args: tuple[str, ...] = ()) -> Iterator[Engine]:
    """A started engine of one's own with the test image loaded; stopped and removed after, with a check that
    the host's networking is as it was (also for benchmarks/hosts.py)."""
    links_before = set(Path("/sys/class/net").iterdir())
    engine = Engine(dockerd_args=dockerd_args)
    engine.start()
    image = subprocess.run(["docker", "save", TEST_IMAGE], capture_output=True, check=True).stdout
    subprocess.run(["docker", "--host", engine.host, "load", "--quiet"], input=image, capture_output=True, check=True)
    try:
        yield engine
    finally:
        if engine.answers():
            engine.docker("swarm", "leave", "--force", check=False)
            ids = engine.docker("ps", "-aq").stdout.split()
            if ids:
                engine.docker("rm", "--force", *ids, check=False)
        engine.stop()
        for mount in _mounts_under(engine.root):  # the data root, and the namespaces a swarm pins under exec/netns
            subprocess.run(["umount", "--lazy", mount], capture_output=True, check=False)
        shutil.rmtree(engine.root, ignore_errors=True)
        subprocess.run(["ip", "netns", "delete", engine.netns], capture_output=True, check=False)
        _assert_host_links_kept(links_before)


def _assert_host_links_kept(links_before: set[Path]) -> None:
    """The real engine's bridges all there, and none of ours left in the host's namespace. Other tests (other
    pytest workers too) make and remove networks meanwhile: what looks amiss is looked at again a second later,
    and only what still is so, against the real engine's networks of then, counts."""

    def amiss() -> tuple[set[str], set[str]]:
        links_after = set(Path("/sys/class/net").iterdir())
        host_bridges = _host_bridges()
        deleted = {link.name for link in links_before - links_after} & (host_bridges | {"docker0"})
        strays = {link.name for link in links_after - links_before if link.name.startswith("br-")} - host_bridges
        return deleted, strays

    deleted, strays = amiss()
    if deleted or strays:
        time.sleep(1)
        again = amiss()
        deleted, strays = deleted & again[0], strays & again[1]
    assert not deleted, f"the real engine's bridges deleted: {sorted(deleted)}"
    assert not strays, f"bridges left in the host's namespace: {sorted(strays)}"


@pytest.fixture
def own_engine() -> Iterator[Engine]:
    """A started engine of the test's own with the test image loaded; stopped and removed after."""
    with running_engine() as engine:
        yield engine


@pytest.fixture(scope="module")
def module_engine() -> Iterator[Engine]:
    """One such engine for a whole test module (its tests name their stacks apart): ~3 s saved per test."""
    with running_engine() as engine:
        yield engine


def _host_bridges() -> set[str]:
    """The bridges of the real engine's networks (other tests may make some meanwhile): `br-<id[:12]>`."""
    ids = subprocess.run(["docker", "network", "ls", "--quiet", "--no-trunc"], capture_output=True, text=True,
                         check=True).stdout.split()  # fmt: skip
    return {f"br-{network_id[:12]}" for network_id in ids}


def _mounts_under(root: Path) -> list[str]:
    """Mount points below `root`, deepest first."""
    points = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    return sorted((p for p in points if p.startswith(f"{root}/")), key=len, reverse=True)


class SshHost:
    """A real sshd on loopback in front of an Engine: `ssh://root@127.0.0.1:<port>`, as an operator's NAS.

    The test makes its keys with ssh-keygen; sshd gives each session DOCKER_HOST (SetEnv), so `docker
    system dial-stdio`, which the docker CLI runs over ssh, reaches the engine. The deployer finds the
    key and the host key through an ssh client config, as an operator's ~/.ssh/config would give them:
    ssh reads ~/.ssh from the passwd entry, not $HOME, so a two-line `ssh` on PATH passes `-F` instead.
    """

    def __init__(self, engine: Engine, root: Path) -> None:
        self.engine, self.root = engine, root
        root.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self.url = f"ssh://root@127.0.0.1:{self.port}"
        for key in ("host_key", "client_key"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", key, "-f", str(root / key)],
                           check=True)  # fmt: skip
        self.authorize()
        host_key = (root / "host_key.pub").read_text().split()
        (root / "known_hosts").write_text(f"[127.0.0.1]:{self.port} {host_key[0]} {host_key[1]}\n")
        (root / "sshd_config").write_text(f"""\
Port {self.port}
ListenAddress 127.0.0.1
HostKey {root / "host_key"}
AuthorizedKeysFile {root / "authorized_keys"}
PidFile {root / "sshd.pid"}
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
SetEnv DOCKER_HOST={engine.host}
""")
        (root / "ssh_config").write_text(f"""\
Host 127.0.0.1
  IdentityFile {root / "client_key"}
  IdentitiesOnly yes
  UserKnownHostsFile {root / "known_hosts"}
  StrictHostKeyChecking yes
  BatchMode yes
""")
        bin_dir = root / "bin"
        bin_dir.mkdir()
        wrapper = bin_dir / "ssh"
        wrapper.write_text(f'#!/bin/sh\nexec /usr/bin/ssh -F {root / "ssh_config"} "$@"\n')
        wrapper.chmod(0o755)
        self.path = f"{bin_dir}:{os.environ['PATH']}"
        self._process: subprocess.Popen[bytes] | None = None

    def authorize(self, *, key: str = "client_key") -> None:
        (self.root / "authorized_keys").write_text((self.root / f"{key}.pub").read_text() if key else "")

    def start(self) -> None:
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory
        log = (self.root / "sshd.log").open("ab")
        argv = [require_tool("sshd"), "-D", "-e", "-f", str(self.root / "sshd_config")]
        self._process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        wait_for(self.answers, timeout=30, what="the test's sshd to answer")

    def answers(self) -> bool:
        argv = ["docker", "--host", self.url, "version", "--format", "{{.Server.Version}}"]
        return subprocess.run(argv, capture_output=True, env={**os.environ, "PATH": self.path}, check=False,
                              timeout=60).returncode == 0  # fmt: skip

    def stop(self) -> None:
        """Stop sshd and every session it serves (a host that goes away): its children first."""
        if self._process is not None and self._process.poll() is None:
            subprocess.run(["pkill", "--signal", "KILL", "--parent", str(self._process.pid)], check=False)
            self._process.kill()
            self._process.wait(timeout=30)
        self._process = None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def ssh_host(module_engine: Engine, tmp_path: Path) -> Iterator[SshHost]:
    """The module's engine behind a real sshd of the test's own on loopback (its own keys); stopped after."""
    host = SshHost(module_engine, tmp_path / "ssh")
    host.start()
    try:
        yield host
    finally:
        host.stop()


#: the port a TLS test engine listens on inside its own network namespace
TLS_PORT = 2376


def make_tls(directory: Path) -> tuple[Path, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as `docker` expects them: the server's
    in `directory/server`, the client's in `directory/client` (ca.pem, cert.pem, key.pem: a DOCKER_CERT_PATH)."""
    server, client = directory / "server", directory / "client"
    server.mkdir(parents=True)
    client.mkdir(parents=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "deployer test CA")])
    now = datetime.datetime.now(datetime.UTC)
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))  # fmt: skip
    loopback: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    for where, usage, names in ((server, ExtendedKeyUsageOID.SERVER_AUTH, loopback),
                                (client, ExtendedKeyUsageOID.CLIENT_AUTH, [x509.DNSName("deployer")])):  # fmt: skip
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, where.name)]))
                .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName(names), critical=False)
                .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
                .sign(ca_key, hashes.SHA256()))  # fmt: skip
        (where / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        (where / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (where / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                          serialization.PrivateFormat.TraditionalOpenSSL,
                                                          serialization.NoEncryption()))  # fmt: skip
    return server, client


@contextmanager
def tls_engine(directory: Path) -> Iterator[tuple[Engine, str, Path]]:
    """An engine answering only TLS with client certificates on tcp (and its unix socket, for the test), its tcp
    port carried to host loopback by socat (bytes only: TLS is end to end). Yields the engine, its tcp:// URL
    and a DOCKER_CERT_PATH for clients."""
    server, client = make_tls(directory)
    args = ("--host", f"tcp://127.0.0.1:{TLS_PORT}", "--tlsverify", "--tlscacert", str(server / "ca.pem"),
            "--tlscert", str(server / "cert.pem"), "--tlskey", str(server / "key.pem"))  # fmt: skip
    with running_engine(dockerd_args=args) as engine:
        port = _free_port()
        inside = f"EXEC:nsenter --net=/run/netns/{engine.netns} socat STDIO TCP\\:127.0.0.1\\:{TLS_PORT}"
        carrier = subprocess.Popen([require_tool("socat"), f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork", inside],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            yield engine, f"tcp://127.0.0.1:{port}", client
        finally:
            carrier.kill()
            carrier.wait(timeout=30)
