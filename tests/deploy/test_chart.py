"""The Helm chart, rendered with the Helm v4 SDK (``helm-python-sdk``, no binary) and checked.

For each of the default, basic and enhanced value sets: values pass ``values.schema.json``,
``helm lint --strict`` is clean, every rendered object passes ``kubernetes-validate --strict``
(1.35), custom resources pass their schemas from ``../shared/testdata/crd-schemas`` (and our
own CRDs' OpenAPI schemas), and every Pod template passes the restricted Pod Security essentials
(the one documented exception: the opt-in nftables DaemonSet). Bad values fail the schema
naming the key.

The restricted check here is the Pod Security Standard's restricted checks written out in this
test and held against the upstream conformance fixtures (all 76 failing and 23 passing Pods);
once ``stockade.workspace``'s checker is merged it replaces :func:`_restricted_violations`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml

from stockade.secretsync import VaultSecret

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "stockade"
# CI clones the repository next to shared/; a worktree sits one level deeper (wt/NAME).
SHARED = Path(os.environ.get("STOCKADE_SHARED", REPO.parent / "shared"))
if not (SHARED / "testdata").is_dir() and (REPO.parents[1] / "shared" / "testdata").is_dir():
    SHARED = REPO.parents[1] / "shared"
CRD_SCHEMAS = SHARED / "testdata" / "crd-schemas"
KUBE_VERSION = "1.35.0"

VALUES: dict[str, dict[str, Any]] = {
    "default": {},
    "basic": {"security": {"mode": "basic"}, "vault": {"addr": "https://openbao.vault:8200"}},
    "enhanced": {
        "security": {"mode": "enhanced"},
        "cilium": {"enabled": True},
        "vault": {"addr": "https://openbao.vault:8200"},
    },
    "host-keys": {
        "ssh": {
            "hostKeys": {
                "existingSecret": "gateway-host-keys",
                "keys": ["ssh_host_ed25519_key", "ssh_host_ecdsa_key"],
            }
        }
    },
}
#: Custom kinds and where their schema comes from.
SHARED_SCHEMAS = {
    ("cert-manager.io/v1", "Certificate"): "cert-manager.io/certificate_v1.json",
    ("cert-manager.io/v1", "Issuer"): "cert-manager.io/issuer_v1.json",
    ("cilium.io/v2", "CiliumNetworkPolicy"): "cilium.io/ciliumnetworkpolicy_v2.json",
}
#: Kinds of other projects' CRDs with no schema in shared/ (Linkerd, trust-manager): shape only.
UNCHECKED = {
    ("policy.linkerd.io/v1beta3", "Server"),
    ("policy.linkerd.io/v1alpha1", "MeshTLSAuthentication"),
    ("policy.linkerd.io/v1alpha1", "AuthorizationPolicy"),
    ("trust.cert-manager.io/v1alpha1", "Bundle"),
}
POD_KINDS = {"Deployment", "DaemonSet", "StatefulSet", "Job"}
EXCEPTION = "nftables"


@pytest.fixture(scope="module")
def chart() -> helm.Chart:
    return helm.Chart.load(str(CHART))


def _validate(obj: dict[str, Any], schema: dict[str, Any]) -> None:
    """jsonschema validation without the metaschema check (upstream schemas use RE2-only
    patterns such as ``\\PC`` that Python's ``re`` cannot compile, in fields we never set)."""
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(obj)
    ]
    assert errors == [], f"{obj['kind']}/{obj['metadata']['name']}"


_RENDERED: dict[str, list[dict[str, Any]]] = {}


def _render(chart: helm.Chart, values: dict[str, Any]) -> list[dict[str, Any]]:
    key = json.dumps(values, sort_keys=True)
    if key not in _RENDERED:
        _RENDERED[key] = _render_now(chart, values)
    return _RENDERED[key]


def _render_now(chart: helm.Chart, values: dict[str, Any]) -> list[dict[str, Any]]:
    out = chart.render(values, name="stockade", namespace="stockade", is_install=True)
    objects = []
    for path, text in sorted(out.items()):
        if not path.endswith((".yaml", ".yml")):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                objects.append(doc)
    return objects


