"""The cluster configs in docker/: Ray's cluster-launcher config for AWS (ray-cluster.yaml) and the
KubeRay RayJob (kuberay-rayjob.yaml), checked with the validators their tools use and against this
repository (Ray version, console script, experiment files, storage, data, secrets).

- ray-cluster.yaml: Ray's own ray-schema.json, then Ray's prepare_config + validate_config (what
  `ray up` runs before it calls AWS), and botocore's EC2 RunInstances model for every node_config
  (Ray passes node_config to create_instances); every command must parse as bash.
- kuberay-rayjob.yaml: no package ships KubeRay's CRD schema, so every pod template in it (head,
  worker groups, submitter) is validated against Kubernetes' own PodTemplate schema, strictly, by
  kubernetes-validate; the RayJob's own fields against KUBERAY_RAYJOB below, the part of KubeRay's
  ray.io/v1 API (RayJobSpec, RayClusterSpec, HeadGroupSpec, WorkerGroupSpec, AutoscalerOptions)
  this project uses. A newer KubeRay field must be added there before the file may use it.
Every validator is first shown a broken copy and must reject it, so none can pass vacuously.
"""

from __future__ import annotations

import copy
import importlib
import importlib.metadata
import json
import re
import shlex
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import jsonschema
import pytest
import yaml
from packaging.requirements import Requirement

from captioning.cli import build_parser
from captioning.config.loading import load_experiment
from captioning.config.schema import ExperimentConfig
from captioning.tune import search_space as spaces
from conftest import REPO

CLUSTER = REPO / "docker" / "ray-cluster.yaml"
RAYJOB = REPO / "docker" / "kuberay-rayjob.yaml"
DOCKERFILE = REPO / "docker" / "Dockerfile"
# The image's working directory (docker/Dockerfile): it holds experiments/ and search_spaces/.
IMAGE_WORKDIR = PurePosixPath("/home/ray/captioning")
# The oldest Kubernetes whose API the pod templates must fit (EKS, GKE, AKS all still offer it).
KUBERNETES_VERSION = "1.30"
# Everything a user replaces before use; the files' header comments say what each one is.
PLACEHOLDERS = {"<account-id>", "<your-bucket>", "<ami-id>"}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|KEY", re.IGNORECASE)
URL_WITH_CREDENTIALS = re.compile(r"://[^/\s@:]+:[^/\s@]+@")
SECRET_LITERALS = [re.compile(p) for p in (r"AKIA[0-9A-Z]{16}", r"(?i)aws_secret_access_key",
                                           r"-----BEGIN [A-Z ]*PRIVATE KEY-----")]
REQUIREMENTS = {"kubernetes_validate": "kubernetes-validate~=1.37", "botocore": "boto3>=1.34"}


def _require(module: str) -> Any:
    """The validator package, or a failure (never a skip) that says how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        requirement = REQUIREMENTS[module.split(".")[0]]
        pytest.fail(f"{module} is needed to validate the cluster configs: "
                    f".venv/bin/pip install '{requirement}' (in the dev extra)")


def _load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict), f"{path}: expected one YAML mapping"
    return data


def _pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def _ray_requirement() -> Requirement:
    for line in _pyproject()["project"]["dependencies"]:
        requirement = Requirement(line)
        if requirement.name == "ray":
            return requirement
    raise AssertionError("pyproject.toml: no ray dependency")


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)


def _under(path: PurePosixPath, folder: PurePosixPath) -> bool:
    return path == folder or path.is_relative_to(folder)


# -- commands: the sweep the file runs, parsed by the project's own CLI parser -----------------

def _subcommands() -> list[str]:
    parser = build_parser()
    for action in parser._actions:  # argparse keeps its sub-commands here
        if action.choices and isinstance(action.choices, dict):
            return list(action.choices)
    raise AssertionError("captioning's parser has no sub-commands")


def _commented_commands(path: Path) -> list[list[str]]:
    """`captioning <sub-command> ...` as the file's comments tell a person to type it."""
    pattern = re.compile(
        rf"\bcaptioning (?:{'|'.join(map(re.escape, _subcommands()))})\b[^\"'\n]*")
    commands = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip().startswith("#"):
            commands += [shlex.split(match.group(0)) for match in pattern.finditer(line)]
    return commands


