"""The Helm chart (deploy/k8s/plexus), rendered offline with Helm's own engine (helm-python-sdk) for both
deployment modes and several value sets; every manifest is validated strictly against the Kubernetes
schemas (kubernetes-validate), the two CRDs against the subset schemas in deploy/k8s/schemas."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

helm = pytest.importorskip("helm_python", reason="helm-python-sdk (dev extra) renders the chart")

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "k8s" / "plexus"
EXAMPLES = ROOT / "deploy" / "k8s" / "examples"
CRD_SCHEMAS = {
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): ROOT / "deploy/k8s/schemas/httproute-gateway-v1.json",
    ("keda.sh/v1alpha1", "ScaledObject"): ROOT / "deploy/k8s/schemas/scaledobject-keda-v1alpha1.json",
}
# The chart's kubeVersion floor and the newest schemas kubernetes-validate ships.
KUBE_VERSIONS = ("1.29.0", kubernetes_validate.utils.latest_version())
SERVICES = ("gateway", "console", "runtime", "indexer", "tools")
APP_COMPONENTS = {"allinone", *SERVICES, "migrate"}
RELEASE, NAMESPACE = "plexus", "plexus-ns"


def example(name: str) -> dict:
    return yaml.safe_load((EXAMPLES / f"{name}.yaml").read_text())


CASES: dict[str, dict] = {
    "allinone-default": {},
    "allinone-existing-secret": {"secrets": {"existingSecret": "my-keys"},
                                 "allInOne": {"persistence": {"enabled": False}}},
    "allinone-external": example("allinone-external"),
    "split-bundled": example("split-bundled"),
    "split-external": example("split-external"),
    "split-keda": example("split-keda"),
    "split-bundled-secrets-no-autoscaling": {
        "deploymentMode": "split",
        "secrets": {"existingSecret": "my-keys"},
        "postgresql": {"enabled": True, "auth": {"existingSecret": "my-pg", "passwordKey": "password"}},
        "redis": {"external": {"url": "redis://redis.cache:6379/0"}},
        "nats": {"enabled": True, "replicas": 1},
        "qdrant": {"enabled": True, "apiKey": {"existingSecret": "my-qdrant", "key": "api-key"}},
        "split": {"gateway": {"replicas": 3, "pdb": {"minAvailable": 2}}},
        "service": {"type": "LoadBalancer"},
        "config": {"env": {"PLEXUS_RUNTIME__RUN_TIMEOUT": "900"}},
        "extraEnv": [{"name": "PLEXUS_GATEWAY__UPSTREAM_TIMEOUT", "value": "600"}],
    },
}
SPLIT_CASES = [k for k in CASES if k.startswith("split")]


@pytest.fixture(scope="module")
def chart():
    with helm.Chart.load(CHART) as c:
        yield c


def render(chart, values: dict, *, upgrade: bool = False) -> list[dict]:
    out = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=not upgrade, is_upgrade=upgrade)
    docs = []
    for path, text in sorted(out.items()):
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


@pytest.fixture(scope="module", params=list(CASES))
def case(request, chart) -> tuple[str, dict, list[dict]]:
    values = CASES[request.param]
    return request.param, values, render(chart, values)


def kinds(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict], kind: str, name: str) -> dict:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def component(doc: dict) -> str | None:
    return doc["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component")


def pod_specs(docs: list[dict]) -> list[tuple[dict, dict]]:
    return [(d, d["spec"]["template"]["spec"]) for d in docs
            if d["kind"] in ("Deployment", "StatefulSet", "Job")]


# ---------------------------------------------------------------- lint and schemas


@pytest.mark.parametrize("name", list(CASES))
def test_helm_lint_strict(name):
    for kube in KUBE_VERSIONS:
        report = helm.lint(CHART, CASES[name], strict=True, kube_version=f"v{kube}")
        problems = [m for m in report["messages"] if m["severity"] >= 2]
        assert not report["errors"] and not problems, report


def test_every_manifest_validates_strictly(case):
    name, _, docs = case
    assert docs
    for doc in docs:
        key = (doc["apiVersion"], doc["kind"])
        if key in CRD_SCHEMAS:  # CRDs are not in the core schemas: the subset schema we maintain
            jsonschema.Draft202012Validator(json.loads(CRD_SCHEMAS[key].read_text())).validate(doc)
            continue
        for kube in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(doc, kube, strict=True)
            except kubernetes_validate.ValidationError as e:
                pytest.fail(f"{name}: {doc['kind']}/{doc['metadata']['name']} invalid for {kube}: {e.message}")


def test_crd_subset_schemas_reject_unknown_fields(chart):
    docs = render(chart, CASES["split-keda"]) + render(chart, CASES["split-external"])
    for key, path in CRD_SCHEMAS.items():
        doc = next(d for d in docs if (d["apiVersion"], d["kind"]) == key)
        doc["spec"]["bogus"] = 1
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.Draft202012Validator(json.loads(path.read_text())).validate(doc)


def test_values_schema_rejects_typos_and_bad_enums(chart):
    for bad, msg in [({"deploymentmode": "split"}, "deploymentmode"),
                     ({"deploymentMode": "splitted"}, "allInOne"),
                     ({"split": {"runtime": {"replica": 3}}}, "replica"),
                     ({"ingress": {"hosts": [{"host": "a.example.com", "paths": [{"path": "/", "pathType": "Any"}]}]}},
                      "pathType")]:
        with pytest.raises(helm.HelmValuesError, match=msg):
            chart.validate_schema(bad)
        with pytest.raises(helm.HelmError, match=msg):  # an install validates the same way
            render(chart, bad)


def test_readme_documents_every_value():
    readme = (CHART / "README.md").read_text()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    free_form = {"resources", "podSecurityContext", "containerSecurityContext", "annotations", "podAnnotations",
                 "podLabels", "nodeSelector", "affinity", "behavior", "env", "externalMetricSelector", "requests",
                 "limits"}

    def leaves(node: Any, prefix: str) -> list[str]:
        if not isinstance(node, dict) or not node or prefix.rsplit(".", 1)[-1] in free_form:
            return [prefix]
        return [p for k, v in node.items() for p in leaves(v, f"{prefix}.{k}" if prefix else k)]

    missing = [p for p in leaves(values, "") if f"`{p}`" not in readme]
    assert not missing, f"values not documented in the chart README: {missing}"


# ---------------------------------------------------------------- secrets


def secret_values(docs: list[dict]) -> set[str]:
    out = set()
    for s in kinds(docs, "Secret"):
        out |= {base64.b64decode(v).decode() for v in (s.get("data") or {}).values()}
        out |= set((s.get("stringData") or {}).values())
    return out


SECRETISH = re.compile(r"(SECRET|PASSWORD|API_KEY|_TOKEN)$|^PLEXUS_DATABASE_URL$")
CREDENTIALS_IN_URL = re.compile(r"://[^/\s]*@")


def test_no_secret_values_in_configmaps(case):
    name, _, docs = case
    secrets = secret_values(docs)
    for cm in kinds(docs, "ConfigMap"):
        for key, value in (cm.get("data") or {}).items():
            assert not SECRETISH.search(key), f"{name}: secret-like key {key} in ConfigMap {cm['metadata']['name']}"
            assert not any(s and s in value for s in secrets), f"{name}: a secret value in ConfigMap {key}"
            assert not CREDENTIALS_IN_URL.search(value), f"{name}: credentials in a URL in ConfigMap {key}"
    # every secret-like variable a container gets comes from a Secret (or is composed from one via $(VAR))
    for doc, spec in pod_specs(docs):
        for c in spec["containers"]:
            env = {e["name"]: e for e in c.get("env", [])}
            for var, e in env.items():
                if SECRETISH.search(var) or CREDENTIALS_IN_URL.search(e.get("value", "")):
                    if "valueFrom" in e:
                        assert "secretKeyRef" in e["valueFrom"], (name, var)
                    else:
                        refs = re.findall(r"\$\((\w+)\)", e["value"])
                        assert refs and all("secretKeyRef" in env[r]["valueFrom"] for r in refs), (name, var, e)


def test_generated_secret_only_when_none_given(chart):
    docs = render(chart, {})
    gen = one(docs, "Secret", "plexus-secrets")
    assert set(gen["data"]) == {"secret-key", "internal-secret"}
    assert gen["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert all(len(base64.b64decode(v)) >= 48 for v in gen["data"].values())

    docs = render(chart, {"secrets": {"existingSecret": "my-keys", "secretKeyKey": "sk", "internalSecretKey": "is"}})
    assert not kinds(docs, "Secret")
    env = {e["name"]: e for e in one(docs, "Deployment", "plexus")["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["PLEXUS_SECRET_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "my-keys", "key": "sk"}
    assert env["PLEXUS_INTERNAL_SECRET"]["valueFrom"]["secretKeyRef"] == {"name": "my-keys", "key": "is"}


def test_existing_dependency_secrets_are_referenced(chart):
    docs = render(chart, CASES["split-external"])
    assert not kinds(docs, "Secret")  # nothing generated: every credential is an existing Secret
    for svc in SERVICES:
        c = one(docs, "Deployment", f"plexus-{svc}")["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e for e in c["env"]}
        assert env["PLEXUS_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "plexus-db", "key": "database-url"}
        assert env["PLEXUS_SECRET_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "plexus-keys"
        assert ("PLEXUS_REDIS_URL" in env) == (svc == "gateway")
        assert ("PLEXUS_KNOWLEDGE__QDRANT_API_KEY" in env) == (svc in ("runtime", "indexer"))


# ---------------------------------------------------------------- split services


@pytest.mark.parametrize("name", SPLIT_CASES)
def test_every_split_service_is_complete(chart, name):
    values = CASES[name]
    docs = render(chart, values)
    assert not [d for d in kinds(docs, "Deployment") if component(d) == "allinone"]
    for svc in SERVICES:
        dep = one(docs, "Deployment", f"plexus-{svc}")
        spec = dep["spec"]["template"]["spec"]
        (c,) = spec["containers"]
        assert c["args"] == ["run", svc]
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
        assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"]
        assert c["resources"]["limits"]["memory"]
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        assert spec["securityContext"]["runAsNonRoot"] is True
        keys = {t["topologyKey"] for t in spec["topologySpreadConstraints"]}
        assert keys == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
        labels = dep["spec"]["selector"]["matchLabels"]
        assert all(t["labelSelector"]["matchLabels"] == labels for t in spec["topologySpreadConstraints"])
        pdb = one(docs, "PodDisruptionBudget", f"plexus-{svc}")
        assert pdb["spec"]["selector"]["matchLabels"] == labels
        assert one(docs, "Service", f"plexus-{svc}")["spec"]["selector"] == labels
        env = {e["name"] for e in c["env"]}
        assert {"PLEXUS_SECRET_KEY", "PLEXUS_INTERNAL_SECRET", "PLEXUS_DATABASE_URL"} <= env
        scaled = kinds(docs, "HorizontalPodAutoscaler") + kinds(docs, "ScaledObject")
        mine = [s for s in scaled if s["metadata"]["name"] == f"plexus-{svc}"]
        autoscaled = values.get("split", {}).get("defaults", {}).get("autoscaling", {}).get("enabled", False)
        assert len(mine) == (1 if autoscaled else 0)
        assert ("replicas" in dep["spec"]) == (not autoscaled)  # the autoscaler owns replicas
    cm = kinds(docs, "ConfigMap")[0]["data"]
    for svc in ("console", "runtime", "indexer", "tools"):
        assert cm[f"PLEXUS_GATEWAY__{svc.upper()}_URL"] == f"http://plexus-{svc}:8080"
    assert cm["PLEXUS_KNOWLEDGE__QDRANT_URL"] and cm["PLEXUS_HOST"] == "0.0.0.0"


def test_env_names_are_real_settings(case):
    """A typo in a PLEXUS_* name would be silently ignored by the service: every name must exist."""
    from shared.settings import settings_table

    known = set(re.findall(r"`(PLEXUS_[A-Z0-9_]+)`", settings_table()))
    name, _, docs = case
    used = set()
    for cm in kinds(docs, "ConfigMap"):
        used |= {k for k in (cm.get("data") or {}) if k.startswith("PLEXUS_")}
    for _, spec in pod_specs(docs):
        for c in spec["containers"]:
            used |= {e["name"] for e in c.get("env", []) if e["name"].startswith("PLEXUS_")}
    assert used and used <= known, f"{name}: unknown settings {used - known}"


def test_custom_metric_autoscaling_uses_the_real_names(chart):
    from shared import subjects
    from shared.metrics import ACTIVE_STREAMS

    docs = render(chart, CASES["split-external"])
    hpa = one(docs, "HorizontalPodAutoscaler", "plexus-runtime")
    pods = [m for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert [m["pods"]["metric"]["name"] for m in pods] == [ACTIVE_STREAMS._name]
    assert one(docs, "HorizontalPodAutoscaler", "plexus-runtime")["spec"]["maxReplicas"] == 20
    hpa = one(docs, "HorizontalPodAutoscaler", "plexus-indexer")
    (ext,) = [m for m in hpa["spec"]["metrics"] if m["type"] == "External"]
    assert ext["external"]["metric"]["selector"]["matchLabels"] == {
        "stream_name": subjects.INDEX_JOBS_STREAM, "consumer_name": subjects.INDEX_WORKERS}
    for svc in ("gateway", "console", "tools"):
        types = [m["type"] for m in one(docs, "HorizontalPodAutoscaler", f"plexus-{svc}")["spec"]["metrics"]]
        assert types == ["Resource"]

    docs = render(chart, CASES["split-keda"])
    assert not kinds(docs, "HorizontalPodAutoscaler")  # KEDA creates its own HPA
    triggers = {t["type"]: t for t in one(docs, "ScaledObject", "plexus-runtime")["spec"]["triggers"]}
    assert ACTIVE_STREAMS._name in triggers["prometheus"]["metadata"]["query"]
    lag = {t["type"]: t for t in one(docs, "ScaledObject", "plexus-indexer")["spec"]["triggers"]}["nats-jetstream"]
    assert lag["metadata"]["stream"] == subjects.INDEX_JOBS_STREAM
    assert lag["metadata"]["consumer"] == subjects.INDEX_WORKERS
    assert lag["metadata"]["natsServerMonitoringEndpoint"] == f"plexus-nats.{NAMESPACE}.svc.cluster.local:8222"


# ---------------------------------------------------------------- exposure and network policies


def test_only_the_gateway_is_exposed(case):
    _, values, docs = case
    public = "plexus-gateway" if values.get("deploymentMode") == "split" else "plexus"
    for svc in kinds(docs, "Service"):
        if svc["metadata"]["name"] != public:
            assert svc["spec"].get("type", "ClusterIP") == "ClusterIP", svc["metadata"]["name"]
    backends = [p["backend"]["service"]["name"] for i in kinds(docs, "Ingress")
                for r in i["spec"]["rules"] for p in r["http"]["paths"]]
    backends += [b["name"] for r in kinds(docs, "HTTPRoute") for rule in r["spec"]["rules"] for b in rule["backendRefs"]]
    assert set(backends) <= {public}
    assert bool(backends) == bool(values.get("ingress", {}).get("enabled") or values.get("gatewayApi", {}).get("enabled"))


def test_streaming_safe_exposure(chart):
    ing = kinds(render(chart, CASES["split-bundled"]), "Ingress")[0]
    ann = ing["metadata"]["annotations"]
    assert ann["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    assert int(ann["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 600
    assert ing["spec"]["tls"][0]["hosts"] == ["api.example.com"]
    route = kinds(render(chart, CASES["split-external"]), "HTTPRoute")[0]
    assert route["spec"]["rules"][0]["timeouts"] == {"request": "3600s", "backendRequest": "3600s"}
    assert route["spec"]["parentRefs"][0]["name"] == "public"


def selects(policy: dict, labels: dict) -> bool:
    sel = policy["spec"]["podSelector"].get("matchLabels", {})
    return all(labels.get(k) == v for k, v in sel.items())


def peer_components(rule: dict) -> set[str] | None:
    """Components a rule admits from this release; None when it admits other peers (namespaces, anyone)."""
    if "from" not in rule:
        return None
    out: set[str] = set()
    for peer in rule["from"]:
        sel = peer.get("podSelector")
        if sel is None or "namespaceSelector" in peer:
            return None
        comp = sel.get("matchLabels", {}).get("app.kubernetes.io/component")
        if comp:
            out.add(comp)
        for ex in sel.get("matchExpressions", []):
            assert ex["key"] == "app.kubernetes.io/component" and ex["operator"] == "In"
            out |= set(ex["values"])
    return out


def test_network_policies(case):
    name, values, docs = case
    policies = kinds(docs, "NetworkPolicy")
    split = values.get("deploymentMode") == "split"
    public = "gateway" if split else "allinone"
    metrics_peers = values.get("networkPolicy", {}).get("metricsFrom", [])
    for doc, spec in pod_specs(docs):
        labels = doc["spec"]["template"]["metadata"]["labels"]
        comp = labels["app.kubernetes.io/component"]
        if comp == "migrate":
            continue  # a Job: nothing connects to it
        mine = [p for p in policies if selects(p, labels)]
        assert mine, f"{name}: no NetworkPolicy selects {doc['kind']}/{doc['metadata']['name']}"
        for p in mine:
            for rule in p["spec"]["ingress"]:
                admitted = peer_components(rule)
                if comp == public:
                    continue  # the entry point: anyone (or networkPolicy.gatewayFrom)
                if admitted is None:  # only explicitly configured scrapers may come from elsewhere
                    allowed = [*metrics_peers, *values.get("networkPolicy", {}).get("natsMonitoringFrom", [])]
                    assert rule["from"] and all(peer in allowed for peer in rule["from"]), (name, comp, rule)
                    assert {p["port"] for p in rule["ports"]} <= {8080, 8222}, (name, comp, rule)
                elif comp in SERVICES:
                    assert admitted == {"gateway"}, (name, comp, admitted)
                else:
                    assert admitted <= APP_COMPONENTS | {comp}, (name, comp, admitted)


def test_network_policies_can_be_disabled(chart):
    assert not kinds(render(chart, {"networkPolicy": {"enabled": False}}), "NetworkPolicy")


# ---------------------------------------------------------------- modes, migrations


def test_allinone_defaults(chart):
    docs = render(chart, {})
    dep = one(docs, "Deployment", "plexus")
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "Recreate"
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert c["args"] == ["run", "all"]
    vols = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    assert vols["data"]["persistentVolumeClaim"]["claimName"] == "plexus-data"
    assert one(docs, "PersistentVolumeClaim", "plexus-data")
    assert not kinds(docs, "Job")  # `plexus run all` migrates the embedded SQLite on start
    assert not kinds(docs, "StatefulSet")


def test_migration_hook_job(chart):
    docs = render(chart, CASES["split-external"])
    job = one(docs, "Job", "plexus-migrate")
    ann = job["metadata"]["annotations"]
    assert ann["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert "before-hook-creation" in ann["helm.sh/hook-delete-policy"]
    spec = job["spec"]["template"]["spec"]
    assert spec["restartPolicy"] == "Never" and "serviceAccountName" not in spec
    (c,) = spec["containers"]
    assert c["args"] == ["migrate"] and "envFrom" not in c  # hooks run before the ConfigMap exists
    env = {e["name"]: e for e in c["env"]}
    assert env["PLEXUS_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == "plexus-db"

    # the bundled Postgres only exists once the release is installed: first migration after it
    job = one(render(chart, CASES["split-bundled"]), "Job", "plexus-migrate")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,pre-upgrade"
    assert not kinds(render(chart, {**CASES["split-external"], "migrations": {"enabled": False}}), "Job")


def test_bundled_dependencies(chart):
    docs = render(chart, CASES["split-bundled"])
    nats = one(docs, "StatefulSet", "plexus-nats")
    assert nats["spec"]["replicas"] == 3 and nats["spec"]["volumeClaimTemplates"]
    conf = one(docs, "ConfigMap", "plexus-nats")["data"]["nats.conf"]
    assert "jetstream" in conf and conf.count("nats://plexus-nats-") == 3
    qdrant = one(docs, "StatefulSet", "plexus-qdrant")
    assert qdrant["spec"]["template"]["spec"]["containers"][0]["image"].startswith("qdrant/qdrant:")
    assert qdrant["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "20Gi"
    assert one(docs, "StatefulSet", "plexus-postgresql")["spec"]["volumeClaimTemplates"]
    assert set(one(docs, "Secret", "plexus-secrets")["data"]) == {
        "secret-key", "internal-secret", "postgres-password", "redis-password", "qdrant-api-key"}
    cm = one(docs, "ConfigMap", "plexus-config")["data"]
    assert cm["PLEXUS_NATS_URL"] == "nats://plexus-nats:4222"
    assert cm["PLEXUS_KNOWLEDGE__QDRANT_URL"] == "http://plexus-qdrant:6333"


def test_upgrade_render_is_valid(chart):
    # `lookup` sees no cluster offline; an upgrade render must still produce the same set of objects
    a = {(d["kind"], d["metadata"]["name"]) for d in render(chart, CASES["split-bundled"])}
    b = {(d["kind"], d["metadata"]["name"]) for d in render(chart, CASES["split-bundled"], upgrade=True)}
    assert a == b


CONFLICTS = [
    ({"deploymentMode": "split"},
     "deploymentMode=split needs shared dependencies, but postgresql, nats, qdrant would be embedded"),
    ({"deploymentMode": "split", "postgresql": {"enabled": True}, "nats": {"enabled": True},
      "qdrant": {"enabled": True}}, "deploymentMode=split needs Redis"),
    ({"allInOne": {"replicas": 2}}, "allInOne.replicas=2 but postgresql, nats, qdrant is embedded"),
    ({"allInOne": {"replicas": 3}, "postgresql": {"enabled": True}, "nats": {"enabled": True},
      "qdrant": {"enabled": True}}, "allInOne.replicas=3 needs Redis"),
    ({"postgresql": {"enabled": True, "external": {"existingSecret": "db"}}},
     "postgresql is both bundled (postgresql.enabled=true) and external"),
    ({"nats": {"enabled": True, "external": {"url": "nats://n:4222"}}}, "nats is both bundled"),
    ({"ingress": {"enabled": True}, "gatewayApi": {"enabled": True, "parentRefs": [{"name": "gw"}]}},
     "ingress.enabled and gatewayApi.enabled are both true"),
    ({"gatewayApi": {"enabled": True}}, "gatewayApi.enabled needs gatewayApi.parentRefs"),
    ({"redis": {"external": {"url": "redis://:pw@redis:6379/0"}}},
     "redis.external.url contains credentials; put the full URL in a Secret and set redis.external.existingSecret"),
    ({"config": {"env": {"PLEXUS_SECRET_KEY": "x"}}}, "config.env.PLEXUS_SECRET_KEY looks like a secret"),
    ({"config": {"env": {"PLEXUS_DATABASE_URL": "postgresql+asyncpg://db/x"}}}, "looks like a secret"),
    ({**CASES["split-bundled"], "split": {"defaults": {"autoscaling": {"enabled": True, "minReplicas": 5,
                                                                        "maxReplicas": 2}}}},
     "split.gateway.autoscaling.minReplicas (5) is above maxReplicas (2)"),
    ({**CASES["split-bundled"], "split": {"gateway": {"autoscaling": {"activeStreams": {"enabled": True}}}}},
     "the active-streams metric applies to the runtime only"),
    ({**CASES["split-bundled"], "split": {"console": {"replicas": 2, "pdb": {"minAvailable": 2}}}},
     "split.console.pdb.minAvailable (2) >= replicas (2) would block every node drain"),
    ({**CASES["split-bundled"], "split": {"runtime": {"autoscaling": {
        "enabled": True, "engine": "keda", "activeStreams": {"enabled": True}}}}}, "needs prometheusAddress"),
]


@pytest.mark.parametrize(("values", "message"), CONFLICTS, ids=[m[:40] for _, m in CONFLICTS])
def test_conflicting_values_fail_clearly(chart, values, message):
    with pytest.raises(helm.HelmRenderError) as err:
        render(chart, values)
    text = str(err.value)  # Helm prefixes the template position; the message itself starts with "plexus: "
    assert "): plexus: " in text and message in text, text
