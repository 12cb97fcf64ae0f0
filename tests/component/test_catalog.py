"""load_catalog over real files: every bad input is refused naming its file and field, good ones load."""

from __future__ import annotations

import os
import re
import textwrap
from collections.abc import Callable
from pathlib import Path, PurePosixPath

import pytest

from deployer.errors import CatalogError
from deployer.model import Directory
from deployer.plan.catalog import COMPOSE_FILE_NAMES, load_catalog
from deployer.plan.diff import reasons_for

SERVICES = "services:\n  main:\n    image: busybox\n"

#: a hand-made but well-formed SOPS dotenv file (sops keeps keys in clear and encrypts values)
SOPS_DOTENV = """\
DB_PASSWORD=ENC[AES256_GCM,data:q2Vt0A==,iv:7n0Ck1mB2n8ZCz0bVfM8XJ0m0Kq9fKQ2r4gwP1qZ0o4=,tag:Y2Q5==,type:str]
API_TOKEN=ENC[AES256_GCM,data:Zm9vYmFy,iv:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=,tag:QUJD==,type:str]
sops_age__list_0__map_enc=-----BEGIN AGE ENCRYPTED FILE-----\\nYWdl\\n-----END AGE ENCRYPTED FILE-----\\n
sops_age__list_0__map_recipient=age1qyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqs3290gq
sops_lastmodified=2026-01-02T03:04:05Z
sops_mac=ENC[AES256_GCM,data:bWFj,iv:aXY=,tag:dGFn,type:str]
sops_unencrypted_suffix=_unencrypted
sops_version=3.11.0
"""

SOPS_YAML = """\
db_password: ENC[AES256_GCM,data:q2Vt0A==,iv:aXY=,tag:dGFn,type:str]
smtp_user: ENC[AES256_GCM,data:dXNlcg==,iv:aXY=,tag:dGFn,type:str]
sops:
    age:
        - recipient: age1qyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqs3290gq
          enc: |
            -----BEGIN AGE ENCRYPTED FILE-----
            YWdl
            -----END AGE ENCRYPTED FILE-----
    lastmodified: "2026-01-02T03:04:05Z"
    mac: ENC[AES256_GCM,data:bWFj,iv:aXY=,tag:dGFn,type:str]
    unencrypted_suffix: _unencrypted
    version: 3.11.0
"""


SWARM = "x-deployer: {engine: swarm}\nservices:\n"
WEB = "stacks/web/compose.yaml"


def write(root: Path, relative: str, text: str) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def stack(root: Path, name: str, block: str = "", *, filename: str = "compose.yaml") -> Path:
    """Write stacks/<name>/<filename>; `block` is the raw x-deployer YAML (indented by the caller's dedent)."""
    head = "x-deployer:\n" + textwrap.indent(textwrap.dedent(block).rstrip() + "\n", "  ") if block else ""
    return write(root, f"stacks/{name}/{filename}", head + SERVICES)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "repo").mkdir()
    write(tmp_path, "outside/stolen.env", SOPS_DOTENV)
    return tmp_path / "repo"


def problems(root: Path) -> tuple[CatalogError, str]:
    with pytest.raises(CatalogError) as caught:
        load_catalog(root)
    return caught.value, "\n".join(caught.value.details)


def _symlinked_secret(root: Path) -> None:
    (root / "secrets").mkdir()
    (root / "secrets/web.env").symlink_to(root.parent / "outside/stolen.env")
    stack(root, "web", "secrets: [secrets/web.env]")


def _symlinked_secret_folder(root: Path) -> None:
    (root / "secrets").symlink_to(root.parent / "outside")
    stack(root, "web", "secrets: [secrets/stolen.env]")


def _symlink_in_stack(root: Path) -> None:
    stack(root, "web")
    (root / "stacks/web/conf").symlink_to(root.parent / "outside")


