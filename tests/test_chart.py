"""The Helm chart in charts/bulk-progress-exporter.

Every variant in the chart's ci/ folder is linted and rendered with helm, every rendered
manifest is validated against Kubernetes' own schemas (strict: unknown fields fail) or, for the
Prometheus Operator's kinds, against pydantic models of its CRDs; the PrometheusRule's rules go
through promtool; and the rendered objects are checked for what the chart promises.
"""

from __future__ import annotations

import base64
import functools
import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from cloudcoil.models.prometheus_operator import v1 as monitoring
from pydantic import BaseModel

from exporter.config import parse_config
from tests.helpers import project_version, require_tool

pytestmark = pytest.mark.chart

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "bulk-progress-exporter"
CI_DIR = CHART / "ci"
# The Kubernetes version whose schemas the manifests are validated against (kubernetes-validate
# ships schemas for 1.25 to 1.37; the chart's kubeVersion allows >= 1.25).
KUBERNETES_VERSION = "1.30"
RELEASE = "bpe"
NAMESPACE = "observability"
FULLNAME = f"{RELEASE}-bulk-progress-exporter"
CONFIG_PATH = "/etc/bulk-progress-exporter/config.yaml"
SECRETS_DIR = "/etc/bulk-progress-exporter/secrets"
SOURCES_DIR = "/etc/bulk-progress-exporter/sources.d"
DIGEST = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
# The distinctive fake key of ci/chart-secret-values.yaml.
FAKE_KEY = "fake-kizen-key-7f3c9a1e-DO-NOT-LEAK"
OPERATOR_MODELS: dict[str, type[BaseModel]] = {
    "ServiceMonitor": monitoring.ServiceMonitor,
    "PrometheusRule": monitoring.PrometheusRule,
}
UNSTABLE_SELECTOR_LABELS = ("helm.sh/chart", "app.kubernetes.io/version")

Doc = dict[str, Any]
VARIANTS = sorted(p.name.removesuffix("-values.yaml") for p in CI_DIR.glob("*-values.yaml"))


@pytest.fixture(scope="module")
def helm() -> str:
    """helm from .tools/bin (scripts/install-helm.sh puts it there), else from PATH."""
    local = ROOT / ".tools" / "bin" / "helm"
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    return require_tool("helm")


def run_helm(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [helm, *args], capture_output=True, text=True, check=False, cwd=ROOT, timeout=120
    )


@functools.cache
def _template(helm: str, args: tuple[str, ...]) -> str:
    result = run_helm(helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args)
    assert result.returncode == 0, f"helm template {' '.join(args)} failed:\n{result.stderr}"
    return result.stdout


def render(helm: str, *args: str) -> list[Doc]:
    """The manifests `helm template` renders with these extra arguments, parsed."""
    return [doc for doc in yaml.safe_load_all(_template(helm, args)) if doc]


def values_file(variant: str) -> Path:
    return CI_DIR / f"{variant}-values.yaml"


def render_variant(helm: str, variant: str) -> list[Doc]:
    return render(helm, "--values", str(values_file(variant)))


def variant_values(variant: str) -> Doc:
    """The chart's defaults with the variant's values over them (one level deep is enough)."""
    merged: Doc = yaml.safe_load((CHART / "values.yaml").read_text())
    override: Doc = yaml.safe_load(values_file(variant).read_text()) or {}
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def of_kind(docs: list[Doc], kind: str) -> list[Doc]:
    return [doc for doc in docs if doc["kind"] == kind]


def only(docs: list[Doc], kind: str) -> Doc:
    found = of_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def statefulset(docs: list[Doc]) -> Doc:
    return only(docs, "StatefulSet")


def pod_spec(docs: list[Doc]) -> Doc:
    spec: Doc = statefulset(docs)["spec"]["template"]["spec"]
    return spec


def container(docs: list[Doc]) -> Doc:
    containers = pod_spec(docs)["containers"]
    assert len(containers) == 1
    result: Doc = containers[0]
    return result


def mount(docs: list[Doc], name: str) -> Doc:
    mounts: list[Doc] = [m for m in container(docs)["volumeMounts"] if m["name"] == name]
    assert len(mounts) == 1, f"expected one mount of volume {name}: {mounts}"
    return mounts[0]


def volume(docs: list[Doc], name: str) -> Doc:
    volumes: list[Doc] = [v for v in pod_spec(docs)["volumes"] if v["name"] == name]
    assert len(volumes) == 1, f"expected one volume {name}: {volumes}"
    return volumes[0]


def flags(docs: list[Doc], name: str) -> list[str]:
    """Values of every `--name=value` argument of the container."""
    prefix = f"--{name}="
    return [arg.removeprefix(prefix) for arg in container(docs)["args"] if arg.startswith(prefix)]