def _parse(argv: list[str], where: str) -> Any:
    scripts = _pyproject()["project"]["scripts"]
    assert argv[0] in scripts, f"{where}: `{argv[0]}` is not a console script of pyproject.toml"
    assert scripts[argv[0]] == "captioning.cli:main"
    try:
        return build_parser().parse_args(argv[1:])
    except SystemExit:
        pytest.fail(f"{where}: `{shlex.join(argv)}` is not a valid captioning command")


def _repo_path(path: Path, where: str) -> Path:
    """A path as the image sees it (absolute, or relative to its workdir) -> the repo's copy."""
    posix = PurePosixPath(path)
    if posix.is_absolute():
        assert _under(posix, IMAGE_WORKDIR), f"{where}: {posix} is outside {IMAGE_WORKDIR}"
        posix = posix.relative_to(IMAGE_WORKDIR)
    local = REPO / posix
    assert local.is_file(), f"{where}: {posix} does not exist in the repository"
    return local


def _sweep(args: Any, where: str) -> tuple[ExperimentConfig, PurePosixPath]:
    """The sweep's experiment (with its --set overrides) and data.root as the driver sees it."""
    assert args.command == "sweep"
    assert args.address == "auto", f"{where}: the sweep must join the cluster (--address auto)"
    config = load_experiment(_repo_path(args.experiment, where), args.overrides)
    if args.search_space:
        space = _repo_path(args.search_space, where)
    else:  # the loader made it absolute from the (repository's copy of the) experiment file
        space = config.sweep.search_space
        assert _under(PurePosixPath(space), PurePosixPath(REPO)) and space.is_file(), \
            f"{where}: the experiment's search space {space} is not a file of the repository"
    spaces.load_search_space(space, config)
    root = PurePosixPath(config.data.root)
    return config, root if root.is_absolute() else IMAGE_WORKDIR / root


def _cluster_sweeps() -> list[Any]:
    commands = [c for c in _commented_commands(CLUSTER) if c[1] == "sweep"]
    assert commands, f"{CLUSTER.name}: its comments show no `captioning sweep` command"
    return [_parse(argv, CLUSTER.name) for argv in commands]


def _rayjob_sweep(job: dict[str, Any]) -> Any:
    args = _parse(shlex.split(job["spec"]["entrypoint"]), f"{RAYJOB.name}: entrypoint")
    assert args.command == "sweep", f"{RAYJOB.name}: the entrypoint is not a sweep"
    return args


# -- ray-cluster.yaml --------------------------------------------------------------------------

