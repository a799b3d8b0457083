"""The Helm chart: rendered offline with Helm's own Go library (helm-python-sdk), and every
manifest validated against the Kubernetes JSON schemas that kubernetes-validate ships.

Two value sets are rendered: ci/minimal-values.yaml (the defaults plus the three required
values) and ci/full-values.yaml (every optional feature on). Nothing here needs a cluster
or the network.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from broker.config import load_settings

CHART = Path(__file__).resolve().parent.parent / "helm" / "iris-token-broker"
VALUE_SETS = ("minimal", "full")
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest schemas.
KUBERNETES_VERSIONS = ("1.25", kubernetes_validate.utils.latest_version())
RELEASE = "iris"
NAMESPACE = "fleet"
STANDARD_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
    "helm.sh/chart",
)


def load_values(name: str) -> dict:
    """Return ci/<name>-values.yaml as a dict."""
    return yaml.safe_load((CHART / "ci" / f"{name}-values.yaml").read_text())


@pytest.fixture(scope="module")
def chart():
    """The chart, loaded once per module."""
    with helm.Chart.load(CHART) as loaded:
        yield loaded


class Rendered:
    """The manifests and NOTES.txt of one render."""

    def __init__(self, files: dict[str, str]):
        self.notes = ""
        self.text = ""
        self.manifests: list[dict] = []
        for name, text in sorted(files.items()):
            if name.endswith("NOTES.txt"):
                self.notes = text
                continue
            self.text += text
            self.manifests.extend(doc for doc in yaml.safe_load_all(text) if doc)

    def kinds(self) -> list[str]:
        """Return the kinds of all manifests, sorted."""
        return sorted(manifest["kind"] for manifest in self.manifests)

    def one(self, kind: str) -> dict:
        """Return the single manifest of this kind."""
        found = [manifest for manifest in self.manifests if manifest["kind"] == kind]
        assert len(found) == 1, f"expected one {kind}, rendered {len(found)}"
        return found[0]

    def container(self) -> dict:
        """Return the Deployment's only container."""
        containers = self.one("Deployment")["spec"]["template"]["spec"]["containers"]
        assert len(containers) == 1
        return containers[0]

    def config(self) -> dict[str, str]:
        """Return the ConfigMap's data."""
        return self.one("ConfigMap")["data"]


def render(chart, values: dict) -> Rendered:
    """Render the chart with these values as release `iris` in namespace `fleet`."""
    return Rendered(chart.render(values=values, name=RELEASE, namespace=NAMESPACE))


def render_error(chart, values: dict) -> str:
    """Render and return the error message, failing the test when the render succeeds."""
    with pytest.raises(helm.HelmError) as caught:
        chart.render(values=values, name=RELEASE, namespace=NAMESPACE)
    return str(caught.value)


def with_value(values: dict, dotted: str, value: object) -> dict:
    """Return a deep copy of values with the dotted key set to value."""
    changed = copy.deepcopy(values)
    node = changed
    *parents, last = dotted.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return changed


def without_value(values: dict, dotted: str) -> dict:
    """Return a deep copy of values without the dotted key."""
    changed = copy.deepcopy(values)
    node = changed
    *parents, last = dotted.split(".")
    for key in parents:
        node = node[key]
    del node[last]
    return changed


@pytest.fixture(scope="module", params=VALUE_SETS)
def rendered(request, chart) -> Rendered:
    """The chart rendered with each value set in turn."""
    return render(chart, load_values(request.param))


@pytest.fixture(scope="module")
def minimal(chart) -> Rendered:
    """The chart rendered with ci/minimal-values.yaml."""
    return render(chart, load_values("minimal"))


@pytest.fixture(scope="module")
def full(chart) -> Rendered:
    """The chart rendered with ci/full-values.yaml."""
    return render(chart, load_values("full"))


# Rendering and schema validation.


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_manifests_match_kubernetes_schemas(rendered, version):
    for manifest in rendered.manifests:
        kubernetes_validate.validate(manifest, version, strict=True)


def test_schema_validation_rejects_unknown_field():
    broken = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "x"},
        "spec": {"ports": [{"port": 80, "targetPrt": 8080}]},
    }

    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)


@pytest.mark.parametrize("name", VALUE_SETS)
def test_helm_lint_finds_no_problem(name):
    report = helm.lint(CHART, load_values(name), strict=True)
    problems = [message for message in report["messages"] if message["severity"] >= 2]

    assert report["errors"] == []
    assert problems == []


def test_minimal_values_render_core_kinds(minimal):
    assert minimal.kinds() == [
        "ConfigMap", "Deployment", "NetworkPolicy", "Service", "ServiceAccount"
    ]