def _crds() -> dict[tuple[str, str], dict[str, Any]]:
    schemas = {}
    for path in sorted((CHART / "crds").glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            for version in crd["spec"]["versions"]:
                key = (f"{crd['spec']['group']}/{version['name']}", crd["spec"]["names"]["kind"])
                schemas[key] = version["schema"]["openAPIV3Schema"]
    return schemas


def test_shared_testdata_present() -> None:
    assert CRD_SCHEMAS.is_dir(), f"{CRD_SCHEMAS} missing: CI clones the repo next to shared/"


@pytest.mark.parametrize("case", sorted(VALUES))
def test_values_pass_schema(chart: helm.Chart, case: str) -> None:
    chart.validate_schema(VALUES[case])


@pytest.mark.parametrize("case", sorted(VALUES))
def test_lint_strict(case: str) -> None:
    report = helm.lint(str(CHART), VALUES[case], strict=True, kube_version=f"v{KUBE_VERSION}")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == []
    assert problems == []


@pytest.mark.parametrize("case", sorted(VALUES))
def test_every_object_valid(chart: helm.Chart, case: str) -> None:
    objects = _render(chart, VALUES[case])
    crds = _crds()
    checked = 0
    for obj in objects:
        key = (obj["apiVersion"], obj["kind"])
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        if key in SHARED_SCHEMAS:
            schema = json.loads((CRD_SCHEMAS / SHARED_SCHEMAS[key]).read_text())
            _validate(obj, schema)
        elif key in crds:
            _validate(obj, crds[key])
        elif key in UNCHECKED:
            assert obj.get("spec"), where
        else:
            try:
                kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{where}: {exc.message} at {list(exc.path)}")
        checked += 1
    assert checked == len(objects) > 20


def test_crds_are_valid_custom_resource_definitions() -> None:
    for path in sorted((CHART / "crds").glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            kubernetes_validate.validate(crd, KUBE_VERSION, strict=True)


def _pods(objects: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{o['kind']}/{o['metadata']['name']}", o["spec"]["template"]["spec"])
        for o in objects
        if o["kind"] in POD_KINDS
    ]


_ALLOWED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                    "persistentVolumeClaim", "projected", "secret"}  # fmt: skip


def _restricted_violations(pod: dict[str, Any]) -> list[str]:
    """The restricted Pod Security Standard's checks (v1.35), as the upstream admission does."""
    out = []
    psc = pod.get("securityContext") or {}
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(flag):
            out.append(f"{flag}: true")
    for volume in pod.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= _ALLOWED_VOLUMES:
            out.append(f"volume {volume['name']}: {sorted(kinds - _ALLOWED_VOLUMES)}")
    if (psc.get("seccompProfile") or {}).get("type") == "Unconfined":
        out.append("pod seccompProfile Unconfined")
    if psc.get("runAsUser") == 0:
        out.append("pod runAsUser 0")
    out += [f"pod: {v}" for v in _selinux_apparmor(psc)]
    for sysctl in psc.get("sysctls") or []:
        if sysctl.get("name") not in _SAFE_SYSCTLS:
            out.append(f"sysctl {sysctl.get('name')}")
    for key, value in ((pod.get("metadata") or {}).get("annotations") or {}).items():
        if key.startswith("container.apparmor.security.beta.kubernetes.io/") and not (
            value == "runtime/default" or value.startswith("localhost/")
        ):
            out.append(f"apparmor annotation {value}")
    windows = (pod.get("os") or {}).get("name") == "windows"
    for container in (pod.get("initContainers") or []) + pod["containers"]:
        name = container["name"]
        sc = container.get("securityContext") or {}
        if sc.get("privileged"):
            out.append(f"{name}: privileged")
        if not windows and sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{name}: allowPrivilegeEscalation must be false")
        caps = sc.get("capabilities") or {}
        if not windows and "ALL" not in (caps.get("drop") or []):
            out.append(f"{name}: capabilities must drop ALL")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            out.append(f"{name}: adds {sorted(caps['add'])}")
        out += [f"{name}: {v}" for v in _selinux_apparmor(sc)]
        if sc.get("procMount") not in (None, "Default"):
            out.append(f"{name}: procMount {sc['procMount']}")
        for handler in _handlers(container):
            if (handler.get("httpGet") or {}).get("host") or (handler.get("tcpSocket") or {}).get(
                "host"
            ):
                out.append(f"{name}: probe or lifecycle handler sets host")
        if not sc.get("runAsNonRoot", psc.get("runAsNonRoot")):
            out.append(f"{name}: runAsNonRoot must be true")
        if sc.get("runAsUser") == 0:
            out.append(f"{name}: runAsUser 0")
        seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        if not windows and seccomp not in {"RuntimeDefault", "Localhost"}:
            out.append(f"{name}: seccompProfile must be RuntimeDefault or Localhost")
        for port in container.get("ports") or []:
            if port.get("hostPort"):
                out.append(f"{name}: hostPort {port['hostPort']}")
    return out


_SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range",
                 "net.ipv4.ip_unprivileged_port_start", "net.ipv4.tcp_syncookies",
                 "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                 "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout",
                 "net.ipv4.tcp_keepalive_intvl", "net.ipv4.tcp_keepalive_probes",
                 "net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem"}  # fmt: skip
_SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}


def _selinux_apparmor(sc: dict[str, Any]) -> list[str]:
    out = []
    selinux = sc.get("seLinuxOptions") or {}
    if selinux.get("type", "") not in _SELINUX_TYPES:
        out.append(f"seLinuxOptions.type {selinux['type']}")
    if selinux.get("user") or selinux.get("role"):
        out.append("seLinuxOptions user/role set")
    if (sc.get("appArmorProfile") or {}).get("type") == "Unconfined":
        out.append("appArmorProfile Unconfined")
    return out


def _handlers(container: dict[str, Any]) -> list[dict[str, Any]]:
    handlers = [container.get(p) or {} for p in ("livenessProbe", "readinessProbe", "startupProbe")]
    lifecycle = container.get("lifecycle") or {}
    return [*handlers, lifecycle.get("postStart") or {}, lifecycle.get("preStop") or {}]


@pytest.mark.parametrize("case", sorted(VALUES))
def test_every_pod_restricted(chart: helm.Chart, case: str) -> None:
    pods = _pods(_render(chart, VALUES[case]))
    assert len(pods) >= 7
    for where, pod in pods:
        assert _restricted_violations(pod) == [], where


def _with_meta(pod: dict[str, Any]) -> dict[str, Any]:
    return {**pod["spec"], "metadata": pod.get("metadata") or {}}


def test_the_checker_catches_what_it_checks() -> None:
    """The checker above against the upstream conformance fixtures (restricted v1.35)."""
    fixtures = SHARED / "testdata" / "pod-security" / "test" / "testdata" / "restricted" / "v1.35"
    failing = sorted((fixtures / "fail").glob("*.yaml"))
    assert failing
    caught = 0
    for path in failing:
        pod = yaml.safe_load(path.read_text())
        if pod.get("kind") == "Pod" and _restricted_violations(_with_meta(pod)):
            caught += 1
    assert caught == len(failing)
    for path in sorted((fixtures / "pass").glob("*.yaml")):
        pod = yaml.safe_load(path.read_text())
        assert _restricted_violations(_with_meta(pod)) == [], path.name


def test_nftables_daemonset_is_the_documented_exception(chart: helm.Chart) -> None:
    objects = _render(chart, {"nftables": {"enabled": True}})
    (ds,) = [o for o in objects if o["kind"] == "DaemonSet"]
    assert EXCEPTION in ds["metadata"]["name"]
    assert "pod-security-exception" in " ".join(ds["metadata"]["annotations"])
    violations = _restricted_violations(ds["spec"]["template"]["spec"])
    assert violations == [
        "hostNetwork: true",
        "enforcer: adds ['NET_ADMIN']",
        "enforcer: runAsNonRoot must be true",
    ]
    assert [o for o in _render(chart, {}) if o["kind"] == "DaemonSet"] == []