def checksum(docs: list[Doc]) -> str:
    value: str = statefulset(docs)["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    return value


def rendered_config(docs: list[Doc]) -> str:
    configmaps = [cm for cm in of_kind(docs, "ConfigMap") if cm["metadata"]["name"] == FULLNAME]
    assert len(configmaps) == 1
    text: str = configmaps[0]["data"]["config.yaml"]
    return text


def selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def test_ci_variants_cover_the_required_cases() -> None:
    required = {
        "default",
        "persistence",
        "monitoring",
        "existing-secret",
        "chart-secret",
        "three-replicas",
        "env-secret",
        "web-config",
        "cluster-conventions",
    }
    assert required <= set(VARIANTS)


@pytest.mark.parametrize("variant", [None, *VARIANTS])
def test_helm_lint(helm: str, variant: str | None) -> None:
    args = ["lint", "--strict", str(CHART)]
    if variant is not None:
        args += ["--values", str(values_file(variant))]
    result = run_helm(helm, *args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


def validate_all(docs: list[Doc]) -> None:
    """Every manifest against Kubernetes' schemas (strict) or its Prometheus Operator model."""
    assert docs
    for doc in docs:
        if doc["kind"] in OPERATOR_MODELS:
            assert doc["apiVersion"] == "monitoring.coreos.com/v1"
            model = OPERATOR_MODELS[doc["kind"]].model_validate(doc)
            dumped = model.model_dump(by_alias=True, exclude_unset=True, mode="json")
            # The models ignore unknown keys: a misspelt field shows up as a difference here.
            assert dumped == doc, f"{doc['kind']} has fields its CRD does not know"
        else:
            try:
                kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
            except kubernetes_validate.ValidationError as exc:
                where = ".".join(str(p) for p in exc.path)
                pytest.fail(f"{doc['kind']} {doc['metadata']['name']}: {where}: {exc.message}")
        assert doc["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE


@pytest.mark.parametrize("variant", VARIANTS)
def test_manifests_are_valid(helm: str, variant: str) -> None:
    validate_all(render_variant(helm, variant))


def test_validators_catch_unknown_fields(helm: str) -> None:
    """Guards the test above: both validators really refuse a misspelt field."""
    docs = render_variant(helm, "monitoring")
    sts = statefulset(docs)
    sts["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(sts, KUBERNETES_VERSION, strict=True)
    monitor = only(docs, "ServiceMonitor")
    monitor["spec"]["endpoints"][0]["scrapeIntervall"] = "1m"
    dumped = monitoring.ServiceMonitor.model_validate(monitor).model_dump(
        by_alias=True, exclude_unset=True, mode="json"
    )
    assert dumped != monitor


def test_defaults_leave_optional_features_off(helm: str) -> None:
    docs = render(helm)
    assert sorted(doc["kind"] for doc in docs) == [
        "ConfigMap",
        "Service",
        "Service",
        "ServiceAccount",
        "StatefulSet",
    ]
    assert "volumeClaimTemplates" not in statefulset(docs)["spec"]
    assert container(docs)["resources"] == {}
    pod = pod_spec(docs)
    for key in ("nodeSelector", "tolerations", "affinity", "imagePullSecrets"):
        assert key not in pod
    assert pod["automountServiceAccountToken"] is False
    assert not flags(docs, "web.config.file")
    # The tag defaults to the chart's appVersion, which is pyproject's version.
    assert container(docs)["image"] == f"bulk-progress-exporter:{project_version()}"
    for key in ("topologySpreadConstraints", "priorityClassName"):
        assert key not in pod
    assert [v["name"] for v in pod["volumes"]] == ["config", "storage", "tmp"]
    assert [m["name"] for m in container(docs)["volumeMounts"]] == ["config", "storage", "tmp"]
    assert "source_files" not in yaml.safe_load(rendered_config(docs))
    own = {*UNSTABLE_SELECTOR_LABELS, "app.kubernetes.io/name", "app.kubernetes.io/instance"}
    own |= {"app.kubernetes.io/managed-by", "app.kubernetes.io/component"}
    assert all(set(doc["metadata"]["labels"]) <= own for doc in docs)


@pytest.mark.parametrize("variant", VARIANTS)
def test_shard_flags_follow_replicas(helm: str, variant: str) -> None:
    docs = render_variant(helm, variant)
    replicas = variant_values(variant)["replicas"]
    assert statefulset(docs)["spec"]["replicas"] == replicas
    assert flags(docs, "shard.count") == [str(replicas)]
    assert flags(docs, "shard.index") == ["auto"]


def test_three_replicas_are_three_shards(helm: str) -> None:
    docs = render_variant(helm, "three-replicas")
    assert statefulset(docs)["spec"]["replicas"] == 3
    assert flags(docs, "shard.count") == ["3"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_security_context(helm: str, variant: str) -> None:
    docs = render_variant(helm, variant)
    pod = pod_spec(docs)["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert pod["runAsUser"] == 10001
    assert pod["runAsGroup"] == 10001
    assert pod["fsGroup"] == 10001
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    ctr = container(docs)["securityContext"]
    assert ctr["runAsNonRoot"] is True
    assert ctr["runAsUser"] == 10001
    assert ctr["readOnlyRootFilesystem"] is True
    assert ctr["allowPrivilegeEscalation"] is False
    assert ctr["capabilities"] == {"drop": ["ALL"]}
    assert ctr["seccompProfile"] == {"type": "RuntimeDefault"}
    # A read-only root needs a writable /tmp.
    assert mount(docs, "tmp")["mountPath"] == "/tmp"
    assert "emptyDir" in volume(docs, "tmp")


def test_storage_without_persistence_is_an_emptydir(helm: str) -> None:
    docs = render(helm)
    path = "/var/lib/bulk-progress-exporter"
    assert flags(docs, "storage.path") == [path]
    assert mount(docs, "storage")["mountPath"] == path
    assert volume(docs, "storage") == {"name": "storage", "emptyDir": {}}


def test_storage_with_persistence_is_a_claim_per_replica(helm: str) -> None:
    docs = render_variant(helm, "persistence")
    path = "/data/state"
    assert flags(docs, "storage.path") == [path]
    assert mount(docs, "storage")["mountPath"] == path
    assert all(v["name"] != "storage" for v in pod_spec(docs)["volumes"])
    (claim,) = statefulset(docs)["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "storage"
    assert claim["spec"] == {
        "accessModes": ["ReadWriteOnce"],
        "storageClassName": "fast-ssd",
        "resources": {"requests": {"storage": "2Gi"}},
    }


def test_storage_class_dash_means_empty_class(helm: str) -> None:
    docs = render(
        helm, "--set", "persistence.enabled=true", "--set", "persistence.storageClassName=-"
    )
    (claim,) = statefulset(docs)["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["storageClassName"] == ""
    docs = render(helm, "--set", "persistence.enabled=true")
    (claim,) = statefulset(docs)["spec"]["volumeClaimTemplates"]
    assert "storageClassName" not in claim["spec"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_config_is_mounted_and_named_by_env(helm: str, variant: str) -> None:
    docs = render_variant(helm, variant)
    config_mount = mount(docs, "config")
    assert config_mount["mountPath"] == CONFIG_PATH
    assert config_mount["subPath"] == "config.yaml"
    assert volume(docs, "config")["configMap"]["name"] == FULLNAME
    env = container(docs)["env"]
    assert {"name": "BULK_EXPORTER_CONFIG_FILE", "value": CONFIG_PATH} in env
    # The ConfigMap holds the `config` value, unchanged but for the source files' pattern.
    values = variant_values(variant)
    expected = dict(values["config"])
    if values["sourceFiles"]["secretName"]:
        expected["source_files"] = [f"{SOURCES_DIR}/*.yaml"]
    assert yaml.safe_load(rendered_config(docs)) == expected


@pytest.mark.parametrize("variant", VARIANTS)
def test_rendered_config_is_accepted_by_the_exporter(
    helm: str, variant: str, tmp_path: Path
) -> None:
    text = rendered_config(render_variant(helm, variant))
    # Stand in for the mounted Secret and for the variables the pod's env would set.
    text = text.replace(SECRETS_DIR, str(tmp_path))
    for key_file in re.findall(r"api_key_file: (\S+)", text):
        Path(key_file).write_text("not-a-real-key\n")
    env = {name: f"value-of-{name}" for name in re.findall(r"\$\{(\w+)\}", text)}
    config = parse_config(text, filename="config.yaml", env=env)
    assert len(config.sources) == len(variant_values(variant)["config"]["sources"])


@pytest.mark.parametrize("variant", VARIANTS)
def test_selectors_are_stable_and_services_pick_the_pods(helm: str, variant: str) -> None:
    docs = render_variant(helm, variant)
    sts = statefulset(docs)
    selector = sts["spec"]["selector"]["matchLabels"]
    pod_labels = sts["spec"]["template"]["metadata"]["labels"]
    assert selector == {
        "app.kubernetes.io/name": "bulk-progress-exporter",
        "app.kubernetes.io/instance": RELEASE,
    }
    assert selects(selector, pod_labels)
    services = {svc["metadata"]["name"]: svc for svc in of_kind(docs, "Service")}
    assert set(services) == {FULLNAME, f"{FULLNAME}-headless"}
    for svc in services.values():
        assert not set(UNSTABLE_SELECTOR_LABELS) & set(svc["spec"]["selector"])
        assert selects(svc["spec"]["selector"], pod_labels)
    headless = services[sts["spec"]["serviceName"]]
    assert headless["spec"]["clusterIP"] == "None"
    assert services[FULLNAME]["spec"]["ports"] == [
        {"name": "http", "port": 9840, "targetPort": "http", "protocol": "TCP"}
    ]
    assert container(docs)["ports"] == [{"name": "http", "containerPort": 9840, "protocol": "TCP"}]
    for monitor in of_kind(docs, "ServiceMonitor"):
        match = monitor["spec"]["selector"]["matchLabels"]
        assert not set(UNSTABLE_SELECTOR_LABELS) & set(match)
        assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
        # Exactly the normal Service: selecting the headless one too would scrape pods twice.
        picked = [
            name for name, svc in services.items() if selects(match, svc["metadata"]["labels"])
        ]
        assert picked == [FULLNAME]
        assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["http"]


def test_probes(helm: str) -> None:
    ctr = container(render(helm))
    assert ctr["livenessProbe"]["httpGet"] == {
        "path": "/-/healthy",
        "port": "http",
        "scheme": "HTTP",
    }
    assert ctr["readinessProbe"]["httpGet"] == {
        "path": "/-/ready",
        "port": "http",
        "scheme": "HTTP",
    }


def test_web_config_from_an_existing_secret(helm: str) -> None:
    docs = render_variant(helm, "web-config")
    assert flags(docs, "web.config.file") == ["/etc/bulk-progress-exporter/web/web-config.yml"]
    assert mount(docs, "web-config") == {
        "name": "web-config",
        "mountPath": "/etc/bulk-progress-exporter/web",
        "readOnly": True,
    }
    assert volume(docs, "web-config")["secret"] == {"secretName": "bulk-exporter-web"}
    ctr = container(docs)
    header = {"name": "Authorization", "value": "Basic cHJvYmU6cHJvYmU="}
    for probe in ("livenessProbe", "readinessProbe"):
        assert ctr[probe]["httpGet"]["scheme"] == "HTTPS"
        assert ctr[probe]["httpGet"]["httpHeaders"] == [header]
    endpoint = only(docs, "ServiceMonitor")["spec"]["endpoints"][0]
    assert endpoint["scheme"] == "https"
    assert endpoint["tlsConfig"]["serverName"] == "bulk-progress-exporter"
    assert endpoint["basicAuth"]["username"] == {
        "name": "bulk-exporter-scrape-auth",
        "key": "username",
    }


def test_chart_made_secret_holds_the_key_and_nothing_else_does(helm: str) -> None:
    docs = render_variant(helm, "chart-secret")
    encoded = base64.b64encode(FAKE_KEY.encode()).decode()
    holders = [
        doc
        for doc in docs
        if FAKE_KEY in (text := yaml.safe_dump(doc)) or encoded in text or "DO-NOT-LEAK" in text
    ]
    assert [(d["kind"], d["metadata"]["name"]) for d in holders] == [("Secret", FULLNAME)]
    secret = holders[0]
    assert base64.b64decode(secret["data"]["kizen_api_key"]).decode() == FAKE_KEY
    assert "stringData" not in secret
    assert mount(docs, "secrets") == {"name": "secrets", "mountPath": SECRETS_DIR, "readOnly": True}
    assert volume(docs, "secrets")["secret"] == {"secretName": FULLNAME}
    config = yaml.safe_load(rendered_config(docs))
    key_file = config["sources"][0]["api_key_file"]
    assert key_file == f"{SECRETS_DIR}/kizen_api_key"
    assert Path(key_file).name in secret["data"]
    annotations = statefulset(docs)["spec"]["template"]["metadata"]["annotations"]
    assert re.fullmatch(r"[0-9a-f]{64}", annotations["checksum/secret"])


def test_existing_secret_is_mounted_not_made(helm: str) -> None:
    docs = render_variant(helm, "existing-secret")
    assert not of_kind(docs, "Secret")
    assert volume(docs, "secrets")["secret"] == {"secretName": "bulk-exporter-keys"}
    assert mount(docs, "secrets")["mountPath"] == SECRETS_DIR
    annotations = statefulset(docs)["spec"]["template"]["metadata"]["annotations"]
    assert "checksum/secret" not in annotations


def test_api_keys_from_env_variables_set_from_secrets(helm: str) -> None:
    docs = render_variant(helm, "env-secret")
    env = {e["name"]: e for e in container(docs)["env"]}
    assert env["KIZEN_API_KEY"]["valueFrom"] == {
        "secretKeyRef": {"name": "kizen-credentials", "key": "api-key"}
    }
    assert container(docs)["envFrom"] == [{"configMapRef": {"name": "bulk-exporter-ids"}}]
    config = yaml.safe_load(rendered_config(docs))
    assert [s["api_key"] for s in config["sources"]] == ["${KIZEN_API_KEY}", "${FP_API_KEY}"]
    assert not of_kind(docs, "ServiceAccount")
    assert pod_spec(docs)["serviceAccountName"] == "default"


@pytest.mark.parametrize(
    "api_key", ["plain-inline-key-93af", "${KIZEN_API_KEY:-plain-inline-key-93af}", "x${KEY}"]
)
def test_inline_api_key_is_refused(helm: str, tmp_path: Path, api_key: str) -> None:
    values = tmp_path / "values.yaml"
    sources = [
        {"name": "fp-ok", "platform": "firstpromoter", "account_id": "a", "api_key": "${FP_KEY}"},
        {"name": "kizen-bad", "platform": "kizen", "business_id": "b", "user_id": "u"},
    ]
    sources[1]["api_key"] = api_key
    values.write_text(yaml.safe_dump({"config": {"sources": sources}}))
    result = run_helm(helm, "template", RELEASE, str(CHART), "--values", str(values))
    assert result.returncode != 0
    assert 'config.sources[1].api_key (source "kizen-bad")' in result.stderr
    assert "existingSecret" in result.stderr
    assert "api_key_file: /etc/bulk-progress-exporter/secrets/<key>" in result.stderr
    assert "plain-inline-key-93af" not in result.stderr + result.stdout


def test_existing_secret_and_chart_secret_together_are_refused(helm: str) -> None:
    result = run_helm(
        helm,
        "template",
        RELEASE,
        str(CHART),
        "--set",
        "existingSecret=mine",
        "--set",
        "secrets.kizen_api_key=k",
    )
    assert result.returncode != 0
    assert "existingSecret and secrets are both set" in result.stderr


@pytest.mark.parametrize(
    ("setting", "complaint"),
    [("replica=3", "replica"), ("replicas=0", "replicas"), ("logLevel=verbose", "logLevel")],
)
def test_values_schema_refuses_mistakes(helm: str, setting: str, complaint: str) -> None:
    result = run_helm(helm, "template", RELEASE, str(CHART), "--set", setting)
    assert result.returncode != 0
    assert complaint in result.stderr


def test_config_checksum_follows_the_config_only(helm: str) -> None:
    base = ("--values", str(values_file("existing-secret")))
    first = checksum(render(helm, *base))
    assert re.fullmatch(r"[0-9a-f]{64}", first)
    assert checksum(render(helm, *base, "--set", "podAnnotations.x=y")) == first
    assert checksum(render(helm, *base, "--set", "config.defaults.timeout=20s")) != first
    assert checksum(render(helm)) != first


def test_common_pod_options(helm: str) -> None:
    docs = render_variant(helm, "three-replicas")
    values = variant_values("three-replicas")
    pod = pod_spec(docs)
    ctr = container(docs)
    assert ctr["image"] == "registry.example.internal/bulk-progress-exporter:0.1.0-rc1"
    assert ctr["imagePullPolicy"] == "Always"
    assert ctr["resources"] == values["resources"]
    assert ctr["args"][-1] == "--log.level=debug"
    for key in ("imagePullSecrets", "nodeSelector", "tolerations", "affinity"):
        assert pod[key] == values[key]
    metadata = statefulset(docs)["spec"]["template"]["metadata"]
    assert metadata["annotations"]["example.org/team"] == "observability"
    assert metadata["labels"]["team"] == "observability"
    account = only(docs, "ServiceAccount")
    assert account["metadata"]["name"] == pod["serviceAccountName"] == "bulk-exporter"
    assert account["metadata"]["annotations"] == {"example.org/role": "read-only"}


def test_long_release_names_fit_kubernetes_limits(helm: str) -> None:
    release = "a-release-name-of-the-longest-length-helm-will-accept"  # 53 characters
    result = run_helm(helm, "template", release, str(CHART))
    assert result.returncode == 0, result.stderr
    docs = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    # The StatefulSet controller labels pods with "<name>-<10-char hash>": at most 63 characters.
    assert len(statefulset(docs)["metadata"]["name"]) <= 52
    assert all(len(svc["metadata"]["name"]) <= 63 for svc in of_kind(docs, "Service"))


def test_notes_render(helm: str) -> None:
    result = run_helm(
        helm,
        "install",
        RELEASE,
        str(CHART),
        "--dry-run=client",
        "--namespace",
        NAMESPACE,
        "--values",
        str(values_file("three-replicas")),
    )
    assert result.returncode == 0, result.stderr
    notes = result.stdout.split("NOTES:", 1)[1]
    assert "split over 3 shards" in notes
    assert f"pod/{FULLNAME}-0" in notes


# --- cluster conventions ----------------------------------------------------------------------


def test_common_labels_are_on_every_object_and_never_in_selectors(helm: str) -> None:
    docs = render_variant(helm, "cluster-conventions")
    common = {"team": "observability", "example.org/cost-centre": "monitoring"}
    kinds = {doc["kind"] for doc in docs}
    assert {"PodDisruptionBudget", "NetworkPolicy", "ServiceAccount", "ConfigMap"} <= kinds
    for doc in docs:
        labels = doc["metadata"]["labels"]
        assert common.items() <= labels.items(), doc["kind"]
    sts = statefulset(docs)
    assert common.items() <= sts["spec"]["template"]["metadata"]["labels"].items()
    selectors = [sts["spec"]["selector"]["matchLabels"]]
    selectors += [svc["spec"]["selector"] for svc in of_kind(docs, "Service")]
    selectors += [only(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"]]
    selectors += [only(docs, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"]]
    assert all(not set(common) & set(selector) for selector in selectors)


def test_pod_labels_win_over_common_labels_and_chart_labels_cannot_be_overridden(
    helm: str,
) -> None:
    docs = render(helm, "--set", "commonLabels.team=all", "--set", "podLabels.team=pods")
    validate_all(docs)
    assert statefulset(docs)["spec"]["template"]["metadata"]["labels"]["team"] == "pods"
    assert statefulset(docs)["metadata"]["labels"]["team"] == "all"
    result = run_helm(
        helm, "template", RELEASE, str(CHART), "--set", "commonLabels.app\\.kubernetes\\.io/name=x"
    )
    assert result.returncode != 0
    assert "commonLabels.app.kubernetes.io/name: the chart sets this label itself" in result.stderr


@pytest.mark.parametrize(
    ("tag", "image"),
    [
        ("0.1.0", f"registry.example.internal/bulk-progress-exporter:0.1.0@{DIGEST}"),
        ("", f"registry.example.internal/bulk-progress-exporter@{DIGEST}"),
    ],
)
def test_image_digest_pins_the_image(helm: str, tag: str, image: str) -> None:
    docs = render(
        helm, "--values", str(values_file("cluster-conventions")), "--set", f"image.tag={tag}"
    )
    validate_all(docs)
    assert container(docs)["image"] == image


@pytest.mark.parametrize("digest", ["latest", "sha256:abc", "md5:0123456789abcdef"])
def test_values_schema_refuses_a_malformed_digest(helm: str, digest: str) -> None:
    result = run_helm(helm, "template", RELEASE, str(CHART), "--set", f"image.digest={digest}")
    assert result.returncode != 0
    assert "digest" in result.stderr


@pytest.mark.parametrize(
    ("settings", "spec"),
    [
        ((), {"maxUnavailable": 1}),
        (("podDisruptionBudget.maxUnavailable=0",), {"maxUnavailable": 0}),
        (("podDisruptionBudget.minAvailable=1",), {"minAvailable": 1}),
        (("podDisruptionBudget.minAvailable=50%",), {"minAvailable": "50%"}),
    ],
)
def test_pod_disruption_budget(helm: str, settings: tuple[str, ...], spec: Doc) -> None:
    args = ["--set", "podDisruptionBudget.enabled=true", "--set", "replicas=3"]
    for setting in settings:
        args += ["--set", setting]
    docs = render(helm, *args)
    validate_all(docs)
    budget = only(docs, "PodDisruptionBudget")
    assert budget["apiVersion"] == "policy/v1"
    selector = budget["spec"].pop("selector")["matchLabels"]
    assert budget["spec"] == spec
    assert selects(selector, statefulset(docs)["spec"]["template"]["metadata"]["labels"])
    assert not of_kind(render(helm), "PodDisruptionBudget")  # off by default


def test_pod_disruption_budget_takes_one_bound_only(helm: str) -> None:
    result = run_helm(
        helm,
        "template",
        RELEASE,
        str(CHART),
        "--set",
        "podDisruptionBudget.enabled=true",
        "--set",
        "podDisruptionBudget.minAvailable=1",
        "--set",
        "podDisruptionBudget.maxUnavailable=1",
    )
    assert result.returncode != 0
    assert "set minAvailable or maxUnavailable, not both" in result.stderr
    result = run_helm(
        helm, "template", RELEASE, str(CHART), "--set", "podDisruptionBudget.maxUnavailable=-1"
    )
    assert result.returncode != 0
    assert "maxUnavailable" in result.stderr


def test_network_policy_admits_the_selected_scrapers_to_the_metrics_port(helm: str) -> None:
    docs = render_variant(helm, "cluster-conventions")
    policy = only(docs, "NetworkPolicy")
    spec = policy["spec"]
    pod_labels = statefulset(docs)["spec"]["template"]["metadata"]["labels"]
    assert selects(spec["podSelector"]["matchLabels"], pod_labels)
    assert spec["policyTypes"] == ["Ingress"]  # the exporter's own requests stay open
    (rule,) = spec["ingress"]
    assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]
    assert [p["containerPort"] for p in container(docs)["ports"] if p["name"] == "http"] == [9840]
    assert rule["from"] == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
        },
        {"ipBlock": {"cidr": "10.20.0.0/16"}},
    ]


@pytest.mark.parametrize(
    ("settings", "peers"),
    [
        ((), [{"podSelector": {}}]),
        (
            ("networkPolicy.namespaceSelector.matchLabels.team=obs",),
            [{"namespaceSelector": {"matchLabels": {"team": "obs"}}}],
        ),
        (
            ("networkPolicy.podSelector.matchLabels.app=prometheus",),
            [{"podSelector": {"matchLabels": {"app": "prometheus"}}}],
        ),
    ],
)
def test_network_policy_peers(helm: str, settings: tuple[str, ...], peers: list[Doc]) -> None:
    args = ["--set", "networkPolicy.enabled=true"]
    for setting in settings:
        args += ["--set", setting]
    docs = render(helm, *args)
    validate_all(docs)
    assert only(docs, "NetworkPolicy")["spec"]["ingress"][0]["from"] == peers
    assert not of_kind(render(helm), "NetworkPolicy")  # off by default


def test_spreading_priority_and_extra_volumes(helm: str) -> None:
    docs = render_variant(helm, "cluster-conventions")
    pod = pod_spec(docs)
    own = statefulset(docs)["spec"]["selector"]["matchLabels"]
    zone, host = pod["topologySpreadConstraints"]
    # A constraint without a labelSelector spreads this release's pods; one with it is kept.
    assert zone == {
        "maxSkew": 1,
        "topologyKey": "topology.kubernetes.io/zone",
        "whenUnsatisfiable": "ScheduleAnyway",
        "labelSelector": {"matchLabels": own},
    }
    assert host["labelSelector"] == {"matchLabels": {"app.kubernetes.io/instance": RELEASE}}
    assert pod["priorityClassName"] == "monitoring-critical"
    assert volume(docs, "ca-bundle") == {"name": "ca-bundle", "configMap": {"name": "corporate-ca"}}
    assert mount(docs, "ca-bundle") == {
        "name": "ca-bundle",
        "mountPath": "/etc/ssl/corporate",
        "readOnly": True,
    }
    # The chart's own volumes are all still there.
    for name in ("config", "secrets", "source-files", "storage", "tmp"):
        assert volume(docs, name)
        assert mount(docs, name)


def test_values_schema_refuses_incomplete_pod_options(helm: str) -> None:
    for setting, complaint in (
        ("extraVolumes[0].emptyDir.medium=Memory", "name"),
        ("extraVolumeMounts[0].name=x", "mountPath"),
        ("topologySpreadConstraints[0].maxSkew=1", "topologyKey"),
        ("networkPolicy.from=x", "networkPolicy"),
        ("sourceFiles.mountPath=relative", "mountPath"),
        ("config.source_files=sources.d", "source_files"),
    ):
        result = run_helm(helm, "template", RELEASE, str(CHART), "--set", setting)
        assert result.returncode != 0, setting
        assert complaint in result.stderr, (setting, result.stderr)


# --- source files from a Secret ---------------------------------------------------------------


def test_source_files_are_mounted_from_a_secret_and_named_by_the_config(helm: str) -> None:
    docs = render_variant(helm, "cluster-conventions")
    assert volume(docs, "source-files")["secret"] == {"secretName": "bulk-exporter-sources"}
    # A directory, not a subPath: the kubelet updates the files when the Secret changes.
    assert mount(docs, "source-files") == {
        "name": "source-files",
        "mountPath": SOURCES_DIR,
        "readOnly": True,
    }
    config = yaml.safe_load(rendered_config(docs))
    assert config["source_files"] == [f"{SOURCES_DIR}/*.yaml"]
    # A source_files of the user's own is kept, the Secret's pattern added after it.
    docs = render(
        helm,
        "--set",
        "sourceFiles.secretName=s",
        "--set",
        "sourceFiles.mountPath=/srv/sources/",
        "--set",
        "sourceFiles.pattern=*.yml",
        "--set",
        "config.source_files[0]=/etc/extra/*.yaml",
    )
    validate_all(docs)
    assert mount(docs, "source-files")["mountPath"] == "/srv/sources/"
    config = yaml.safe_load(rendered_config(docs))
    assert config["source_files"] == ["/etc/extra/*.yaml", "/srv/sources/*.yml"]


def test_the_exporter_reads_the_mounted_source_files(helm: str, tmp_path: Path) -> None:
    """The rendered config with the Secrets' directories stood in for by local ones."""
    text = rendered_config(render_variant(helm, "cluster-conventions"))
    keys, sources = tmp_path / "secrets", tmp_path / "sources.d"
    keys.mkdir()
    sources.mkdir()
    text = text.replace(SECRETS_DIR, str(keys)).replace(SOURCES_DIR, str(sources))
    (keys / "fp_main").write_text("not-a-real-key\n")
    # As the kubelet lays out a Secret volume: each key a link into a hidden data directory.
    data = sources / "..2026_01_01_00_00_00.000000001"
    data.mkdir()
    (sources / "..data").symlink_to(data.name)
    (data / "team-a.yaml").write_text(
        "- {name: kizen-a, platform: kizen, business_id: b, user_id: u, api_key: inline-key-1}\n"
        "- {name: fp-a, platform: firstpromoter, account_id: a, api_key: inline-key-2}\n"
    )
    (sources / "team-a.yaml").symlink_to("..data/team-a.yaml")
    config = parse_config(text, filename="config.yaml", env={})
    assert [s.name for s in config.sources] == ["fp-main", "kizen-a", "fp-a"]
    assert config.origins["kizen-a"] == str(sources / "team-a.yaml")
    assert config.warnings() == []


# --- rules and dashboards ---------------------------------------------------------------------


def rule_annotations(groups: list[Doc]) -> list[dict[str, str]]:
    return [rule.get("annotations", {}) for group in groups for rule in group["rules"]]


def test_prometheus_rule_holds_exactly_the_groups_of_alerts_yml(helm: str) -> None:
    docs = render_variant(helm, "monitoring")
    rule = only(docs, "PrometheusRule")
    assert rule["metadata"]["namespace"] == "monitoring"
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    original = yaml.safe_load((ROOT / "prometheus" / "alerts.yml").read_text())
    assert rule["spec"] == {"groups": original["groups"]}
    # The Go-template annotations reach Prometheus untouched, not evaluated by helm.
    rendered = rule_annotations(rule["spec"]["groups"])
    assert rendered == rule_annotations(original["groups"])
    texts = [text for each in rendered for text in each.values()]
    assert any("{{ $labels.source }}" in text for text in texts)
    assert any("{{ $value | humanizeDuration }}" in text for text in texts)


def test_promtool_accepts_the_rendered_rules(helm: str, tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    spec = only(render_variant(helm, "monitoring"), "PrometheusRule")["spec"]
    rules_file = tmp_path / "rules.yml"
    rules_file.write_text(yaml.safe_dump(spec))
    result = subprocess.run(
        [promtool, "check", "rules", str(rules_file)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    count = sum(len(group["rules"]) for group in spec["groups"])
    assert f"SUCCESS: {count} rules found" in result.stdout


def test_dashboards_one_configmap_each(helm: str) -> None:
    docs = render_variant(helm, "monitoring")
    originals = sorted((ROOT / "grafana" / "dashboards").glob("*.json"))
    assert originals
    dashboards = [
        cm
        for cm in of_kind(docs, "ConfigMap")
        if "grafana_dashboard_bulk" in cm["metadata"]["labels"]
    ]
    assert len(dashboards) == len(originals)
    by_key = {key: (cm, text) for cm in dashboards for key, text in cm["data"].items()}
    assert sorted(by_key) == [path.name for path in originals]
    for path in originals:
        cm, text = by_key[path.name]
        assert text == path.read_text()
        assert cm["metadata"]["labels"]["grafana_dashboard_bulk"] == "yes"
        assert cm["metadata"]["namespace"] == "grafana"
        assert cm["metadata"]["annotations"] == {"grafana_folder": "Bulk jobs"}
    # The default label is the one Grafana's sidecar looks for.
    docs = render(helm, "--set", "dashboards.enabled=true")
    labelled = [
        cm for cm in of_kind(docs, "ConfigMap") if cm["metadata"]["labels"].get("grafana_dashboard")
    ]
    assert len(labelled) == len(originals)
    assert all(cm["metadata"]["labels"]["grafana_dashboard"] == "1" for cm in labelled)
    assert all(cm["metadata"]["namespace"] == NAMESPACE for cm in labelled)


def test_chart_copies_equal_the_originals() -> None:
    """One source of truth: after editing the originals, run scripts/sync-chart-files.sh."""
    hint = "the chart's copy differs: run scripts/sync-chart-files.sh"
    copy = CHART / "files" / "alerts.yml"
    assert copy.read_bytes() == (ROOT / "prometheus" / "alerts.yml").read_bytes(), hint
    originals = {p.name: p.read_bytes() for p in (ROOT / "grafana" / "dashboards").glob("*.json")}
    copies = {p.name: p.read_bytes() for p in (CHART / "files" / "dashboards").glob("*.json")}
    assert sorted(copies) == sorted(originals), hint
    for name, content in originals.items():
        assert copies[name] == content, f"{name}: {hint}"


def test_sync_script_copies_and_prunes(tmp_path: Path) -> None:
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "sync-chart-files.sh", tmp_path / "scripts")
    (tmp_path / "prometheus").mkdir()
    (tmp_path / "prometheus" / "alerts.yml").write_text("groups: []\n")
    (tmp_path / "grafana" / "dashboards").mkdir(parents=True)
    (tmp_path / "grafana" / "dashboards" / "new.json").write_text('{"title": "new"}\n')
    files = tmp_path / "charts" / "bulk-progress-exporter" / "files"
    (files / "dashboards").mkdir(parents=True)
    (files / "dashboards" / "gone.json").write_text("{}\n")
    (files / "alerts.yml").write_text("stale\n")
    result = subprocess.run(
        ["bash", str(tmp_path / "scripts" / "sync-chart-files.sh")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert (files / "alerts.yml").read_text() == "groups: []\n"
    assert sorted(p.name for p in (files / "dashboards").iterdir()) == ["new.json"]
    assert (files / "dashboards" / "new.json").read_text() == '{"title": "new"}\n'
