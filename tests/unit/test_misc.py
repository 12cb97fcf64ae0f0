"""Small pure pieces: settings from the environment, redaction, sops and compose argv, console text."""

from __future__ import annotations

import signal
import threading
from pathlib import Path, PurePosixPath

import pytest

from deployer.apply.compose import compose_up_argv
from deployer.apply.secrets import _cause, decrypt_argv, redact
from deployer.cli import stop_on_signal
from deployer.console import format_plan, table
from deployer.errors import ConfigError
from deployer.model import Action, Plan, PlannedStack, Stack
from deployer.settings import Settings

# Settings.from_env -------------------------------------------------------------------------------------------


def test_settings_defaults() -> None:
    settings = Settings.from_env({})
    assert settings.repo_url is None
    assert settings.bind == "127.0.0.1:8000"
    assert settings.branch == "main"
    assert settings.state_dir == Path(".deployer")
    assert settings.stacks_dir == PurePosixPath("stacks")
    assert settings.webhook_secret is None
    assert settings.forge is None
    assert settings.trusted_proxies == ()
    assert settings.poll_interval == 300
    assert settings.prune is False
    assert settings.max_parallel == 4
    assert settings.max_body == 1024 * 1024
    assert settings.docker_env == {}
    assert settings.sops_env == {"SOPS_DISABLE_VERSION_CHECK": "1"}


def test_settings_values_and_passthrough() -> None:
    environ = {
        "DEPLOYER_BRANCH": " prod ",
        "DEPLOYER_POLL_INTERVAL": "0",
        "DEPLOYER_PRUNE": "Yes",
        "DEPLOYER_MAX_PARALLEL": "8",
        "DEPLOYER_TRUSTED_PROXIES": "10.0.0.0/8, ::1",
        "DOCKER_HOST": "unix:///run/docker.sock",
        "SOPS_AGE_KEY_FILE": "/keys/age.txt",
        "AWS_SECRET_ACCESS_KEY": "leak",
    }
    settings = Settings.from_env(environ)
    assert (settings.branch, settings.poll_interval, settings.prune, settings.max_parallel) == ("prod", 0, True, 8)
    assert [str(n) for n in settings.trusted_proxies] == ["10.0.0.0/8", "::1/128"]
    assert settings.docker_env == {"DOCKER_HOST": "unix:///run/docker.sock"}
    assert settings.sops_env["SOPS_AGE_KEY_FILE"] == "/keys/age.txt"
    assert "AWS_SECRET_ACCESS_KEY" not in {**settings.docker_env, **settings.sops_env}


@pytest.mark.parametrize("name", ["DEPLOYER_WEBHOOK_SECRET", "DEPLOYER_FORGE_TOKEN"])
def test_settings_file_twin_wins(tmp_path: Path, name: str) -> None:
    path = tmp_path / "value"
    path.write_text("from-file\n")
    settings = Settings.from_env({name: "from-env", f"{name}_FILE": str(path)})
    attribute = name.removeprefix("DEPLOYER_").lower()
    assert getattr(settings, attribute) == "from-file"
    assert "from-file" not in repr(settings)
    assert getattr(Settings.from_env({name: "from-env"}), attribute) == "from-env"


@pytest.mark.parametrize("name", ["DEPLOYER_WEBHOOK_SECRET", "DEPLOYER_FORGE_TOKEN"])
def test_settings_unreadable_file_twin(tmp_path: Path, name: str) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ConfigError, match=f"^{name}_FILE: ") as caught:
        Settings.from_env({name: "from-env", f"{name}_FILE": str(missing)})
    assert str(missing) in caught.value.message
    assert caught.value.exit_code == 2


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DEPLOYER_MAX_PARALLEL", "four"),
        ("DEPLOYER_MAX_PARALLEL", "0"),
        ("DEPLOYER_MAX_PARALLEL", "1.5"),
        ("DEPLOYER_POLL_INTERVAL", "-1"),
        ("DEPLOYER_MAX_BODY", "1MB"),
        ("DEPLOYER_PRUNE", "maybe"),
        ("DEPLOYER_PRUNE", "2"),
        ("DEPLOYER_TRUSTED_PROXIES", "10.0.0.0/33"),
        ("DEPLOYER_FORGE", "bitbucket"),
    ],
)
def test_settings_bad_value_names_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"^{name}: ") as caught:
        Settings.from_env({name: value})
    assert caught.value.code == "config_invalid"


@pytest.mark.parametrize(
    ("value", "forge"),
    [("github", "github"), ("Gitea", "gitea"), ("forgejo", "forgejo"), ("GITLAB", "gitlab"), ("", None)],
)
def test_settings_forge_choices(value: str, forge: str | None) -> None:
    assert Settings.from_env({"DEPLOYER_FORGE": value}).forge == forge


@pytest.mark.parametrize(
    ("value", "prune"), [("true", True), ("1", True), ("on", True), ("false", False), ("off", False), ("", False)]
)
def test_settings_booleans(value: str, prune: bool) -> None:
    assert Settings.from_env({"DEPLOYER_PRUNE": value}).prune is prune


# redact, decrypt_argv, _cause --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "secrets", "expected"),
    [
        ("user=admin pass=hunter2", ["hunter2"], "user=admin pass=***"),
        ("pw=password123 and pass", ["pass", "password123"], "pw=*** and ***"),
        ("pw=password123 and pass", ["password123", "pass"], "pw=*** and ***"),
        ("key abcd here", ["abcd"], "key *** here"),
        # failures: values under 4 characters stay, or every line would be mangled
        ("a1 abc yes", ["a1", "abc", "yes"], "a1 abc yes"),
        ("nothing here", [], "nothing here"),
        ("nothing here", [""], "nothing here"),
    ],
)
def test_redact(text: str, secrets: list[str], expected: str) -> None:
    assert redact(text, secrets) == expected