def _by(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def test_one_deployment_per_service_running_serve(chart: helm.Chart) -> None:
    objects = _render(chart, {})
    deployments = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Deployment"}
    for service in ("identity", "authz", "gateway", "broker", "shield", "audit"):
        container = deployments[f"stockade-{service}"]["spec"]["template"]["spec"]["containers"][0]
        assert container["args"] == ["serve", service]


def test_each_service_issues_from_its_own_pki_role(chart: helm.Chart) -> None:
    """ATTACK (``security.mode: none``): with one PKI role for every service, any service's
    Vault login issues any service's certificate: a gateway Pod a certificate with CN
    ``identity`` (peers would take it for identity), a broker or shield one naming any gateway
    id (identity would let it beat, sweep and open sessions as that gateway). Each service
    issues from ``<openbaoPki.role>-<service>``, whose allowed names are its own."""
    objects = _render(chart, {})
    roles = {}
    for o in objects:
        if o["kind"] != "Deployment":
            continue
        (container,) = o["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        if env.get("STOCKADE_TLS__SOURCE") == "openbao-pki":
            roles[container["args"][1]] = env["STOCKADE_TLS__PKI_ROLE"]
    assert {"identity", "authz", "gateway", "broker", "shield", "audit"} <= set(roles)
    assert roles == {service: f"stockade-{service}" for service in roles}


def test_gateway_scaling_and_ssh_service(chart: helm.Chart) -> None:
    objects = _render(chart, {"ssh": {"proxyProtocol": {"enabled": True}}})
    hpa = _by(objects, "HorizontalPodAutoscaler", "stockade-gateway")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "stockade-gateway"
    assert "replicas" not in _by(objects, "Deployment", "stockade-gateway")["spec"]
    assert _by(objects, "PodDisruptionBudget", "stockade-gateway")["spec"]["minAvailable"] == 1
    ssh = _by(objects, "Service", "stockade-ssh")
    assert ssh["spec"]["type"] == "LoadBalancer"
    assert ssh["spec"]["externalTrafficPolicy"] == "Local"
    env = _by(objects, "Deployment", "stockade-gateway")["spec"]["template"]["spec"]
    names = {e["name"] for e in env["containers"][0]["env"]}
    assert "STOCKADE_GATEWAY__PROXY_PROTOCOL" in names


def test_projected_token_audiences_match_allow_lists(chart: helm.Chart) -> None:
    objects = _render(chart, {})
    config = json.loads(
        _by(objects, "ConfigMap", "stockade-service-auth")["data"]["service-auth.json"]
    )
    for callee, rules in config.items():
        assert rules["audience"] == f"stockade-{callee}"
        for callers in rules["allow"].values():
            for account in callers:
                caller = account.removeprefix("stockade-")
                pod = _by(objects, "Deployment", account)["spec"]["template"]["spec"]
                tokens = next(v for v in pod["volumes"] if v["name"] == "tokens")
                audiences = {
                    s["serviceAccountToken"].get("audience")
                    for s in tokens["projected"]["sources"]
                    if "serviceAccountToken" in s
                }
                assert f"stockade-{callee}" in audiences, (caller, callee)
    assert config["identity"]["allow"]["/stockade.identity.v1.Identity/VerifyToken"] == [
        "stockade-broker"
    ]
    for o in objects:
        if o["kind"] == "ServiceAccount":
            assert o["automountServiceAccountToken"] is False


def test_network_policies_name_real_callers(chart: helm.Chart) -> None:
    objects = _render(chart, {})
    policy = _by(objects, "NetworkPolicy", "stockade-identity-from-peers")
    callers = {
        peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
        for peer in policy["spec"]["ingress"][0]["from"]
    }
    assert callers == {"broker", "gateway"}
    assert _by(objects, "NetworkPolicy", "stockade-default-deny")["spec"]["policyTypes"] == [
        "Ingress"
    ]


def test_basic_mode_certificates_for_every_service(chart: helm.Chart) -> None:
    objects = _render(chart, VALUES["basic"])
    certs = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Certificate"}
    for service in ("identity", "authz", "gateway", "broker", "shield", "audit", "secretsync"):
        spec = certs[f"stockade-{service}"]["spec"]
        assert spec["commonName"] == service  # what identity's per-method checks know
        assert service in spec["dnsNames"]  # what peers.server_name checks
    # the gateway's certificate names its gateway id (identity refuses any other), once
    assert certs["stockade-gateway"]["spec"]["uris"] == [
        "spiffe://stockade/gateway/stockade-gateway"
    ]
    assert [name for name, c in certs.items() if "uris" in c["spec"]] == ["stockade-gateway"]
    assert not [o for o in objects if o["apiVersion"].startswith("policy.linkerd.io")]
    vault = _render(
        chart,
        {"security": {"mode": "basic", "certManager": {"issuer": "vault",
                                                        "vault": {"server": "https://bao:8200"}}}},
    )  # fmt: skip
    issuer = _by(vault, "Issuer", "stockade-ca")
    assert issuer["spec"]["vault"]["path"] == "pki/sign/stockade"
    jsonschema.validate(
        issuer,
        json.loads((CRD_SCHEMAS / SHARED_SCHEMAS[("cert-manager.io/v1", "Issuer")]).read_text()),
    )


def test_enhanced_mode_mesh_proxy_and_oidc(chart: helm.Chart) -> None:
    objects = _render(chart, VALUES["enhanced"])
    gateway = _by(objects, "Deployment", "stockade-gateway")["spec"]["template"]["metadata"]
    assert gateway["annotations"]["linkerd.io/inject"] == "enabled"
    assert _by(objects, "AuthorizationPolicy", "stockade-identity")
    assert _by(objects, "Certificate", "linkerd-trust-anchor")["spec"]["isCA"] is True
    assert _by(objects, "Bundle", "linkerd-identity-trust-roots")
    assert _by(objects, "Deployment", "stockade-oauth2-proxy")
    assert _by(objects, "Deployment", "stockade-keycloak")


def test_omit_mirrors_k2s_flags(chart: helm.Chart) -> None:
    values = {"security": {"mode": "enhanced", "omit": ["keycloak", "oauth2Proxy"]}}
    names = {o["metadata"]["name"] for o in _render(chart, values) if o["kind"] == "Deployment"}
    assert "stockade-keycloak" not in names
    assert "stockade-oauth2-proxy" not in names
    hydra = {"security": {"mode": "enhanced", "oidc": {"provider": "hydra"}, "omit": ["hydra"]}}
    names = {o["metadata"]["name"] for o in _render(chart, hydra) if o["kind"] == "Deployment"}
    assert "stockade-hydra" not in names
    assert "stockade-oauth2-proxy" in names


def test_store_secret_from_vault_parses_as_vaultsecret(chart: helm.Chart) -> None:
    objects = _render(chart, VALUES["basic"])
    (vs,) = [o for o in objects if o["kind"] == "VaultSecret"]
    parsed = VaultSecret.from_object(vs)
    assert parsed.spec.destination.name == "stockade-store"
    assert "{{ .Secrets.password }}" in parsed.spec.destination.transformation.templates["url"].text


def _host_key_pod(chart: helm.Chart) -> dict[str, Any]:
    objects = _render(chart, VALUES["host-keys"])
    pod: dict[str, Any] = _by(objects, "Deployment", "stockade-gateway")["spec"]["template"]
    return pod["spec"]


def test_shared_host_keys_reach_the_gateway_as_its_own_0600_copies(chart: helm.Chart) -> None:
    """The Secret is mounted in the init container only; the gateway container reads the
    in-memory copies, named by gateway.host_key_files."""
    pod = _host_key_pod(chart)
    (init,) = pod["initContainers"]
    (gateway,) = pod["containers"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["host-keys-secret"]["secret"]["secretName"] == "gateway-host-keys"
    assert volumes["host-keys"]["emptyDir"]["medium"] == "Memory"
    assert {m["name"] for m in init["volumeMounts"]} == {"host-keys-secret", "host-keys"}
    mounts = {m["name"]: m for m in gateway["volumeMounts"]}
    assert "host-keys-secret" not in mounts  # least privilege: the gateway never sees it
    assert mounts["host-keys"]["readOnly"] is True
    env = {e["name"]: e.get("value") for e in gateway["env"]}
    files = json.loads(env["STOCKADE_GATEWAY__HOST_KEY_FILES"])
    assert files == [
        f"{mounts['host-keys']['mountPath']}/{name}"
        for name in ("ssh_host_ed25519_key", "ssh_host_ecdsa_key")
    ]
    assert init["securityContext"]["readOnlyRootFilesystem"] is True
    assert _restricted_violations(pod) == []
    # without a Secret: no init container, each gateway generates its own keys
    plain = _by(_render(chart, {}), "Deployment", "stockade-gateway")["spec"]["template"]["spec"]
    assert "initContainers" not in plain
    assert "STOCKADE_GATEWAY__HOST_KEY_FILES" not in {
        e["name"] for e in plain["containers"][0]["env"]
    }


def _kubelet_secret_volume(tmp_path: Path, gid: int) -> tuple[Path, list[str]]:
    """Host keys laid out as kubelet writes a Secret volume with fsGroup: root's files, mode
    0440, group ``gid``, behind ``..data`` symlinks."""
    import subprocess

    volume = tmp_path / "secret"
    data = volume / "..2026_12_01_00_00_00.1"
    data.mkdir(parents=True)
    for directory in (volume, data):  # as kubelet makes them, whatever this process's umask
        directory.chmod(0o755)
    names = []
    for name, kind in (("ssh_host_ed25519_key", "ed25519"), ("ssh_host_ecdsa_key", "ecdsa")):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", kind, "-N", "", "-f", str(data / name)], check=True
        )
        (data / f"{name}.pub").unlink()
        os.chown(data / name, 0, gid)
        os.chmod(data / name, 0o440)
        names.append(name)
    os.symlink(data.name, volume / "..data")
    for name in names:
        os.symlink(f"..data/{name}", volume / name)
    return volume, names


def _run_init(init: dict[str, Any], source: Path, target: Path, *, uid: int | None) -> None:
    """The init container's own command (as rendered) with its paths pointed at ``source`` and
    ``target``, under the system ``python3``, as ``uid`` (None: this process's)."""
    import subprocess

    command = ["/usr/bin/python3", *init["command"][1:]]
    names = init["args"][2:]
    as_uid = ["setpriv", f"--reuid={uid}", f"--regid={uid}", f"--groups={uid}"]
    prefix = [] if uid is None else as_uid
    result = subprocess.run(
        [*prefix, *command, str(source), str(target), *names],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_the_init_container_makes_keys_the_gateway_accepts(
    chart: helm.Chart, tmp_path: Path
) -> None:
    """The rendered init command, run on a kubelet-style Secret volume (root's, 0440, fsGroup),
    writes copies the gateway's own check accepts; the Secret's files it refuses."""
    (init,) = _host_key_pod(chart)["initContainers"]
    uid = 10001  # podSecurity.runAsUser / runAsGroup (= fsGroup)
    # pytest's tmp_path is root's 0700: the pod's uid could not reach its own volumes there
    base = Path(tempfile.mkdtemp(prefix="stockade-host-keys-"))
    base.chmod(0o711)
    try:
        _check_init_copies(init, base, uid)
    finally:
        shutil.rmtree(base)


def _check_init_copies(init: dict[str, Any], tmp_path: Path, uid: int) -> None:
    from stockade.core import InvalidInput
    from stockade.core.settings import GatewaySettings
    from stockade.gateway import check_host_key_files

    volume, names = _kubelet_secret_volume(tmp_path, gid=uid)
    raw = GatewaySettings(host_key_files=[volume / names[0]])
    if os.geteuid() == 0:  # root owns the Secret's files: only the mode refuses them here
        with pytest.raises(InvalidInput, match="mode 0440"):
            check_host_key_files(raw)

    # as the pod's uid: copies owned by it, 0600, readable through its fsGroup only
    shared = tmp_path / "emptydir"
    shared.mkdir()
    os.chown(shared, 0, uid)
    os.chmod(shared, 0o2770)  # noqa: S103 - an emptyDir with fsGroup: group-owned, setgid
    _run_init(init, volume, shared, uid=uid)
    for name in names:
        info = (shared / name).stat()
        assert (info.st_uid, info.st_mode & 0o777) == (uid, 0o600), name
        assert (shared / name).read_bytes() == (volume / name).read_bytes()
    assert sorted(p.name for p in shared.iterdir()) == sorted(names)  # no temporary left

    # as this process (the gateway's check runs as the file's owner): accepted; a re-run
    # (the Pod's init container after a restart) replaces the copies
    mine = tmp_path / "mine"
    mine.mkdir()
    _run_init(init, volume, mine, uid=None)
    _run_init(init, volume, mine, uid=None)
    check_host_key_files(GatewaySettings(host_key_files=[mine / n for n in names]))


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"ssh": {"hostKeys": {"keys": ["../etc/shadow"]}}}, "/ssh/hostKeys/keys/0"),
        ({"ssh": {"hostKeys": {"keys": []}}}, "/ssh/hostKeys/keys"),
        ({"ssh": {"hostKeys": {"existingSecret": "Host Keys"}}}, "/ssh/hostKeys/existingSecret"),
        ({"services": {"gateway": {"replicas": "two"}}}, "/services/gateway/replicas"),
        ({"colour": "blue"}, "colour"),
        ({"ssh": {"service": {"externalTrafficPolicy": "Nearest"}}}, "externalTrafficPolicy"),
        ({"security": {"mode": "paranoid"}}, "/security/mode"),
        ({"security": {"omit": ["nginx"]}}, "/security/omit/0"),
        ({"security": {"linkerd": {"trustManager": "yes"}}}, "/security/linkerd/trustManager"),
        ({"serviceAuth": {"identity": {"OpenSession": ["gateway"]}}}, "'OpenSession'"),
        (
            {"serviceAuth": {"authz": {"/stockade.authz.v1.Authz/Decide": ["mallory"]}}},
            "serviceAuth",
        ),
        ({"nats": {"url": "http://nats"}}, "/nats/url"),
    ],
)
def test_bad_values_rejected_naming_the_key(
    chart: helm.Chart, values: dict[str, Any], key: str
) -> None:
    with pytest.raises(helm.HelmValuesError) as caught:
        chart.validate_schema(values)
    assert key in str(caught.value)