def _ray_schema() -> dict[str, Any]:
    import ray.autoscaler

    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def _ray_up_checks(config: dict[str, Any]) -> None:
    """What `ray up` checks before it talks to AWS: the schema, then the prepared config."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    jsonschema.validate(config, _ray_schema())
    validate_config(prepare_config(copy.deepcopy(config)))


def test_ray_cluster_config_passes_rays_own_validation() -> None:
    config = _load(CLUSTER)
    broken = copy.deepcopy(config)
    broken["docker"]["worker_run_option"] = broken["docker"].pop("worker_run_options")
    with pytest.raises(jsonschema.ValidationError):
        _ray_up_checks(broken)

    _ray_up_checks(config)
    assert config["provider"]["type"] == "aws"
    assert isinstance(config["provider"].get("cache_stopped_nodes"), bool)
    assert config["docker"]["image"] and config["docker"]["container_name"]


def test_ray_cluster_node_configs_are_valid_ec2_run_instances_requests() -> None:
    botocore_session = _require("botocore.session")
    botocore_validate = _require("botocore.validate")
    model = botocore_session.get_session().get_service_model("ec2")
    request = model.operation_model("RunInstances").input_shape

    def errors(node_config: dict[str, Any]) -> str:
        # Ray adds the counts and tags to node_config and calls ec2.create_instances(**it).
        report = botocore_validate.ParamValidator().validate(
            {**node_config, "MinCount": 1, "MaxCount": 1}, request)
        return report.generate_report() if report.has_errors() else ""

    assert errors({"InstanceType": "g5.2xlarge", "IamInstanceProfile": {"Name": "x", "Arm": "y"}})
    for name, node_type in _load(CLUSTER)["available_node_types"].items():
        assert not errors(node_type["node_config"]), f"node type {name}: " + errors(
            node_type["node_config"])
        # Every node reads or writes the sweep's S3 bucket, so every node has a profile.
        assert "IamInstanceProfile" in node_type["node_config"], f"node type {name}"


def test_ray_cluster_commands_are_valid_bash() -> None:
    config = _load(CLUSTER)
    samples = {"<account-id>": "123456789012", "<your-bucket>": "my-bucket",
               "<ami-id>": "ami-0123456789abcdef0"}
    keys = ["initialization_commands", "setup_commands", "head_setup_commands",
            "worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands"]
    broken = subprocess.run(["bash", "-n", "-c", "if true; then echo"], capture_output=True)
    assert broken.returncode != 0
    for key in keys:
        for command in config.get(key, []):
            for placeholder, value in samples.items():
                command = command.replace(placeholder, value)
            result = subprocess.run(["bash", "-n", "-c", command], capture_output=True,
                                    text=True)
            assert result.returncode == 0, f"{key}: {command}\n{result.stderr}"


def _docker_options(docker: dict[str, Any], *keys: str) -> list[str]:
    return [part for key in keys for option in docker.get(key, []) for part in shlex.split(option)]


def _volumes(options: list[str]) -> list[tuple[PurePosixPath, PurePosixPath, bool]]:
    """(host path, container path, read-only) of every -v/--volume in docker run options."""
    specs = [value for flag, value in zip(options, options[1:], strict=False)
             if flag in ("-v", "--volume")]
    specs += [option.split("=", 1)[1] for option in options if option.startswith("--volume=")]
    volumes = []
    for spec in specs:
        host, container, *mode = spec.split(":")
        volumes.append((PurePosixPath(host), PurePosixPath(container),
                        "ro" in (mode[0].split(",") if mode else [])))
    return volumes


def test_ray_cluster_gpu_workers_and_cpu_head() -> None:
    config = _load(CLUSTER)
    docker, types = config["docker"], config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    assert "--gpus" not in " ".join(_docker_options(docker, "run_options", "head_run_options")), (
        "--gpus on the CPU head makes `docker run` fail there")
    workers = {name: t for name, t in types.items() if name != config["head_node_type"]}
    assert workers
    for name, node_type in workers.items():
        assert node_type["resources"].get("GPU", 0) >= 1, f"{name} offers no GPU"
        assert node_type.get("min_workers", 0) == 0 and node_type["max_workers"] >= 1, name
        options = {**docker, **node_type.get("docker", {})}
        assert "--gpus all" in " ".join(_docker_options(options, "run_options",
                                                         "worker_run_options")), name
    assert sum(t["max_workers"] for t in workers.values()) >= config["max_workers"] >= 1


def test_ray_cluster_runs_the_repos_sweep_on_s3_and_synced_data() -> None:
    config = _load(CLUSTER)
    types = config["available_node_types"]
    workers = [t["resources"] for n, t in types.items() if n != config["head_node_type"]]
    volumes = _volumes(_docker_options(config["docker"], "run_options"))
    buckets = {m for s in _strings(config) for m in re.findall(r"s3://([^/\s]+)", s)}
    for args in _cluster_sweeps():
        experiment, root = _sweep(args, CLUSTER.name)
        # No shared file system here: Ray Tune's storage must be the bucket every node reaches.
        assert args.storage and args.storage.startswith("s3://"), args.storage
        assert re.match(r"s3://([^/]+)", args.storage).group(1) in buckets
        # data.root is on every node: under a read-only volume of all nodes' containers, whose
        # host folder the initialization commands fill.
        mounts = [(h / root.relative_to(c)) for h, c, ro in volumes if ro and _under(root, c)]
        assert mounts, f"data.root {root} is not under a read-only volume in run_options"
        assert any(str(mounts[0]) in c for c in config["initialization_commands"]), (
            f"no initialization command fills {mounts[0]}")
        need = experiment.sweep.resources
        assert any(r.get("CPU", 0) >= need.cpu and r.get("GPU", 0) >= need.gpu for r in workers), (
            f"no worker type fits one {experiment.name} trial ({need})")
    assert len(buckets) == 1, f"one bucket for data, results and artifacts, not {buckets}"
    for local in config["file_mounts"].values():
        assert (REPO / local).is_dir(), f"file_mounts: {local} is not a folder of the repository"


def test_ray_cluster_promotes_the_experiment_it_sweeps() -> None:
    swept = {_sweep(args, CLUSTER.name)[0].name for args in _cluster_sweeps()}
    promotes = [_parse(c, CLUSTER.name) for c in _commented_commands(CLUSTER)
                if c[1] == "promote"]
    assert promotes, f"{CLUSTER.name}: its comments show no `captioning promote`"
    for args in promotes:
        assert args.experiment in swept, f"promote --experiment {args.experiment}: not swept"


# -- kuberay-rayjob.yaml -----------------------------------------------------------------------

_OBJECT = {"type": "object"}  # a Kubernetes type, validated by kubernetes-validate instead
_BOOL = {"type": "boolean"}
_INT32 = {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_MANAGED_BY = {"enum": ["ray.io/kuberay-operator", "kueue.x-k8s.io/multikueue"]}
_WORKER_GROUP = {
    "type": "object", "additionalProperties": False,
    "required": ["groupName", "minReplicas", "maxReplicas", "rayStartParams", "template"],
    "properties": {
        "suspend": _BOOL, "groupName": {"type": "string", "minLength": 1}, "replicas": _INT32,
        "minReplicas": _INT32, "maxReplicas": _INT32, "idleTimeoutSeconds": _INT32,
        "rayStartParams": _STRING_MAP, "template": _OBJECT, "scaleStrategy": _OBJECT,
        "numOfHosts": {"type": "integer", "minimum": 1}}}
_RAY_CLUSTER_SPEC = {
    "type": "object", "additionalProperties": False, "required": ["headGroupSpec"],
    "properties": {
        "suspend": _BOOL, "managedBy": _MANAGED_BY, "headServiceAnnotations": _STRING_MAP,
        "enableInTreeAutoscaling": _BOOL, "gcsFaultToleranceOptions": _OBJECT,
        "rayVersion": {"type": "string", "pattern": r"^\d+\.\d+\.\d+$"},
        "autoscalerOptions": {
            "type": "object", "additionalProperties": False,
            "properties": {
                "resources": _OBJECT, "image": {"type": "string"},
                "imagePullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
                "securityContext": _OBJECT, "idleTimeoutSeconds": _INT32,
                "upscalingMode": {"enum": ["Default", "Aggressive", "Conservative"]},
                "env": {"type": "array"}, "envFrom": {"type": "array"},
                "volumeMounts": {"type": "array"}}},
        "headGroupSpec": {
            "type": "object", "additionalProperties": False,
            "required": ["rayStartParams", "template"],
            "properties": {
                "template": _OBJECT, "headService": _OBJECT, "enableIngress": _BOOL,
                "rayStartParams": _STRING_MAP,
                "serviceType": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]}}},
        "workerGroupSpecs": {"type": "array", "items": _WORKER_GROUP}}}
KUBERAY_RAYJOB = {
    "type": "object", "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "ray.io/v1"},
        "kind": {"const": "RayJob"},
        "metadata": {
            "type": "object", "required": ["name"],
            "properties": {"name": {"type": "string", "maxLength": 63,
                                    "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"}}},
        "spec": {
            "type": "object", "additionalProperties": False,
            "required": ["entrypoint", "rayClusterSpec"],
            "properties": {
                "activeDeadlineSeconds": {"type": "integer", "minimum": 1},
                "backoffLimit": _INT32, "rayClusterSpec": _RAY_CLUSTER_SPEC,
                "submitterPodTemplate": _OBJECT, "metadata": _STRING_MAP,
                "clusterSelector": _STRING_MAP, "managedBy": _MANAGED_BY,
                "submitterConfig": {"type": "object", "additionalProperties": False,
                                    "properties": {"backoffLimit": _INT32}},
                "deletionPolicy": {"enum": ["DeleteCluster", "DeleteWorkers", "DeleteSelf",
                                            "DeleteNone"]},
                "entrypoint": {"type": "string", "minLength": 1},
                "runtimeEnvYAML": {"type": "string"}, "jobId": {"type": "string"},
                "submissionMode": {"enum": ["K8sJobMode", "HTTPMode", "InteractiveMode"]},
                "entrypointResources": {"type": "string"},
                "entrypointNumCpus": {"type": "number", "minimum": 0},
                "entrypointNumGpus": {"type": "number", "minimum": 0},
                "ttlSecondsAfterFinished": _INT32, "shutdownAfterJobFinishes": _BOOL,
                "suspend": _BOOL}}}}


def _pod_templates(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    cluster = job["spec"]["rayClusterSpec"]
    templates = {"head": cluster["headGroupSpec"]["template"]}
    for group in cluster.get("workerGroupSpecs", []):
        templates[f"worker group {group['groupName']}"] = group["template"]
    if "submitterPodTemplate" in job["spec"]:
        templates["submitter"] = job["spec"]["submitterPodTemplate"]
    return templates


def _validate_pod_template(kubernetes_validate: Any, name: str, template: dict) -> None:
    pod_template = {"apiVersion": "v1", "kind": "PodTemplate",
                    "metadata": {"name": re.sub(r"[^a-z0-9-]", "-", name)}, "template": template}
    kubernetes_validate.validate(pod_template, KUBERNETES_VERSION, strict=True)


def test_rayjob_validates_against_kuberay_fields_and_kubernetes_schemas() -> None:
    kubernetes_validate = _require("kubernetes_validate")
    job = _load(RAYJOB)
    head = _pod_templates(job)["head"]

    broken = copy.deepcopy(head)
    broken["spec"]["containers"][0]["volumeMount"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate_pod_template(kubernetes_validate, "broken", broken)
    for mutate in (lambda j: j["spec"].update(workerGroupSpec=[]),
                   lambda j: j["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]
                   .update({"num-cpus": 0})):
        broken = copy.deepcopy(job)
        mutate(broken)
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, KUBERAY_RAYJOB)

    jsonschema.validate(job, KUBERAY_RAYJOB)
    for name, template in _pod_templates(job).items():
        try:
            _validate_pod_template(kubernetes_validate, name, template)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{RAYJOB.name}: {name} pod template, "
                        f"{'.'.join(map(str, error.path))}: {error.message}")
    # The autoscaler sidecar's settings are Kubernetes types too: check them in a container.
    options = job["spec"]["rayClusterSpec"].get("autoscalerOptions", {})
    sidecar = {"name": "autoscaler", "image": "autoscaler",
               **{k: options[k] for k in ("resources", "securityContext", "env", "envFrom",
                                          "volumeMounts") if k in options}}
    _validate_pod_template(kubernetes_validate, "autoscaler", {"spec": {"containers": [sidecar]}})

    spec = job["spec"]
    assert spec["submissionMode"] == "K8sJobMode"
    assert spec["shutdownAfterJobFinishes"] is True
    assert isinstance(spec.get("ttlSecondsAfterFinished"), int)
    if "submitterPodTemplate" in spec:  # KubeRay fills in `ray job submit` only without one
        submitter = spec["submitterPodTemplate"]["spec"]
        assert "command" not in submitter["containers"][0]
        assert submitter.get("restartPolicy") == "Never"
    for group in spec["rayClusterSpec"].get("workerGroupSpecs", []):
        assert group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"]


def _ray_pods(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: t for name, t in _pod_templates(job).items() if name != "submitter"}


def _mounts(template: dict[str, Any]) -> list[tuple[PurePosixPath, dict, dict]]:
    """(mount path, volumeMount, volume) of the Ray container (KubeRay's container 0)."""
    volumes = {v["name"]: v for v in template["spec"].get("volumes", [])}
    return [(PurePosixPath(m["mountPath"]), m, volumes[m["name"]])
            for m in template["spec"]["containers"][0].get("volumeMounts", [])]


def _cpus(quantity: str | int | float) -> float:
    text = str(quantity)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def test_rayjob_gpu_workers_and_cpu_head() -> None:
    job = _load(RAYJOB)
    cluster = job["spec"]["rayClusterSpec"]
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in head.get("resources", {}).get("limits", {})
    groups = cluster.get("workerGroupSpecs", [])
    assert groups, "no worker group"
    for group in groups:
        resources = group["template"]["spec"]["containers"][0]["resources"]
        assert int(resources["limits"].get("nvidia.com/gpu", 0)) >= 1, group["groupName"]
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(resources[kind]), f"{group['groupName']} {kind}"
        assert group["maxReplicas"] >= 1


def test_rayjob_runs_the_repos_sweep_on_shared_storage_and_data() -> None:
    job = _load(RAYJOB)
    args = _rayjob_sweep(job)
    experiment, root = _sweep(args, RAYJOB.name)
    storage = args.storage
    assert storage, "the entrypoint names no --storage"
    pods = _ray_pods(job)
    for name, template in pods.items():
        container = template["spec"]["containers"][0]
        # Relative paths in the entrypoint (experiments/...) resolve in the image's workdir.
        assert PurePosixPath(container.get("workingDir", "")) == IMAGE_WORKDIR, name
        mounts = _mounts(template)
        data = [(m, v) for path, m, v in mounts if _under(root, path)]
        assert data, f"{name}: data.root {root} is not mounted"
        mount, volume = data[-1]
        assert "persistentVolumeClaim" in volume, f"{name}: data.root is not on a volume claim"
        assert mount.get("readOnly") is True, f"{name}: the dataset is not mounted read-only"
        if not storage.startswith("s3://"):
            shared = [(m, v) for path, m, v in mounts if _under(PurePosixPath(storage), path)]
            assert shared, f"{name}: --storage {storage} is not on a mounted volume"
            mount, volume = shared[-1]
            assert "persistentVolumeClaim" in volume, f"{name}: {storage} is not shared storage"
            assert not mount.get("readOnly") and not volume["persistentVolumeClaim"].get(
                "readOnly"), f"{name}: {storage} is read-only"
        shm = [v for path, m, v in mounts if path == PurePosixPath("/dev/shm")]
        assert shm and shm[0].get("emptyDir", {}).get("medium") == "Memory", (
            f"{name}: /dev/shm is not an emptyDir in memory")
    need = experiment.sweep.resources
    limits = [g["template"]["spec"]["containers"][0]["resources"]["limits"]
              for g in job["spec"]["rayClusterSpec"]["workerGroupSpecs"]]
    assert any(_cpus(lim["cpu"]) >= need.cpu and int(lim["nvidia.com/gpu"]) >= need.gpu
               for lim in limits), f"no worker group fits one {experiment.name} trial ({need})"


def test_rayjob_runs_as_non_root() -> None:
    for name, template in _pod_templates(_load(RAYJOB)).items():
        pod = template["spec"].get("securityContext", {})
        assert pod.get("runAsNonRoot") is True and pod.get("runAsUser") == 1000, name
        for container in template["spec"]["containers"]:
            context = container.get("securityContext", {})
            assert context.get("allowPrivilegeEscalation") is False, name
            assert not context.get("privileged") and context.get("runAsUser", 1000) != 0, name


# -- both files --------------------------------------------------------------------------------

def test_versions_agree_with_pyproject_and_installed_ray() -> None:
    installed = importlib.metadata.version("ray")
    requirement = _ray_requirement()
    assert requirement.specifier.contains(installed), (
        f"installed ray {installed} does not satisfy pyproject's {requirement}")
    job = _load(RAYJOB)
    assert job["spec"]["rayClusterSpec"]["rayVersion"] == installed
    project_version = _pyproject()["project"]["version"]
    for path in (CLUSTER, RAYJOB, DOCKERFILE):
        text = path.read_text(encoding="utf-8")
        mentioned = set(re.findall(r"rayproject/ray:(\d+\.\d+\.\d+)", text))
        mentioned |= set(re.findall(r"\bray\[[a-z,]+\]==(\d+\.\d+\.\d+)", text))
        mentioned |= set(re.findall(r"ARG RAY_VERSION=(\d+\.\d+\.\d+)", text))
        assert mentioned <= {installed}, f"{path.name} mentions Ray {mentioned}, not {installed}"
        assert mentioned, f"{path.name} does not say which Ray it is for"
    cluster = _load(CLUSTER)
    images = [cluster["docker"][k] for k in ("image", "head_image", "worker_image")
              if k in cluster["docker"]]
    images += [c["image"] for t in _pod_templates(job).values() for c in t["spec"]["containers"]]
    for image in images:
        repository, _, tag = image.rpartition(":")
        assert repository.endswith("/captioning") and tag == project_version, (
            f"{image}: expected our image, tagged {project_version} (pyproject's version)")


def test_image_facts_match_the_dockerfile() -> None:
    """The configs rely on the image's workdir and user: docker/Dockerfile must agree."""
    assert DOCKERFILE.is_file(), "docker/Dockerfile: the image these configs run is missing"
    text = DOCKERFILE.read_text(encoding="utf-8")
    workdirs = re.findall(r"^WORKDIR\s+(\S+)", text, re.MULTILINE)
    assert workdirs and PurePosixPath(workdirs[-1]) == IMAGE_WORKDIR
    users = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
    assert users, "docker/Dockerfile sets no USER"
    uid, _, gid = users[-1].partition(":")
    for name, template in _pod_templates(_load(RAYJOB)).items():
        pod = template["spec"].get("securityContext", {})
        assert str(pod.get("runAsUser")) == uid, f"{name}: runAsUser is not the image's {uid}"
        if gid and "runAsGroup" in pod:
            assert str(pod["runAsGroup"]) == gid, f"{name}: runAsGroup is not the image's {gid}"


def test_placeholders_are_marked_and_documented() -> None:
    for path in (CLUSTER, RAYJOB):
        used = {m for s in _strings(_load(path)) for m in re.findall(r"<[a-z0-9-]+>", s)}
        assert used <= PLACEHOLDERS, f"{path.name}: unexpected placeholders {used - PLACEHOLDERS}"
        header = "\n".join(line for line in path.read_text().splitlines()
                           if line.startswith("#"))
        for placeholder in used:
            assert placeholder in header, f"{path.name}: {placeholder} is not explained"


def _env_literals(options: list[str]) -> Iterator[tuple[str, str]]:
    """NAME=VALUE pairs set by docker -e/--env options."""
    for flag, value in zip(options, options[1:], strict=False):
        if flag in ("-e", "--env") and "=" in value:
            yield tuple(value.split("=", 1))


def test_no_secret_literals() -> None:
    for path in (CLUSTER, RAYJOB):
        text = path.read_text(encoding="utf-8")
        for pattern in SECRET_LITERALS:
            assert not pattern.search(text), f"{path.name}: {pattern.pattern}"
        for value in _strings(_load(path)):
            assert not URL_WITH_CREDENTIALS.search(value), f"{path.name}: credentials in a URL"
            for name, literal in re.findall(r"\b(\w+)=(\S+)", value):
                if SECRET_NAME.search(name):
                    assert literal.startswith("$"), f"{path.name}: {name} set to a literal"

    cluster = _load(CLUSTER)
    docker = cluster["docker"]
    options = _docker_options(docker, "run_options", "head_run_options", "worker_run_options")
    for node_type in cluster["available_node_types"].values():
        options += _docker_options(node_type.get("docker", {}), "worker_run_options")
    for name, _ in _env_literals(options):
        assert not SECRET_NAME.search(name), f"{CLUSTER.name}: {name} is set to a literal"

    job = _load(RAYJOB)
    containers = [c for t in _pod_templates(job).values() for c in t["spec"]["containers"]]
    containers.append(job["spec"]["rayClusterSpec"].get("autoscalerOptions", {}))
    for container in containers:
        for env in container.get("env", []):
            if SECRET_NAME.search(env["name"]) or env["name"] == "MLFLOW_TRACKING_URI":
                assert "value" not in env and "secretKeyRef" in env.get("valueFrom", {}), (
                    f"{RAYJOB.name}: {env['name']} must come from a Secret (secretKeyRef)")
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "MLFLOW_TRACKING_URI" in {e["name"] for e in head.get("env", [])}, (
        "the sweep's driver runs on the head and needs MLFLOW_TRACKING_URI")