def _symlinked_stack_folder(root: Path) -> None:
    stack(root.parent / "outside", "web")
    (root / "stacks").mkdir()
    (root / "stacks/web").symlink_to(root.parent / "outside/stacks/web")


BAD: list[tuple[str, Callable[[Path], object], str]] = [
    ("unknown dependency", lambda r: stack(r, "web", "depends_on: [db]"),
     r"stacks/web/compose\.yaml: x-deployer\.depends_on\[0\]: unknown stack 'db'"),
    ("dependency index", lambda r: (stack(r, "db"), stack(r, "web", "depends_on: [db, db, ghost]")),
     r"stacks/web/compose\.yaml: x-deployer\.depends_on\[2\]: unknown stack 'ghost'"),
    ("self dependency", lambda r: stack(r, "web", "depends_on: [web]"),
     r"stacks/web/compose\.yaml: x-deployer\.depends_on\[0\]: a stack cannot depend on itself"),
    ("cycle", lambda r: (stack(r, "a", "depends_on: [b]"), stack(r, "b", "depends_on: [c]"),
                         stack(r, "c", "depends_on: [a]")),
     r"stacks/[abc]/compose\.yaml: x-deployer\.depends_on: dependency cycle: "
     r"(a -> b -> c -> a|b -> c -> a -> b|c -> a -> b -> c)"),
    ("missing secret", lambda r: stack(r, "web", "secrets: [secrets/web.env]"),
     r"stacks/web/compose\.yaml: x-deployer\.secrets\[0\]: secrets/web\.env does not exist"),
    ("dotdot secret", lambda r: stack(r, "web", "secrets: [secrets/../../outside/stolen.env]"),
     r"stacks/web/compose\.yaml: x-deployer\.secrets\[0\]: secrets/\.\./\.\./outside/stolen\.env escapes"),
    ("absolute secret", lambda r: stack(r, "web", "secrets: [/etc/passwd]"),
     r"stacks/web/compose\.yaml: x-deployer\.secrets\[0\]: /etc/passwd escapes the repository"),
    ("symlinked secret", _symlinked_secret,
     r"stacks/web/compose\.yaml: x-deployer\.secrets\[0\]: secrets/web\.env resolves, through a symlink, out of"),
    ("secret under a symlinked folder", _symlinked_secret_folder,
     r"stacks/web/compose\.yaml: x-deployer\.secrets\[0\]: .*(symlink|escapes|out of the repository)"),
    ("symlink in stack", _symlink_in_stack, r"stacks/web/conf: symlink points out of the repository"),
    ("symlinked stack folder", _symlinked_stack_folder, r"stacks/web\b.*(symlink|out of the repository)"),
    ("bad folder name", lambda r: stack(r, "Web"), r"stacks/Web: invalid stack name"),
    ("no compose file", lambda r: write(r, "stacks/web/README.md", "hi"), r"stacks/web: no compose\.yaml"),
    ("unknown key", lambda r: stack(r, "web", "depend_on: [db]"),
     r"stacks/web/compose\.yaml: x-deployer\.depend_on: unknown key"),
    ("depends_on not a list", lambda r: (stack(r, "db"), stack(r, "web", "depends_on: db")),
     r"stacks/web/compose\.yaml: x-deployer\.depends_on: must be a list"),
    ("bad dependency name", lambda r: stack(r, "web", "depends_on: [Db]"),
     r"stacks/web/compose\.yaml: x-deployer\.depends_on\[0\]: 'Db' is not a stack name"),
    ("negative wait_timeout", lambda r: stack(r, "web", "wait_timeout: -1"),
     r"stacks/web/compose\.yaml: x-deployer\.wait_timeout: -1 is not"),
    ("string wait_timeout", lambda r: stack(r, "web", "wait_timeout: '60'"),
     r"stacks/web/compose\.yaml: x-deployer\.wait_timeout: '60' is not"),
    ("unquoted octal mode", lambda r: stack(r, "web", "directories:\n  - {path: /srv/web, mode: 0750}"),
     r"stacks/web/compose\.yaml: x-deployer\.directories\[0\]\.mode: .*quoted octal"),
    ("relative directory", lambda r: stack(r, "web", "directories: [{path: data/web}]"),
     r"stacks/web/compose\.yaml: x-deployer\.directories\[0\]\.path: 'data/web' is not an absolute path"),
    ("yaml syntax", lambda r: write(r, "stacks/web/compose.yml", "services: [\n  main: {\n"),
     r"stacks/web/compose\.yml: cannot be read as YAML"),
    ("plaintext dotenv secret", lambda r: (write(r, "secrets/web.env", "PASSWORD=hunter2\n"),
                                           stack(r, "web", "secrets: [secrets/web.env]")),
     r"stacks/web/compose\.yaml: x-deployer\.secrets(\[0\])?: secrets/web\.env is not SOPS-encrypted"),
    ("plaintext yaml secret", lambda r: (write(r, "secrets/web.yaml", "password: hunter2\n"),
                                         stack(r, "web", "secrets: [secrets/web.yaml]")),
     r"stacks/web/compose\.yaml: x-deployer\.secrets(\[0\])?: secrets/web\.yaml is not SOPS-encrypted"),
    ("unknown engine", lambda r: stack(r, "web", "engine: kubernetes"),
     r"stacks/web/compose\.yaml: x-deployer\.engine: 'kubernetes' is not one of: compose, swarm"),
    ("bad docker_host", lambda r: stack(r, "web", "docker_host: 'ftp://nas'"),
     r"stacks/web/compose\.yaml: x-deployer\.docker_host: 'ftp://nas' is not ssh://"),
    ("docker_host with spaces", lambda r: stack(r, "web", "docker_host: 'ssh://a b'"),
     r"x-deployer\.docker_host: 'ssh://a b' is not"),
    ("swarm refuses mem_limit", lambda r: write(r, WEB, SWARM + "  app: {image: x, mem_limit: 1}\n"),
     r"stacks/web/compose\.yaml: services\.app\.mem_limit: refused by docker stack deploy: use deploy\.resources"),
    ("swarm needs an image", lambda r: write(r, WEB, SWARM + "  app: {build: .}\n"),
     r"stacks/web/compose\.yaml: services\.app\.image: missing: every service of a swarm stack needs an image"),
]  # fmt: skip