def test_notes_tell_how_to_log_in(chart: helm.Chart) -> None:
    out = chart.render({}, name="stockade", namespace="stockade", is_install=True)
    notes = next(text for path, text in out.items() if path.endswith("NOTES.txt"))
    assert "ssh -p 22 alice@" in notes
    assert "stockade users add alice --role admin --ssh-key -" in notes
    assert "kubectl -n stockade get service stockade-ssh" in notes


async def test_rendered_allow_lists_drive_the_verifier(chart: helm.Chart, tmp_path: Path) -> None:
    """The chart's service-auth ConfigMap is what ServiceTokenVerifier.from_settings loads."""
    from tls.jwks import serve_issuer

    from stockade.core.settings import ServiceTokenSettings
    from stockade.tls import ServiceTokenRejected, ServiceTokenVerifier

    objects = _render(chart, {})
    config = _by(objects, "ConfigMap", "stockade-service-auth")["data"]["service-auth.json"]
    allow = tmp_path / "service-auth.json"
    allow.write_text(config)
    with serve_issuer() as issuer:
        settings = ServiceTokenSettings(
            enabled=True,
            issuer=issuer.url,
            jwks_url=issuer.url + "/jwks.json",
            namespace="stockade",
            allow_file=allow,
        )
        verifier = ServiceTokenVerifier.from_settings(settings, "identity")
        try:
            assert verifier.audience == "stockade-identity"
            broker = issuer.token(audience="stockade-identity", service_account="stockade-broker")
            gateway = issuer.token(audience="stockade-identity", service_account="stockade-gateway")
            verify = "/stockade.identity.v1.Identity/VerifyToken"
            assert await verifier.verify(broker, verify)
            with pytest.raises(ServiceTokenRejected, match="method-not-allowed"):
                await verifier.verify(gateway, verify)
            assert await verifier.verify(gateway, "/stockade.identity.v1.Identity/StartSession")
        finally:
            await verifier.aclose()


