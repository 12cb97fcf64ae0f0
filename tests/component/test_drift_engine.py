"""Drift against the real engine: a project brought up by the real `docker compose`, a baseline from
EngineApi.project_containers(), then drift made by hand with the docker CLI, as an operator would.

Every container and network carries the test's prefix (the `prefix` fixture removes them afterwards, also
when a test fails). The error path (one request, the pooled connection forgotten) uses a loopback stand-in.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml
from docker.errors import DockerException

from deployer.apply.engine import EngineApi
from deployer.plan.drift import baseline_of, findings, group_by_project
from tests.helpers import TEST_IMAGE, service


def docker(*argv: str) -> str:
    return subprocess.run(["docker", *argv], capture_output=True, text=True, check=True).stdout.strip()


class Project:
    """A compose project in `folder`: web (2 replicas, with a healthcheck) and db (an environment value)."""

    def __init__(self, name: str, folder: Path) -> None:
        self.name = name
        self.file = folder / "compose.yaml"
        folder.mkdir(parents=True, exist_ok=True)
        self.write(mode="one")

    def write(self, *, mode: str) -> None:
        services = {
            "web": service(deploy={"replicas": 2}),
            "db": service(healthcheck=False, environment={"MODE": mode}),
        }
        self.file.write_text(yaml.safe_dump({"services": services}))

    def compose(self, *argv: str) -> None:
        docker("compose", "--ansi", "never", "--project-name", self.name, "--file", str(self.file), *argv)

    def containers(self, api: EngineApi) -> list[dict[str, Any]]:
        return group_by_project(api.project_containers()).get(self.name, [])


@pytest.mark.usefixtures("engine")
def test_drift_made_by_hand_is_found(prefix: str, tmp_path: Path) -> None:
    project = Project(f"{prefix}-drift", tmp_path)
    api = EngineApi(os.environ)
    project.compose("up", "--detach", "--wait")

    # 1. right after the deploy: the baseline, and nothing differs from it
    deployed = project.containers(api)
    baseline = baseline_of(deployed)
    image = docker("image", "inspect", "--format", "{{.Id}}", TEST_IMAGE)
    assert {name: (s.containers, s.image) for name, s in baseline.services.items()} == {
        "web": (2, image), "db": (1, image)}  # fmt: skip
    assert all(len(s.config_hash) == 64 for s in baseline.services.values())
    assert findings(baseline, deployed) == []

    # 2. drift, one kind at a time, each as an operator would make it
    web_1, web_2, db_1 = (f"{project.name}-{s}" for s in ("web-1", "web-2", "db-1"))
    docker("stop", "--time", "1", web_1)
    [stopped] = findings(baseline, project.containers(api))
    assert (stopped.kind, stopped.service, stopped.container) == ("stopped", "web", web_1)
    assert re.fullmatch(rf"container {web_1} exited \(Exited \(\d+\) .* ago\)", stopped.detail), stopped.detail
    docker("rm", "--force", web_2)
    project.write(mode="two")
    project.compose("up", "--detach", "--no-deps", "db")
    docker("run", "--detach", "--name", f"{project.name}-intruder", "--init",
           "--label", f"com.docker.compose.project={project.name}", "--label", "com.docker.compose.service=intruder",
           TEST_IMAGE, "sleep", "3600")  # fmt: skip

    # 3. all of it found, in order, and one-off containers are none of it
    project.compose("run", "--detach", "--no-deps", "db", "true")
    found = findings(baseline, project.containers(api))
    assert [(f.kind, f.service, f.container) for f in found] == [
        ("missing", "web", None),
        ("stopped", "web", web_1),
        ("config_changed", "db", db_1),
        ("extra", "intruder", f"{project.name}-intruder"),
    ]
    assert found[0].detail == "service web is missing a container: 1 of 2 left"
    new_hash = baseline_of(project.containers(api)).services["db"].config_hash
    assert found[2].detail == (
        f"container {db_1} runs config {new_hash[:12]}, the last good deploy {baseline.services['db'].config_hash[:12]}"
    )
    assert "MODE" not in " ".join(f.detail for f in found)


@pytest.mark.usefixtures("engine")
def test_one_request_lists_every_project_and_no_other_container(prefix: str, tmp_path: Path) -> None:
    first, second = Project(f"{prefix}-one", tmp_path / "one"), Project(f"{prefix}-two", tmp_path / "two")
    first.compose("up", "--detach")
    second.compose("create")  # never started: listed all the same (all=1)
    plain = docker("run", "--detach", "--name", f"{prefix}-plain", "--init", TEST_IMAGE, "sleep", "3600")
    try:
        grouped = group_by_project(EngineApi(os.environ).project_containers())
    finally:
        docker("rm", "--force", plain)
    assert len(grouped[first.name]) == len(grouped[second.name]) == 3
    assert {c["State"] for c in grouped[second.name]} == {"created"}
    assert plain not in {c["Id"] for group in grouped.values() for c in group}


class _FlakyEngine(BaseHTTPRequestHandler):
    """An engine that fails its first container listing (HTTP 500), then answers with none."""

    requests: list[str]

    def do_GET(self) -> None:
        self.requests.append(self.path)
        if self.path == "/version":
            self._answer(200, {"ApiVersion": "1.41", "MinAPIVersion": "1.24", "Version": "20.10.24"})
        elif urlsplit(self.path).path == "/v1.41/containers/json":
            listings = [r for r in self.requests if "/containers/json" in r]
            self._answer(500, {"message": "boom"}) if len(listings) == 1 else self._answer(200, [])
        else:
            self._answer(404, {"message": "not here"})

    def _answer(self, code: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def _flaky_engine() -> Iterator[tuple[int, list[str]]]:
    requests: list[str] = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("Engine", (_FlakyEngine,), {"requests": requests}))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1], requests
    finally:
        server.shutdown()
        server.server_close()


def test_a_failed_listing_raises_and_the_next_one_connects_anew() -> None:
    with _flaky_engine() as (port, requests):
        api = EngineApi({"DOCKER_HOST": f"tcp://127.0.0.1:{port}"})
        with pytest.raises(DockerException, match="boom"):
            api.project_containers()
        assert api.project_containers() == []
    assert [urlsplit(r).path for r in requests] == ["/version", "/v1.41/containers/json"] * 2
    query = parse_qs(urlsplit(requests[1]).query)
    assert (query["all"], query["filters"]) == (["1"], ['{"label": ["com.docker.compose.project"]}'])


def test_an_engine_that_is_not_there_raises(tmp_path: Path) -> None:
    with pytest.raises(DockerException):
        EngineApi({"DOCKER_HOST": f"unix://{tmp_path}/docker.sock"}).project_containers()


@pytest.mark.usefixtures("engine")
def test_a_tag_built_over_under_a_running_project_is_an_image_change(prefix: str, tmp_path: Path) -> None:
    """The same tag, another image (a `docker pull` or build of a newer one): the running containers still run
    the old one, and the engine lists them by its id; compose would recreate them at the next `up`."""
    tag = f"{prefix}-img:1"

    def build(version: str) -> str:
        dockerfile = f"FROM {TEST_IMAGE}\nLABEL deployer-test-version={version}\n"
        subprocess.run(["docker", "build", "--quiet", "--tag", tag, "-"], input=dockerfile, text=True,
                       capture_output=True, check=True)  # fmt: skip
        return docker("image", "inspect", "--format", "{{.Id}}", tag)

    first = build("1")
    try:
        name = f"{prefix}-tagged"
        file = tmp_path / "compose.yaml"
        file.write_text(yaml.safe_dump({"services": {"app": service(image=tag, healthcheck=False)}}))
        docker("compose", "--project-name", name, "--file", str(file), "up", "--detach")
        api = EngineApi(os.environ)
        deployed = group_by_project(api.project_containers(name))[name]
        baseline = baseline_of(deployed)
        assert (baseline.services["app"].image, baseline.services["app"].image_ref) == (first, tag)
        assert findings(baseline, deployed) == []
        second = build("2")
        assert second != first
        [moved] = findings(baseline, group_by_project(api.project_containers(name))[name])
        assert (moved.kind, moved.container) == ("image_changed", f"{name}-app-1")
        assert moved.detail == f"container {name}-app-1 runs {first[7:19]}, but {tag} names another image now"
    finally:
        docker("compose", "--project-name", f"{prefix}-tagged", "down", "--remove-orphans")
        subprocess.run(["docker", "image", "rm", "--force", tag, first], capture_output=True, check=False)