@pytest.mark.parametrize(("setup", "expected"), [case[1:] for case in BAD], ids=[case[0] for case in BAD])
def test_bad_input_names_file_and_field(root: Path, setup: Callable[[Path], object], expected: str) -> None:
    setup(root)
    error, details = problems(root)
    assert re.search(expected, details), details
    assert error.message.startswith(error.details[0])
    assert error.code == "catalog_invalid"
    assert error.exit_code == 2
    assert "hunter2" not in details  # a plaintext secret's value is never echoed


def test_several_problems_are_all_reported(root: Path) -> None:
    stack(root, "web", "depend_on: [api]\nwait_timeout: soon")
    stack(root, "api", "depends_on: [ghost]\nsecrets: [/etc/shadow]")
    write(root, "stacks/Bad/compose.yaml", SERVICES)
    error, details = problems(root)
    for expected in (
        "stacks/Bad: invalid stack name",
        "stacks/web/compose.yaml: x-deployer.depend_on: unknown key",
        "stacks/web/compose.yaml: x-deployer.wait_timeout: 'soon' is not",
        "stacks/api/compose.yaml: x-deployer.secrets[0]: /etc/shadow escapes",
    ):
        assert expected in details, details
    assert len(error.details) >= 4
    assert error.message.endswith(f"(and {len(error.details) - 1} more)")


@pytest.mark.parametrize("filename", COMPOSE_FILE_NAMES)
def test_every_compose_file_name_is_accepted(root: Path, filename: str) -> None:
    stack(root, "web", filename=filename)
    catalog = load_catalog(root)
    assert list(catalog) == ["web"]
    assert catalog["web"].compose_file == PurePosixPath("stacks/web") / filename


