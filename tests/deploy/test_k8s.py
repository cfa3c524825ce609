"""The Kubernetes manifests of ``deploy/k8s``: each region's overlay, rendered the way
kustomize renders it, validates offline against the Kubernetes API schemas bundled by the PyPI
package ``kubernetes-validate`` (strict: unknown fields fail), and has what a region needs
(probes on the health endpoints, resource requests, the orchestrators' disruption budget, the
region's image tags).

The renderer below implements only the kustomize fields these files use (``resources``,
``namespace``, ``labels`` without selectors, ``images``), so the test needs no kustomize binary;
where ``kubectl`` is installed, its ``kubectl kustomize`` output must be the same objects."""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

kubernetes_validate = pytest.importorskip("kubernetes_validate")

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
REGIONS = ("us-east", "eu-west")
KNOWN = {"apiVersion", "kind", "resources", "namespace", "labels", "images"}
Doc = dict[str, Any]


def render(folder: Path) -> list[Doc]:
    """A kustomization folder's objects (the subset of kustomize this repository uses)."""
    spec = yaml.safe_load((folder / "kustomization.yaml").read_text())
    unknown = set(spec) - KNOWN
    assert not unknown, f"{folder}: kustomize fields this renderer does not know: {unknown}"
    docs: list[Doc] = []
    for entry in spec.get("resources", []):
        path = folder / entry
        if path.is_dir():
            docs += render(path)
        else:
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    docs = copy.deepcopy(docs)
    for doc in docs:
        meta = doc.setdefault("metadata", {})
        if "namespace" in spec and doc["kind"] != "Namespace":
            meta["namespace"] = spec["namespace"]
        for group in spec.get("labels", []):
            assert not group.get("includeSelectors"), "selector labels are not rendered here"
            meta.setdefault("labels", {}).update(group["pairs"])
        for image in spec.get("images", []):
            for container in _containers(doc):
                if container["image"].rsplit(":", 1)[0] == image["name"]:
                    container["image"] = f"{image['name']}:{image['newTag']}"
    return docs


def _containers(doc: Doc) -> list[Doc]:
    pod = doc.get("spec", {}).get("template", {}).get("spec", {})
    return list(pod.get("containers", []))


def _by_name(docs: list[Doc]) -> dict[tuple[str, str], Doc]:
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


@pytest.mark.parametrize("region", REGIONS)
def test_overlay_validates_against_the_api_schemas(region: str) -> None:
    docs = render(K8S / "overlays" / region)
    version = kubernetes_validate.latest_version()
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {exc.message} at "
                        f"{'.'.join(map(str, exc.path))}")


def test_a_broken_manifest_is_refused() -> None:
    """The validator is strict: a misspelt field fails (so the test above can fail)."""
    doc = _by_name(render(K8S / "overlays" / "us-east"))[("StatefulSet", "tether-gateway")]
    doc["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


@pytest.mark.parametrize("region", REGIONS)
def test_overlay_runs_a_whole_region(region: str) -> None:
    objs = _by_name(render(K8S / "overlays" / region))
    workloads = [d for d in objs.values() if d["kind"] in ("Deployment", "StatefulSet")]
    assert {d["metadata"]["name"] for d in workloads} == {
        "tether-dht", "tether-registry", "tether-orchestrator", "tether-gateway", "tether-worker"}
    for doc in objs.values():
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == f"tether-{region}"
    for doc in workloads:
        pod = doc["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["image"].endswith(f":0.1.0-{region}"), container["image"]
        assert container["resources"]["requests"]["cpu"]
        assert container["securityContext"]["runAsNonRoot"] is True
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert "/var/lib/tether" in mounts  # the key and data on a volume
        if doc["metadata"]["name"] != "tether-dht":
            paths = {container[p]["httpGet"]["path"] for p in ("readinessProbe", "startupProbe")}
            assert paths <= {"/readyz", "/healthz"} and "/readyz" in paths
    gateway = objs[("StatefulSet", "tether-gateway")]["spec"]["template"]["spec"]["containers"][0]
    assert gateway["livenessProbe"]["grpc"]["port"] == 50051
    edge = objs[("Service", "tether-edge")]
    assert {p["name"] for p in edge["spec"]["ports"]} == {"http", "grpc"}
    pdb = objs[("PodDisruptionBudget", "tether-orchestrator")]
    orchestrator = objs[("StatefulSet", "tether-orchestrator")]
    assert pdb["spec"]["selector"] == orchestrator["spec"]["selector"]
    assert orchestrator["spec"]["replicas"] > pdb["spec"]["minAvailable"]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
@pytest.mark.parametrize("region", REGIONS)
def test_renderer_matches_kubectl_kustomize(region: str) -> None:
    proc = subprocess.run(["kubectl", "kustomize", str(K8S / "overlays" / region)],
                          check=False, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        pytest.skip(f"kubectl kustomize does not run here: {proc.stderr.strip()[:200]}")
    assert _by_name(list(yaml.safe_load_all(proc.stdout))) == _by_name(
        render(K8S / "overlays" / region))
