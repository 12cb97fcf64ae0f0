"""swarm_findings: what `docker stack deploy` ignores or refuses, named by field; never an exception."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from deployer.plan.swarm_keys import IGNORED, REFUSED, Finding, swarm_findings


def test_each_ignored_and_refused_key_is_named_by_service_and_key() -> None:
    service: dict[str, Any] = {"image": "x"} | dict.fromkeys(IGNORED, "v") | dict.fromkeys(REFUSED, "v")
    found = {f.field: f for f in swarm_findings({"services": {"web": service}})}
    assert {k for k, f in found.items() if f.refused} == {f"services.web.{k}" for k in REFUSED}
    assert {k for k, f in found.items() if not f.refused} == {f"services.web.{k}" for k in IGNORED}
    assert found["services.web.restart"].message == "ignored by docker stack deploy: use deploy.restart_policy"


def test_depends_on_no_image_and_relative_binds() -> None:
    home = {"type": "bind", "source": "~/x", "target": "/x"}
    volumes = ["./data:/data", "/srv:/srv", home, "named:/n"]
    web = {"build": ".", "depends_on": {"db": {"condition": "service_healthy"}}, "volumes": volumes}
    document = {"services": {"web": web}}
    fields = [f.field for f in swarm_findings(document)]
    assert fields == ["services.web.build", "services.web.depends_on", "services.web.image",
                      "services.web.volumes[0]", "services.web.volumes[2]"]  # fmt: skip
    assert [f.field for f in swarm_findings(document, multi_node=False)] == fields[:3]


def test_a_clean_swarm_service_has_no_findings() -> None:
    assert swarm_findings({"services": {"web": {"image": "x", "deploy": {"replicas": 2}}}}) == []


_scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=8)
_documents = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.sampled_from(["services", "web", "image", "volumes", "depends_on", "build", "type", "source", "x"]) | st.text(
        max_size=6), inner, max_size=5), max_leaves=30)  # fmt: skip


@given(document=st.dictionaries(st.sampled_from(["services", "x-deployer", "networks"]), _documents, max_size=3))
def test_any_document_gives_findings_not_exceptions(document: dict[str, Any]) -> None:
    found = swarm_findings(document)
    assert all(isinstance(f, Finding) and f.field.startswith("services.") for f in found)
    assert found == sorted(found)