def test_defaults_without_x_deployer(root: Path) -> None:
    stack(root, "web")
    write(root, "stacks/.hidden/compose.yaml", SERVICES)
    write(root, "stacks/notes.md", "not a stack")
    catalog = load_catalog(root)
    assert list(catalog) == ["web"]
    web = catalog["web"]
    assert web.folder == PurePosixPath("stacks/web")
    assert (web.depends_on, web.secrets, web.networks, web.directories, web.watch) == ((), (), (), (), ())
    assert web.wait_timeout == 300
    assert dict(web.secret_keys) == {}


def test_no_stacks_folder_is_an_empty_catalog(root: Path) -> None:
    assert len(load_catalog(root)) == 0


def test_a_full_block(root: Path) -> None:
    write(root, "secrets/web.env", SOPS_DOTENV)
    write(root, "secrets/web.yaml", SOPS_YAML)
    stack(root, "db", "wait_timeout: 0")
    stack(
        root,
        "web",
        """\
        depends_on: [db, db]
        secrets: [secrets/web.env, secrets/web.yaml]
        networks: [traefik_public]
        directories:
          - {path: /srv/web//data/, owner: "1000:1000", mode: "0750"}
          - /srv/web/cache
        wait_timeout: 60
        watch: ["shared/tls/**", shared/common]
        """,
    )
    catalog = load_catalog(root)
    web = catalog["web"]
    assert catalog["db"].wait_timeout == 0
    assert web.depends_on == ("db",)
    assert web.secrets == (PurePosixPath("secrets/web.env"), PurePosixPath("secrets/web.yaml"))
    assert web.networks == ("traefik_public",)
    assert web.directories == (Directory("/srv/web/data", "1000:1000", 0o750), Directory("/srv/web/cache"))
    assert web.wait_timeout == 60
    assert web.watch == ("shared/tls/**", "shared/common")
    assert dict(web.secret_keys) == {
        PurePosixPath("secrets/web.env"): ("DB_PASSWORD", "API_TOKEN"),
        PurePosixPath("secrets/web.yaml"): ("db_password", "smtp_user"),
    }


def test_a_symlink_inside_the_repository_is_fine(root: Path) -> None:
    write(root, "shared/nginx.conf", "events {}\n")
    stack(root, "web")
    os.symlink("../../shared/nginx.conf", root / "stacks/web/nginx.conf")
    assert list(load_catalog(root)) == ["web"]


def test_compose_variables_must_come_from_secrets_env_file_or_defaults(tmp_path: Path) -> None:
    write(tmp_path, "secrets/app.env", SOPS_DOTENV)
    write(tmp_path, "stacks/app/.env", "FROM_ENV_FILE=1\n")
    write(
        tmp_path,
        "stacks/app/compose.yaml",
        "x-deployer:\n  secrets: [secrets/app.env]\n"
        "services:\n  app:\n    image: x\n    environment:\n"
        "      A: ${DB_PASSWORD}\n      B: ${FROM_ENV_FILE}\n      C: ${WITH_DEFAULT:-x}\n"
        "      D: ${MISSING_KEY}\n      E: ${ALSO_MISSING:?needed}\n      F: $$LITERAL\n      G: $HOME\n",
    )
    with pytest.raises(CatalogError) as caught:
        load_catalog(tmp_path)
    assert caught.value.details == (
        "stacks/app/compose.yaml: ${ALSO_MISSING} has no default and is not a key of secrets/app.env,"
        " the stack's .env or shared.env",
        "stacks/app/compose.yaml: ${MISSING_KEY} has no default and is not a key of secrets/app.env,"
        " the stack's .env or shared.env",
    )