@pytest.mark.parametrize(
    ("path", "input_type"),
    [
        ("secrets/app.env", "dotenv"),
        ("secrets/app.yaml", "yaml"),
        ("secrets/app.yml", "yaml"),
        ("secrets/app.json", "json"),
        ("secrets/app.bin", "binary"),
    ],
)
def test_decrypt_argv(path: str, input_type: str) -> None:
    argv = decrypt_argv(PurePosixPath(path))
    assert argv == ["sops", "decrypt", "--input-type", input_type, "--output-type", "json", path]


@pytest.mark.parametrize(
    ("returncode", "stderr", "contains"),
    [
        (128, "Failed to get the data key", "no age identity can decrypt it"),
        (51, "", "MAC mismatch"),
        (1, "Error unmarshalling input: sops metadata not found", "not SOPS-encrypted"),
        (3, "line one\n  the last line  \n\n", "sops exited 3: the last line"),
        (3, "", "sops exited 3: no message"),
    ],
)
def test_cause(returncode: int, stderr: str, contains: str) -> None:
    assert contains in _cause(returncode, stderr)


# compose_up_argv ---------------------------------------------------------------------------------------------


def web(wait_timeout: int, compose: str = "compose.yaml") -> Stack:
    folder = PurePosixPath("stacks/web")
    return Stack(name="web", folder=folder, compose_file=folder / compose, wait_timeout=wait_timeout)


def after(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


@pytest.mark.parametrize("compose", ["compose.yaml", "docker-compose.yml"])
def test_compose_up_argv_waits(tmp_path: Path, compose: str) -> None:
    argv = compose_up_argv(web(45, compose), tmp_path)
    assert argv[:2] == ["docker", "compose"]
    assert after(argv, "--project-name") == "web"
    assert after(argv, "--project-directory") == str(tmp_path / "stacks" / "web")
    assert after(argv, "--file") == str(tmp_path / "stacks" / "web" / compose)
    up = argv.index("up")
    assert argv.index("--project-name") < up  # global options come before the subcommand
    assert {"--detach", "--remove-orphans", "--wait"} <= set(argv[up:])
    assert after(argv, "--wait-timeout") == "45"


def test_compose_up_argv_forced_recreates_before_waiting(tmp_path: Path) -> None:
    argv = compose_up_argv(web(30), tmp_path, force=True)
    assert argv[argv.index("up") :] == ["up", "--detach", "--remove-orphans", "--force-recreate", "--wait",
                                        "--wait-timeout", "30"]  # fmt: skip


def test_compose_up_argv_without_wait(tmp_path: Path) -> None:
    argv = compose_up_argv(web(0), tmp_path)
    assert "--wait" not in argv
    assert "--wait-timeout" not in argv
    assert argv[argv.index("up") :] == ["up", "--detach", "--remove-orphans"]


# console -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "rows", "expected"),
    [
        (["A", "BB"], [["xxx", "y"], ["z", "w"]], "A    BB\nxxx  y\nz    w"),
        (["NAME", "STATE", "WHY"], [["a", "ok", ""]], "NAME  STATE  WHY\na     ok"),
        (["X", "Y"], [], "X  Y"),
        (["ONE"], [["long value"]], "ONE\nlong value"),
    ],
)
def test_table(header: list[str], rows: list[list[str]], expected: str) -> None:
    assert table(header, rows) == expected


def test_format_plan() -> None:
    plan = Plan(
        target="1234567890abcdef" * 2,
        base="fedcba0987654321" * 2,
        stacks=(
            PlannedStack("old", Action.ORPHANED, ("folder deleted",)),
            PlannedStack("db", Action.DEPLOY, ("stacks/db/compose.yaml", "secrets/db.env")),
            PlannedStack("api", Action.DEPLOY, ("first deploy",), depends_on=("db",)),
        ),
        order=(("db",), ("api",)),
    )
    assert format_plan(plan).splitlines() == [
        "plan fedcba098765 -> 1234567890ab",
        "STACK  ACTION    WHY",
        "old    orphaned  folder deleted",
        "db     deploy    stacks/db/compose.yaml, secrets/db.env",
        "api    deploy    first deploy",
        "order: {db} -> {api}",
    ]


def test_format_empty_plan() -> None:
    plan = Plan(target="abc123", base=None, stacks=(), order=())
    assert format_plan(plan) == "plan nothing -> abc123\nno stack is affected"


def test_the_worker_stop_handler_does_not_wait_for_the_lock_its_signal_interrupted() -> None:
    """A signal is handled in the main thread between two bytecodes, possibly while that thread holds the
    stop event's lock inside stop.wait(), or while a first handler does. Setting the event right there would
    wait for that lock forever; the handler must return and leave the setting to another thread."""
    stop = threading.Event()
    handler = stop_on_signal(stop)
    returned = threading.Event()

    def interrupted_main_thread() -> None:
        with stop._cond:  # type: ignore[attr-defined]  # what stop.wait() holds when the signal lands
            handler(signal.SIGTERM, None)
            returned.set()

    thread = threading.Thread(target=interrupted_main_thread, daemon=True)
    thread.start()
    assert returned.wait(5), "the handler blocked on the event's lock"
    assert stop.wait(5)
