"""The deployer in a container: does the engine see DEPLOYER_STATE_DIR at the same path?
(tests/e2e/test_image.py starts the real image on the real engine.)"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest

from deployer.apply.beside import check_beside_engine, own_container_id, socket_problem, state_dir_problem
from deployer.errors import ConfigError
from deployer.runner import Completed

ID = "a" * 64
MOUNTINFO = f"""\
812 790 0:66 / / rw,relatime master:1 - overlay overlay rw,lowerdir=/var/lib/docker/overlay2/l/X
830 812 254:1 /docker/containers/{ID}/resolv.conf /etc/resolv.conf rw,relatime - ext4 /dev/vda1 rw
831 812 254:1 /docker/containers/{ID}/hostname /etc/hostname rw,relatime - ext4 /dev/vda1 rw
"""
STATE = PurePosixPath("/var/lib/deployer")


def bind(source: str, destination: str) -> dict[str, object]:
    return {"Type": "bind", "Source": source, "Destination": destination}


def test_the_own_container_is_found_from_the_files_the_engine_mounts_into_it() -> None:
    assert own_container_id(MOUNTINFO) == ID
    assert own_container_id("25 1 0:22 / / rw - ext4 /dev/sda1 rw\n") is None  # a host, not a container


@pytest.mark.parametrize(
    "mounts",
    [
        [bind("/var/lib/deployer", "/var/lib/deployer")],
        [bind("/var/lib", "/var/lib")],  # a parent at its own path holds the state dir at its own path too
        [bind("/srv/x", "/var"), bind("/var/lib/deployer", "/var/lib/deployer")],  # the closest mount counts
    ],
)
def test_a_state_dir_from_the_same_host_path_is_fine(mounts: list[dict[str, object]]) -> None:
    assert state_dir_problem(mounts, STATE) is None


def test_a_state_dir_from_another_host_path_names_both_and_the_fix() -> None:
    problem = state_dir_problem([bind("/srv/deployer", "/var/lib/deployer")], STATE)
    assert problem is not None
    assert "mounted from /srv/deployer on the Docker host, not from /var/lib/deployer" in problem
    assert "volumes: - /srv/deployer:/srv/deployer, DEPLOYER_STATE_DIR=/srv/deployer" in problem


def test_a_named_volume_or_no_mount_is_refused() -> None:
    volume = {"Type": "volume", "Name": "state", "Source": "/var/lib/docker/volumes/state/_data",
              "Destination": "/var/lib/deployer"}  # fmt: skip
    assert "the volume state" in (state_dir_problem([volume], STATE) or "")
    assert "is not mounted from the Docker host" in (state_dir_problem([bind("/x", "/other")], STATE) or "")


def test_a_missing_socket_is_named_and_a_remote_engine_is_not_checked(tmp_path: Path) -> None:
    """(A socket whose group is missing: tests/e2e/test_image.py, as the image's own user.)"""
    missing = socket_problem({"DOCKER_HOST": f"unix://{tmp_path}/none"}, uid=1, groups=[])
    assert missing is not None and "no Docker socket there" in missing
    assert socket_problem({"DOCKER_HOST": "ssh://deploy@host"}, uid=1, groups=[]) is None


class Inspect:
    def __init__(self, completed: Completed) -> None:
        self.completed = completed
        self.argv: list[str] = []

    def run(self, argv, *, env, cwd=None, timeout=None, stdin=None):  # type: ignore[no-untyped-def]
        self.argv = list(argv)
        return self.completed

    def interactive(self, argv, *, env, cwd=None):  # type: ignore[no-untyped-def]
        raise AssertionError


def test_the_check_asks_the_engine_about_its_own_container_and_refuses(tmp_path: Path) -> None:
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(MOUNTINFO)
    state = tmp_path / "state"
    mounts = f'[{{"Type":"bind","Source":"/elsewhere","Destination":"{state}"}}]'
    runner = Inspect(Completed((), 0, mounts, "", 0.0))
    with pytest.raises(ConfigError, match="mounted from /elsewhere on the Docker host"):
        check_beside_engine(runner, {"DOCKER_HOST": "tcp://engine:2375"}, state, mountinfo=mountinfo)
    assert runner.argv == ["docker", "container", "inspect", "--format", "{{json .Mounts}}", ID]


def test_an_engine_that_does_not_know_the_container_lets_it_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(MOUNTINFO)
    runner = Inspect(Completed((), 1, "", "Error: No such container", 0.0))
    check_beside_engine(runner, {"DOCKER_HOST": "tcp://engine:2375"}, tmp_path, mountinfo=mountinfo)
    assert "cannot tell" in caplog.text and "No such container" in caplog.text


def test_outside_a_container_nothing_is_asked(tmp_path: Path) -> None:
    runner = Inspect(Completed((), 0, "[]", "", 0.0))
    check_beside_engine(runner, {}, tmp_path, mountinfo=tmp_path / "missing")
    assert runner.argv == []
