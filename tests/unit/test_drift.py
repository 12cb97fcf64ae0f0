"""Drift's pure core: a baseline from one project's container summaries, and findings against it.

Summaries are shaped as `GET /containers/json?all=1` returns them (Engine API 1.41-1.45). The rules are
table-tested first, then properties over random worlds: findings never raise, are sorted and one short line
each; a world has no findings against its own baseline; removing one container is exactly one "missing".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deployer.plan.drift import (
    DETAIL_LIMIT,
    KINDS,
    Baseline,
    Finding,
    ServiceBaseline,
    baseline_of,
    findings,
    group_by_project,
    unreachable,
)

PROJECT = "monitoring"
HASH = "c" * 64
OTHER_HASH = "d" * 64
IMAGE = "sha256:" + "a" * 64
OTHER_IMAGE = "sha256:" + "b" * 64
SETTINGS = settings(max_examples=150, deadline=None)


def summary(
    service: str | None,
    number: int = 1,
    *,
    project: str = PROJECT,
    state: str = "running",
    status: str = "Up 5 minutes (healthy)",
    config_hash: str | None = HASH,
    image: str = IMAGE,
    oneoff: bool = False,
    name: str | None = None,
    **labels: str,
) -> dict[str, Any]:
    """One container summary as the engine lists it, named as compose names replicas."""
    tags = {"com.docker.compose.project": project, "com.docker.compose.oneoff": "True" if oneoff else "False",
            "com.docker.compose.container-number": str(number), **labels}  # fmt: skip
    if service is not None:
        tags["com.docker.compose.service"] = service
    if config_hash is not None:
        tags["com.docker.compose.config-hash"] = config_hash
    return {
        "Id": f"{number:02}{service or 'x'}".ljust(64, "0"),
        "Names": [f"/{name or f'{project}-{service}-{number}'}"],
        "Image": "grafana/grafana:11.1.0",
        "ImageID": image,
        "Labels": tags,
        "State": state,
        "Status": status,
    }


def world() -> list[dict[str, Any]]:
    """grafana with two replicas and prometheus with one, all running as deployed."""
    return [summary("grafana", 1), summary("grafana", 2), summary("prometheus", 1)]


BASELINE = baseline_of(world())


def changed(index: int, **fields: Any) -> list[dict[str, Any]]:
    """world() with container `index` replaced by one made with `fields`."""
    containers = world()
    old = containers[index]
    containers[index] = summary(old["Labels"]["com.docker.compose.service"], index % 2 + 1, **fields)
    return containers


def test_a_baseline_records_hash_image_and_replicas_per_service() -> None:
    ref = "grafana/grafana:11.1.0"
    expected = {"grafana": ServiceBaseline(HASH, IMAGE, 2, image_ref=ref),
                "prometheus": ServiceBaseline(HASH, IMAGE, 1, image_ref=ref)}  # fmt: skip
    assert baseline_of(world()) == Baseline(services=expected)
    assert Baseline.from_dict(BASELINE.as_dict()) == BASELINE  # as the state store keeps it


def test_a_tag_that_names_another_image_now_is_an_image_change_of_the_containers_it_made() -> None:
    containers = world()
    containers[2]["Image"] = IMAGE  # the engine lists the image by id: its tag was pulled or built over
    [finding] = findings(BASELINE, containers)
    assert (finding.kind, finding.container) == ("image_changed", "monitoring-prometheus-1")
    assert finding.detail == "container monitoring-prometheus-1 runs aaaaaaaaaaaa, but grafana/grafana:11.1.0 names " \
        "another image now"  # fmt: skip


def test_a_one_shot_service_that_had_exited_at_its_deploy_is_not_stopped_drift() -> None:
    done = summary("migrate", state="exited", status="Exited (0) 1 minute ago")
    baseline = baseline_of([*world(), done])
    assert baseline.services["migrate"].running is False
    assert findings(baseline, [*world(), done]) == []
    assert [f.kind for f in findings(BASELINE, [*world(), done])] == ["stopped", "extra"]


def test_a_baseline_ignores_one_off_containers_and_containers_of_no_service() -> None:
    found = baseline_of([*world(), summary("grafana", 3, oneoff=True), summary("migrate", oneoff=True), summary(None)])
    assert found == BASELINE


def test_a_baseline_without_image_ids_records_none_and_keeps_what_most_replicas_have() -> None:
    ref = "grafana/grafana:11.1.0"
    assert baseline_of([summary("web", image="")]).services["web"] == ServiceBaseline(HASH, None, 1, image_ref=ref)
    mixed = [summary("web", 1, config_hash=OTHER_HASH), summary("web", 2), summary("web", 3, config_hash=OTHER_HASH)]
    assert baseline_of(mixed).services["web"] == ServiceBaseline(OTHER_HASH, IMAGE, 3, image_ref=ref)
    tie = [summary("web", 1, config_hash=OTHER_HASH), summary("web", 2)]
    assert baseline_of(tie) == baseline_of(list(reversed(tie)))
    assert baseline_of(tie).services["web"].config_hash == HASH


def test_an_identical_world_has_no_findings() -> None:
    assert findings(BASELINE, world()) == []
    assert findings(BASELINE, reversed(world())) == []
    assert findings(Baseline(services={}), []) == []


@pytest.mark.parametrize(
    ("containers", "expected"),
    [
        (changed(0, state="exited", status="Exited (137) 3 minutes ago"),
         Finding("stopped", "grafana", "monitoring-grafana-1",
                 "container monitoring-grafana-1 exited (Exited (137) 3 minutes ago)")),
        (changed(0, state="restarting", status="Restarting (1) 2 seconds ago"),
         Finding("stopped", "grafana", "monitoring-grafana-1",
                 "container monitoring-grafana-1 is restarting (Restarting (1) 2 seconds ago)")),
        (changed(1, state="paused", status="Up 5 minutes (Paused)"),
         Finding("stopped", "grafana", "monitoring-grafana-2",
                 "container monitoring-grafana-2 is paused (Up 5 minutes (Paused))")),
        (changed(1, state="created", status="Created"),
         Finding("stopped", "grafana", "monitoring-grafana-2",
                 "container monitoring-grafana-2 was created but never started (Created)")),
        (changed(1, state="dead", status="Dead"),
         Finding("stopped", "grafana", "monitoring-grafana-2", "container monitoring-grafana-2 is dead (Dead)")),
        (changed(1, state="", status=""),
         Finding("stopped", "grafana", "monitoring-grafana-2", "container monitoring-grafana-2 is in no known state")),
        (changed(2, status="Up 5 minutes (unhealthy)"),
         Finding("unhealthy", "prometheus", "monitoring-prometheus-1",
                 "container monitoring-prometheus-1 is unhealthy (Up 5 minutes (unhealthy))")),
        (changed(2, config_hash=OTHER_HASH),
         Finding("config_changed", "prometheus", "monitoring-prometheus-1",
                 "container monitoring-prometheus-1 runs config dddddddddddd, the last good deploy cccccccccccc")),
        (changed(2, config_hash=None),
         Finding("config_changed", "prometheus", "monitoring-prometheus-1",
                 "container monitoring-prometheus-1 runs config without a hash, the last good deploy cccccccccccc")),
        (changed(0, image=OTHER_IMAGE),
         Finding("image_changed", "grafana", "monitoring-grafana-1",
                 "container monitoring-grafana-1 runs grafana/grafana:11.1.0 aaaaaaaaaaaa -> bbbbbbbbbbbb")),
        ([*world(), summary("intruder", name="sneaky")],
         Finding("extra", "intruder", "sneaky",
                 "container sneaky runs service intruder, which the last good deploy did not have")),
        ([*world(), summary(None, name="loose")],
         Finding("extra", None, "loose", "container loose is in the project but belongs to no compose service")),
        (world()[1:],
         Finding("missing", "grafana", None, "service grafana is missing a container: 1 of 2 left")),
    ],
)  # fmt: skip
def test_each_rule_gives_its_finding(containers: list[dict[str, Any]], expected: Finding) -> None:
    assert findings(BASELINE, containers) == [expected]


@pytest.mark.parametrize(
    "status", ["Up 3 seconds (health: starting)", "Up 5 minutes (healthy)", "Up 5 minutes", "Up Less than a second"]
)
def test_a_running_container_that_is_not_unhealthy_is_no_finding(status: str) -> None:
    assert findings(BASELINE, changed(0, status=status)) == []


def test_a_stopped_container_is_not_also_unhealthy_and_its_other_changes_still_show() -> None:
    kinds = [f.kind for f in findings(BASELINE, changed(0, state="exited", status="Exited (1) (unhealthy)",
                                                         config_hash=OTHER_HASH))]  # fmt: skip
    assert kinds == ["stopped", "config_changed"]


def test_a_service_that_is_gone_is_missing_once_per_replica() -> None:
    found = findings(BASELINE, [summary("prometheus")])
    assert [(f.kind, f.service, f.container) for f in found] == [("missing", "grafana", None)] * 2
    assert found[0].detail == "service grafana is missing a container: 0 of 2 left"
    assert [f.service for f in findings(BASELINE, [])] == ["grafana", "grafana", "prometheus"]


def test_more_replicas_than_at_the_baseline_are_no_finding() -> None:
    assert findings(BASELINE, [*world(), summary("grafana", 3)]) == []


def test_one_off_containers_are_never_drift() -> None:
    run = summary("migrate", oneoff=True, state="exited", status="Exited (0) 1 minute ago", image=OTHER_IMAGE)
    assert findings(BASELINE, [*world(), run, summary("grafana", 3, oneoff=True, config_hash=OTHER_HASH)]) == []


def test_no_image_id_at_the_baseline_or_now_is_no_image_change() -> None:
    baseline = Baseline(services={"web": ServiceBaseline(HASH, None, 1)})
    assert findings(baseline, [summary("web", image=OTHER_IMAGE)]) == []
    assert findings(BASELINE, changed(2, image="")) == []


def test_an_image_known_only_by_id_is_shown_short() -> None:
    containers = changed(2, image=OTHER_IMAGE)
    containers[2]["Image"] = OTHER_IMAGE
    [finding] = findings(BASELINE, containers)
    assert finding.detail == "container monitoring-prometheus-1 runs bbbbbbbbbbbb aaaaaaaaaaaa -> bbbbbbbbbbbb"


def test_findings_are_sorted_by_kind_service_and_container() -> None:
    containers = [
        summary("zeta", name="z-1"),
        summary("grafana", 2, state="exited", status="Exited (1)", image=OTHER_IMAGE),
        summary("alpha", name="a-1"),
        summary("prometheus", status="Up (unhealthy)", config_hash=OTHER_HASH),
    ]
    found = findings(BASELINE, containers)
    assert [(f.kind, f.service, f.container) for f in found] == [
        ("missing", "grafana", None),
        ("stopped", "grafana", "monitoring-grafana-2"),
        ("unhealthy", "prometheus", "monitoring-prometheus-1"),
        ("config_changed", "prometheus", "monitoring-prometheus-1"),
        ("image_changed", "grafana", "monitoring-grafana-2"),
        ("extra", "alpha", "a-1"),
        ("extra", "zeta", "z-1"),
    ]
    assert findings(BASELINE, reversed(containers)) == found


def test_details_are_one_line_cut_at_the_limit() -> None:
    long = changed(0, state="exited", status="Exited (1)\nsecond line\x00" + "x" * 300)
    [finding] = findings(BASELINE, long)
    assert len(finding.detail) == DETAIL_LIMIT
    assert finding.detail.endswith("…")
    assert finding.detail.startswith("container monitoring-grafana-1 exited (Exited (1) second line x")
    assert finding.detail.isprintable()


def test_details_name_no_environment_or_other_labels() -> None:
    leaky = summary(
        "intruder",
        state="exited",
        status="Exited (1)",
        config_hash=OTHER_HASH,
        **{"com.example.token": "hunter2", "com.docker.compose.project.config_files": "/srv/x.yaml"},
    )
    leaky["Env"] = ["PASSWORD=hunter2"]  # not in a summary, but never shown if it were
    containers = [*world(), leaky, {**changed(2, config_hash=OTHER_HASH)[2], "Env": ["PASSWORD=hunter2"]}]
    details = " ".join(f.detail for f in findings(BASELINE, containers))
    assert "hunter2" not in details
    assert "/srv" not in details
    assert OTHER_HASH not in details
    assert OTHER_HASH[:12] in details


def test_an_unreachable_engine_is_one_unknown_finding() -> None:
    [finding] = unreachable("unix:///var/run/docker.sock: Connection refused")
    detail = "the engine could not be asked what runs: unix:///var/run/docker.sock: Connection refused"
    assert finding == Finding("unknown", None, None, detail)
    assert len(unreachable("x" * 1000)[0].detail) == DETAIL_LIMIT


def test_a_finding_as_a_dict_and_its_kinds() -> None:
    assert Finding("missing", "web", None, "gone").as_dict() == {
        "kind": "missing", "service": "web", "container": None, "detail": "gone"}  # fmt: skip
    with pytest.raises(ValueError, match="not 'drifted'"):
        Finding("drifted", None, None, "")


def test_containers_are_grouped_by_project_label() -> None:
    other = summary("web", project="blog")
    loose = {**summary("web"), "Labels": {"com.example.owner": "me"}}
    unlabelled = {**summary("web"), "Labels": None}
    grouped = group_by_project([*world(), other, loose, unlabelled])
    assert list(grouped) == ["blog", PROJECT]
    assert grouped == {"blog": [other], PROJECT: world()}
    assert group_by_project([]) == {}


# properties

SERVICES = st.sampled_from(["web", "db", "worker", "a", "grafana-agent"])
STATES = st.sampled_from(["running", "exited", "created", "restarting", "paused", "dead", "removing"]) | st.text()
STATUSES = st.sampled_from(["Up 5 minutes", "Up 5 minutes (unhealthy)", "Up 3 seconds (health: starting)",
                            "Exited (137) 3 minutes ago", "Created", ""]) | st.text()  # fmt: skip
HASHES = st.sampled_from([HASH, OTHER_HASH, ""]) | st.text(max_size=80)
IMAGES = st.sampled_from([IMAGE, OTHER_IMAGE, ""])
LABEL_TEXT = st.text(max_size=30)


@st.composite
def summaries(draw: st.DrawFn) -> dict[str, Any]:
    """Any well-formed summary: the keys the engine sends, with any text in them."""
    labels: dict[str, str] = draw(st.dictionaries(LABEL_TEXT, LABEL_TEXT, max_size=3))
    labels["com.docker.compose.project"] = PROJECT
    if draw(st.booleans()):
        labels["com.docker.compose.service"] = draw(SERVICES | LABEL_TEXT)
    if draw(st.booleans()):
        labels["com.docker.compose.config-hash"] = draw(HASHES)
    oneoff = draw(st.sampled_from(["True", "False", None]))
    if oneoff is not None:
        labels["com.docker.compose.oneoff"] = oneoff
    return {
        "Id": draw(st.text("0123456789abcdef", max_size=64)),
        "Names": draw(st.lists(st.text().map(lambda n: "/" + n), max_size=2)),
        "Image": draw(st.sampled_from(["grafana/grafana:11", IMAGE, ""]) | st.text()),
        "ImageID": draw(IMAGES),
        "Labels": labels,
        "State": draw(STATES),
        "Status": draw(STATUSES),
    }


@st.composite
def deployed(draw: st.DrawFn) -> list[dict[str, Any]]:
    """A world right after `compose up`: each service's replicas share one hash and image, all running and
    not unhealthy; one-off containers (in any state) beside them."""
    containers = []
    for service in draw(st.lists(SERVICES, unique=True, max_size=4)):
        config_hash, image = draw(HASHES), draw(IMAGES)
        for number in range(1, draw(st.integers(min_value=1, max_value=3)) + 1):
            status = draw(st.sampled_from(["Up 5 minutes", "Up 3 seconds (health: starting)", "Up 1 hour (healthy)"]))
            containers.append(summary(service, number, config_hash=config_hash, image=image, status=status))
    containers += draw(st.lists(summaries().map(one_off), max_size=2))
    return draw(st.permutations(containers))


def one_off(container: dict[str, Any]) -> dict[str, Any]:
    return {**container, "Labels": {**container["Labels"], "com.docker.compose.oneoff": "True"}}


def is_one_line(detail: str) -> bool:
    return 0 < len(detail) <= DETAIL_LIMIT and detail.isprintable() and detail == detail.strip()


def key(finding: Finding) -> tuple[int, str, str]:
    return KINDS.index(finding.kind), finding.service or "", finding.container or ""


@SETTINGS
@given(before=st.lists(summaries(), max_size=6), now=st.lists(summaries(), max_size=6))
def test_findings_never_raise_and_are_sorted_short_lines(
    before: list[Mapping[str, Any]], now: list[Mapping[str, Any]]
) -> None:
    found = findings(baseline_of(before), now)
    assert [key(f) for f in found] == sorted(key(f) for f in found)
    assert all(f.kind in KINDS and is_one_line(f.detail) for f in found)
    assert findings(baseline_of(reversed(before)), reversed(now)) == found


@SETTINGS
@given(containers=deployed())
def test_a_world_has_no_findings_against_its_own_baseline(containers: list[dict[str, Any]]) -> None:
    assert findings(baseline_of(containers), containers) == []


@SETTINGS
@given(containers=st.lists(summaries(), min_size=1, max_size=6) | deployed(), data=st.data())
def test_removing_one_container_of_a_service_is_exactly_one_missing(
    containers: list[dict[str, Any]], data: st.DataObject
) -> None:
    baseline = baseline_of(containers)
    counted = [i for i, c in enumerate(containers) if c["Labels"].get("com.docker.compose.service") in baseline.services
               and c["Labels"].get("com.docker.compose.oneoff") != "True"]  # fmt: skip
    if not counted:
        return
    removed = data.draw(st.sampled_from(counted), label="removed")
    service = containers[removed]["Labels"]["com.docker.compose.service"]
    found = findings(baseline, containers[:removed] + containers[removed + 1 :])
    assert [f.service for f in found if f.kind == "missing"] == [service]


@SETTINGS
@given(error=st.text())
def test_unreachable_is_always_one_short_line(error: str) -> None:
    [finding] = unreachable(error)
    assert finding.kind == "unknown" and is_one_line(finding.detail)