def test_full_values_render_every_kind(full):
    assert full.kinds() == [
        "ConfigMap",
        "Deployment",
        "HorizontalPodAutoscaler",
        "Ingress",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "Service",
        "ServiceAccount",
    ]


def test_every_resource_has_standard_labels(rendered):
    for manifest in rendered.manifests:
        labels = manifest["metadata"]["labels"]
        for label in STANDARD_LABELS:
            assert label in labels, f"{manifest['kind']} lacks {label}"


def test_autoscaler_replaces_replica_count(full, minimal):
    assert "replicas" not in full.one("Deployment")["spec"]
    assert minimal.one("Deployment")["spec"]["replicas"] == 2


# Security context.


def test_pod_runs_as_non_root_with_seccomp(rendered):
    pod = rendered.one("Deployment")["spec"]["template"]["spec"]
    context = pod["securityContext"]

    assert context["runAsNonRoot"] is True
    assert context["runAsUser"] != 0
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False


def test_container_is_locked_down(rendered):
    context = rendered.container()["securityContext"]

    assert context["runAsNonRoot"] is True
    assert context["privileged"] is False
    assert context["allowPrivilegeEscalation"] is False
    assert context["readOnlyRootFilesystem"] is True
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}


def test_tmp_and_metrics_dirs_are_writable(rendered):
    pod = rendered.one("Deployment")["spec"]["template"]["spec"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    mounts = {mount["mountPath"]: mount["name"] for mount in rendered.container()["volumeMounts"]}

    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert "emptyDir" in volumes[mounts["/tmp/prometheus"]]
    assert rendered.config()["PROMETHEUS_MULTIPROC_DIR"] == "/tmp/prometheus"


def test_container_has_resources(rendered):
    resources = rendered.container()["resources"]

    assert resources["requests"]["cpu"]
    assert resources["requests"]["memory"]
    assert resources["limits"]["memory"]


# Probes.


def test_liveness_probe_checks_healthz(rendered):
    probe = rendered.container()["livenessProbe"]["httpGet"]

    assert probe == {"path": "/healthz", "port": "http"}


def test_readiness_probe_checks_readyz(rendered):
    probe = rendered.container()["readinessProbe"]["httpGet"]

    assert probe == {"path": "/readyz", "port": "http"}


def test_startup_probe_checks_healthz(rendered):
    probe = rendered.container()["startupProbe"]["httpGet"]

    assert probe == {"path": "/healthz", "port": "http"}


def test_probe_port_is_container_port(rendered):
    ports = rendered.container()["ports"]

    assert ports == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert rendered.config()["GUNICORN_BIND"] == "0.0.0.0:8080"


# NetworkPolicy and Ingress.


def test_network_policy_admits_only_labelled_clients(minimal):
    policy = minimal.one("NetworkPolicy")["spec"]

    assert policy["policyTypes"] == ["Ingress"]
    assert policy["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "iris-token-broker",
        "app.kubernetes.io/instance": RELEASE,
    }
    assert policy["ingress"] == [
        {
            "from": [{"podSelector": {"matchLabels": {"iris-token-broker-client": "true"}}}],
            "ports": [{"port": "http", "protocol": "TCP"}],
        }
    ]


def test_network_policy_admits_ingress_controller(full):
    rules = full.one("NetworkPolicy")["spec"]["ingress"]
    values = load_values("full")

    assert len(rules) == 2
    assert rules[0]["from"][0]["namespaceSelector"] == values["networkPolicy"]["clientNamespaceSelector"]
    assert rules[1]["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "ingress-nginx"
    }


def test_network_policy_can_be_turned_off(chart):
    values = with_value(load_values("minimal"), "networkPolicy.enabled", False)

    assert "NetworkPolicy" not in render(chart, values).kinds()


def test_ingress_routes_only_callback_path(full):
    rules = full.one("Ingress")["spec"]["rules"]
    paths = rules[0]["http"]["paths"]

    assert len(rules) == 1
    assert rules[0]["host"] == "iris.example.com"
    assert [(path["path"], path["pathType"]) for path in paths] == [("/appinstall", "Exact")]


def test_ingress_follows_appinstall_path(chart):
    values = with_value(load_values("full"), "appinstallPath", "/trackunit/callback")
    result = render(chart, values)
    paths = result.one("Ingress")["spec"]["rules"][0]["http"]["paths"]

    assert [path["path"] for path in paths] == ["/trackunit/callback"]
    assert result.config()["APPINSTALL_PATH"] == "/trackunit/callback"


def test_notes_show_callback_and_token_urls(full):
    assert "https://iris.example.com/appinstall" in full.notes
    assert f"http://{RELEASE}-iris-token-broker.{NAMESPACE}.svc:8080/token/<accountId>" in full.notes


# Settings and Secrets.


def test_configmap_holds_settings(full):
    config = full.config()

    assert config["VAULT_ADDR"] == "https://vault.example.com:8200"
    assert config["VAULT_AUTH_METHOD"] == "kubernetes"
    assert config["VAULT_K8S_ROLE"] == "iris-token-broker-prod"
    assert config["VAULT_K8S_AUTH_MOUNT"] == "kubernetes-prod"
    assert config["VAULT_NAMESPACE"] == "fleet"
    assert config["VAULT_KV_MOUNT"] == "kv-iris"
    assert config["VAULT_KV_PREFIX"] == "brokers/eu/accounts"
    assert config["TRACKUNIT_SCOPES"] == "asset.view account.asset.manage"
    assert config["TOKEN_CACHE_SIZE"] == "100000"
    assert config["TOKEN_DEFAULT_LIFETIME"] == "300"


def test_settings_parse_with_service_config(full):
    env = dict(full.config())
    env["INTERNAL_API_KEYS"] = "k" * 32
    settings = load_settings(env)

    assert settings.vault_auth_method == "kubernetes"
    assert settings.vault_k8s_token_path == "/var/run/secrets/iris-token-broker/vault/token"
    assert settings.vault_cacert == "/etc/iris-token-broker/vault-ca/ca.crt"
    assert settings.token_cache_size == 100000


# Signed install callbacks, scopes and token cache settings.

IDENTITY_SETTINGS = {
    "REQUIRE_TRACKUNIT_IDENTITY": "true",
    "TRACKUNIT_JWKS_URL": "https://iris.trackunit.com/api/marketplace/jwks",
    "TRACKUNIT_JWKS_TIMEOUT": "1.5",
    "TRACKUNIT_JWKS_CACHE_TTL": "600",
    "TRACKUNIT_JWKS_MIN_REFETCH_INTERVAL": "60",
    "TRACKUNIT_IDENTITY_LEEWAY": "0",
    "TRACKUNIT_IDENTITY_ISSUER": "https://iris.trackunit.com",
    "TRACKUNIT_IDENTITY_AUDIENCE": "9a3b4c5d-0000-4000-8000-000000000001",
}
OPTIONAL_SETTINGS = {
    "TRACKUNIT_OPTIONAL_SCOPES": "fleet.view",
    "TOKEN_COHERENCE_SECONDS": "15",
    "TOKEN_REFRESH_AHEAD_FRACTION": "0.2",
    "TOKEN_INVALID_CLIENT_BACKOFF": "120",
}
IDENTITY_WARNING = "WARNING: trackunit.identity.required is false"


@pytest.mark.parametrize("name", {**IDENTITY_SETTINGS, **OPTIONAL_SETTINGS})
def test_full_values_render_setting(full, name):
    expected = {**IDENTITY_SETTINGS, **OPTIONAL_SETTINGS}[name]

    assert full.config().get(name) == expected


def test_full_values_set_identity_values():
    identity = load_values("full")["trackunit"]["identity"]

    assert set(identity) == {
        "required", "jwksUrl", "jwksTimeout", "jwksCacheTtl",
        "jwksMinRefetchInterval", "leeway", "issuer", "audience",
    }


def test_minimal_values_verify_callbacks(minimal):
    config = minimal.config()

    assert config["REQUIRE_TRACKUNIT_IDENTITY"] == "true"
    assert config["TRACKUNIT_JWKS_URL"] == "https://iris.trackunit.com/api/marketplace/jwks"


@pytest.mark.parametrize(
    "name",
    [name for name in {**IDENTITY_SETTINGS, **OPTIONAL_SETTINGS}
     if name not in ("REQUIRE_TRACKUNIT_IDENTITY", "TRACKUNIT_JWKS_URL")],
)
def test_unset_optional_setting_not_rendered(minimal, name):
    assert name not in minimal.config()


def test_identity_settings_parse_with_service_config(full):
    env = dict(full.config())
    env["INTERNAL_API_KEYS"] = "k" * 32
    settings = load_settings(env)

    assert settings.require_trackunit_identity is True
    assert settings.trackunit_jwks_timeout == 1.5
    assert settings.trackunit_jwks_cache_ttl == 600
    assert settings.trackunit_jwks_min_refetch_interval == 60
    assert settings.trackunit_identity_leeway == 0
    assert settings.trackunit_identity_issuer == "https://iris.trackunit.com"
    assert settings.trackunit_identity_audience == "9a3b4c5d-0000-4000-8000-000000000001"
    assert settings.trackunit_optional_scopes == ("fleet.view",)
    assert settings.token_coherence_seconds == 15
    assert settings.token_refresh_ahead_fraction == 0.2
    assert settings.token_invalid_client_backoff == 120


def test_whole_seconds_render_without_exponent(chart):
    values = with_value(load_values("minimal"), "trackunit.identity.jwksCacheTtl", 86400)
    values = with_value(values, "tokenCache.coherenceSeconds", 3600)
    config = render(chart, values).config()

    assert config["TRACKUNIT_JWKS_CACHE_TTL"] == "86400"
    assert config["TOKEN_COHERENCE_SECONDS"] == "3600"


def test_notes_silent_when_identity_required(rendered):
    assert IDENTITY_WARNING not in rendered.notes


def test_notes_warn_when_identity_not_required(chart):
    values = with_value(load_values("full"), "trackunit.identity.required", False)
    result = render(chart, values)

    assert result.notes.startswith("#####")
    assert IDENTITY_WARNING in result.notes
    assert result.config()["REQUIRE_TRACKUNIT_IDENTITY"] == "false"


def test_deleted_required_value_keeps_check_on(chart):
    values = with_value(load_values("minimal"), "trackunit.identity.required", None)
    result = render(chart, values)

    assert result.config()["REQUIRE_TRACKUNIT_IDENTITY"] == "true"
    assert IDENTITY_WARNING not in result.notes


def test_identity_switch_rejected_in_extra_env(chart):
    values = with_value(load_values("minimal"), "extraEnv.REQUIRE_TRACKUNIT_IDENTITY", "false")

    message = render_error(chart, values)

    assert "extraEnv.REQUIRE_TRACKUNIT_IDENTITY is not allowed" in message
    assert "trackunit.identity.required" in message


def test_identity_switch_rejected_in_extra_secret_env(chart):
    entry = {"name": "REQUIRE_TRACKUNIT_IDENTITY", "secretName": "switch", "key": "value"}
    values = with_value(load_values("minimal"), "extraSecretEnv", [entry])

    message = render_error(chart, values)

    assert "extraSecretEnv REQUIRE_TRACKUNIT_IDENTITY is not allowed" in message


def test_scope_in_both_lists_rejected(chart):
    values = with_value(load_values("minimal"), "trackunit.optionalScopes", "fleet.view asset.view")

    message = render_error(chart, values)

    assert "trackunit.optionalScopes repeats asset.view" in message


def test_projected_token_mounted_at_configured_path(full):
    pod = full.one("Deployment")["spec"]["template"]["spec"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    mounts = {mount["name"]: mount["mountPath"] for mount in full.container()["volumeMounts"]}
    token_source = volumes["vault-token"]["projected"]["sources"][0]["serviceAccountToken"]
    token_path = full.config()["VAULT_K8S_TOKEN_PATH"]

    assert f"{mounts['vault-token']}/{token_source['path']}" == token_path
    assert token_source["audience"] == "vault"
    assert token_source["expirationSeconds"] == 3600


def test_internal_api_keys_come_from_secret(rendered):
    env = {entry["name"]: entry for entry in rendered.container()["env"]}

    assert "value" not in env["INTERNAL_API_KEYS"]
    assert env["INTERNAL_API_KEYS"]["valueFrom"]["secretKeyRef"] == {
        "name": "iris-token-broker-internal-api-keys",
        "key": "INTERNAL_API_KEYS",
    }
    assert "INTERNAL_API_KEYS" not in rendered.config()


def test_no_secret_object_rendered(rendered):
    assert "Secret" not in rendered.kinds()


def test_env_entries_have_no_inline_values(rendered):
    for entry in rendered.container()["env"]:
        assert "value" not in entry, f"{entry['name']} is set in clear"


def test_token_auth_reads_token_from_secret(chart):
    values = with_value(load_values("minimal"), "vault.authMethod", "token")
    values = with_value(values, "vault.tokenSecret.name", "vault-token")
    result = render(chart, values)
    env = {entry["name"]: entry for entry in result.container()["env"]}
    volume_names = [volume["name"] for volume in result.one("Deployment")["spec"]["template"]["spec"]["volumes"]]

    assert env["VAULT_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "vault-token", "key": "token"}
    assert "VAULT_TOKEN" not in result.config()
    assert "VAULT_K8S_ROLE" not in result.config()
    assert "vault-token" not in volume_names


@pytest.mark.parametrize("name", ["INTERNAL_API_KEYS", "VAULT_TOKEN"])
def test_secret_in_extra_env_rejected(chart, name):
    sentinel = "sentinel-secret-value-0123456789"
    values = with_value(load_values("minimal"), f"extraEnv.{name}", sentinel)

    message = render_error(chart, values)

    assert f"extraEnv.{name} is not allowed" in message
    assert sentinel not in message


def test_checksum_changes_with_configuration(chart):
    minimal_values = load_values("minimal")
    annotation = "checksum/config"

    def checksum(values):
        return render(chart, values).one("Deployment")["spec"]["template"]["metadata"]["annotations"][annotation]

    same = checksum(minimal_values)
    changed = checksum(with_value(minimal_values, "logging.level", "DEBUG"))
    extra = checksum(with_value(minimal_values, "extraEnv", {"NEW_SETTING": "1"}))

    assert checksum(minimal_values) == same
    assert changed != same
    assert extra != same


# Required values and the values schema.

REQUIRED_VALUES = {
    "vault.addr": None,
    "trackunit.scopes": None,
    "internalApiKeys.existingSecret": None,
}
CONDITIONAL_REQUIRED = {
    "ingress.host": {"ingress.enabled": True, "ingress.tls.secretName": "tls"},
    "ingress.tls.secretName": {"ingress.enabled": True, "ingress.host": "iris.example.com"},
    "vault.tokenSecret.name": {"vault.authMethod": "token"},
    "vault.kubernetes.role": {},
    "serviceAccount.name": {"serviceAccount.create": False},
}


@pytest.mark.parametrize("dotted", REQUIRED_VALUES)
def test_missing_required_value_named(chart, dotted):
    message = render_error(chart, without_value(load_values("minimal"), dotted))

    assert f"{dotted} is required" in message


@pytest.mark.parametrize("dotted", CONDITIONAL_REQUIRED)
def test_missing_conditional_value_named(chart, dotted):
    values = load_values("minimal")
    for key, value in CONDITIONAL_REQUIRED[dotted].items():
        values = with_value(values, key, value)
    values = with_value(values, dotted, "")

    message = render_error(chart, values)

    assert f"{dotted} is required" in message


@pytest.mark.parametrize(
    ("dotted", "value"),
    [
        ("logging.level", "VERBOSE"),
        ("vault.authMethod", "approle"),
        ("replicaCount", "two"),
        ("extraEnv", {"lower_case": "x"}),
        ("imageTag", "typo"),
        ("trackunit.identity.required", "no"),
        ("trackunit.identity.jwksUrl", "http://iris.trackunit.com/api/marketplace/jwks"),
        ("trackunit.identity.leeway", 301),
        ("trackunit.identity.jwksCacheTtl", 9),
        ("trackunit.identity.jwksTimeout", 11),
        ("trackunit.identity.verify", False),
        ("tokenCache.refreshAheadFraction", 0.95),
        ("tokenCache.invalidClientBackoff", -1),
    ],
    ids=[
        "bad log level",
        "unknown auth method",
        "string replica count",
        "bad env name",
        "unknown key",
        "string identity switch",
        "plain http jwks url",
        "leeway above 300",
        "jwks cache ttl below 10",
        "jwks timeout above 10",
        "unknown identity key",
        "refresh fraction above 0.9",
        "negative invalid client backoff",
    ],
)
def test_schema_rejects_bad_value(chart, dotted, value):
    message = render_error(chart, with_value(load_values("minimal"), dotted, value))

    assert "schema" in message
    assert dotted.split(".")[0] in message


def test_schema_describes_every_value():
    schema = json.loads((CHART / "values.schema.json").read_text())
    undescribed = []

    def walk(node, path):
        for key, child in node.get("properties", {}).items():
            if "description" not in child:
                undescribed.append(f"{path}{key}")
            walk(child, f"{path}{key}.")

    walk(schema, "")
    assert undescribed == []


def test_every_value_has_comment():
    schema = json.loads((CHART / "values.schema.json").read_text())
    lines = (CHART / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, str]] = []
    uncommented = []

    for number, line in enumerate(lines):
        match = re.match(r"^( *)([A-Za-z][\w.-]*):", line)
        if not match:
            continue
        indent, key = len(match.group(1)), match.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        parent = schema
        for _, name in stack:
            parent = parent.get("properties", {}).get(name, {})
        stack.append((indent, key))
        if "properties" not in parent:
            continue  # a free-form map, such as resources, whose keys are data
        previous = lines[number - 1].strip() if number else ""
        if not previous.startswith("#"):
            uncommented.append(".".join(name for _, name in stack))

    assert uncommented == []