def test_the_token_allow_lists_of_identity_are_its_certificate_table() -> None:
    """The projected-token allow-list of identity in the chart and identity's own table of
    callers by certificate (rpc._identity.CALLERS) name the same services for each method:
    no method open to a service at one layer and not the other (the lookups: to none)."""
    from stockade.rpc._identity import CALLERS, UNBOUND_ISSUE

    values = yaml.safe_load((CHART / "values.yaml").read_text())
    chart = {m: sorted(callers) for m, callers in values["serviceAuth"]["identity"].items()}
    table = {
        f"/stockade.identity.v1.Identity/{method}": sorted(callers)
        for method, callers in CALLERS.items()
        if callers and method != UNBOUND_ISSUE
    }
    assert chart == table


def test_the_token_allow_lists_of_authz_are_its_certificate_table() -> None:
    """The projected-token allow-list of authz in the chart and authz's own table of callers by
    certificate (rpc._authz.CALLERS) name the same services for each method, among the
    services the chart runs (worktrace, in the table, is not one): every method listed at both,
    and no service allowed at one layer and not the other."""
    from stockade.rpc._authz import CALLERS

    values = yaml.safe_load((CHART / "values.yaml").read_text())
    deployed = set(values["services"])
    chart = {m: sorted(callers) for m, callers in values["serviceAuth"]["authz"].items()}
    table = {
        f"/stockade.authz.v1.Authz/{method}": sorted(callers & deployed)
        for method, callers in CALLERS.items()
        if callers & deployed
    }
    assert chart == table
    assert all(set(callers) <= deployed for callers in chart.values())