def test_shared_env_gives_every_stack_its_variables_under_the_stacks_own_env(tmp_path: Path) -> None:
    write(tmp_path, "stacks/shared.env", "# every stack\nDOMAIN=example.org\nACME_EMAIL=ops@example.org\n")
    write(tmp_path, "stacks/app/.env", "DOMAIN=app.example.org\n")
    for name in ("app", "web"):
        write(tmp_path, f"stacks/{name}/compose.yaml",
              "services:\n  s:\n    image: x\n    environment:\n      D: ${DOMAIN:?set DOMAIN in stacks/shared.env}\n"
              "      E: ${ACME_EMAIL}\n")  # fmt: skip
    catalog = load_catalog(tmp_path)
    assert dict(catalog["app"].variables) == {"DOMAIN": "app.example.org", "ACME_EMAIL": "ops@example.org"}
    assert dict(catalog["web"].variables) == {"DOMAIN": "example.org", "ACME_EMAIL": "ops@example.org"}
    assert catalog["web"].shared_file == PurePosixPath("stacks/shared.env")
    assert reasons_for(catalog["web"], ["stacks/shared.env"]) == ("stacks/shared.env",)

    write(tmp_path, "stacks/shared.env", "ACME_EMAIL=ops@example.org\n")
    with pytest.raises(CatalogError) as caught:
        load_catalog(tmp_path)
    assert caught.value.details == (
        "stacks/web/compose.yaml: ${DOMAIN} has no default and is not a key of no secret file, the stack's .env"
        " or shared.env",
    )


def test_a_shared_env_that_is_a_symlink_is_refused(tmp_path: Path) -> None:
    write(tmp_path, "elsewhere.env", "DOMAIN=x\n")
    (tmp_path / "stacks").mkdir()
    (tmp_path / "stacks/shared.env").symlink_to(tmp_path / "elsewhere.env")
    write(tmp_path, "stacks/app/compose.yaml", "services:\n  s:\n    image: x\n")
    with pytest.raises(CatalogError, match=r"stacks/shared\.env: must be a regular file"):
        load_catalog(tmp_path)


def test_directory_paths_may_use_variables_with_defaults(tmp_path: Path) -> None:
    write(
        tmp_path,
        "stacks/app/compose.yaml",
        'x-deployer:\n  directories:\n    - {path: "${DATA_ROOT:-/mnt/data}/app", mode: "0750"}\n'
        "services:\n  app:\n    image: x\n",
    )
    [directory] = load_catalog(tmp_path)["app"].directories
    assert directory.path == "${DATA_ROOT:-/mnt/data}/app"
    write(tmp_path, "stacks/app/compose.yaml",
          "x-deployer:\n  directories: [\"${DATA_ROOT}/app\"]\nservices:\n  app:\n    image: x\n")  # fmt: skip
    with pytest.raises(CatalogError, match=r"x-deployer\.directories\[0\]\.path"):
        load_catalog(tmp_path)


def test_engine_and_docker_host_are_read_and_a_swarm_stack_carries_its_warnings(root: Path) -> None:
    write(root, "stacks/sw/compose.yaml", "x-deployer: {engine: swarm, docker_host: 'ssh://deploy@nas:2222'}\n"
          "services:\n  app: {image: x, restart: always, volumes: ['./data:/data']}\n")  # fmt: skip
    stack(root, "web", "docker_host: nas-context")
    catalog = load_catalog(root)
    assert (catalog["sw"].engine, catalog["sw"].docker_host) == ("swarm", "ssh://deploy@nas:2222")
    assert (catalog["web"].engine, catalog["web"].docker_host) == ("compose", "nas-context")
    assert catalog["sw"].warnings == (
        "stacks/sw/compose.yaml: services.app.restart: ignored by docker stack deploy: use deploy.restart_policy",
        "stacks/sw/compose.yaml: services.app.volumes[0]: relative bind mount './data': on a multi-node swarm it "
        "names a path on whichever node runs the task",
    )
    assert catalog["web"].warnings == ()
