"""Fixtures for the operator tasks (issue 4), loaded by conftest as a pytest plugin.

``ops``: a QuickPulse-shaped app with a PostgreSQL ``db`` service (password from a
Docker secret), a ``cache`` sidecar and a backup recipe covering a volume, the database
and a SQLite file, on the fixtures' real sshd and Docker. Secrets hold the canary.

The canary hook fails any test whose captured output, log or error report shows the
canary secret value.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .ci import unavailable
from .deployenv import CANARY, DeployEnv, write_inventory, write_secrets
from .docker import docker, remove_docker_resources
from .gitrepo import OriginRepo
from .images import BUSYBOX_IMAGE
from .pgimage import PostgresMissing, ensure_postgres_image, ensure_tools_image

PG_PASSWORD = "pg pass $;!'\" end"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    texts = [content for _, content in report.sections]
    if report.longrepr is not None:
        texts.append(str(report.longrepr))
    leaked = [name for name, content in report.sections if CANARY in content]
    if report.longrepr is not None and CANARY in str(report.longrepr):
        leaked.append("the error report")
    if leaked and report.when == "call":
        report.outcome = "failed"
        report.longrepr = f"the canary secret value appeared in: {', '.join(leaked)}"


@pytest.fixture(scope="session")
def pg_images(docker_engine: str) -> tuple[str, str]:
    """(PostgreSQL image, tools base image), built from Debian's packages if missing."""
    try:
        return ensure_postgres_image(), ensure_tools_image()
    except PostgresMissing as error:
        unavailable(str(error))


@dataclass
class OpsEnv(DeployEnv):
    def db(self, env: str = "prod") -> str:
        return f"{self.app}-db-{env}"

    def psql(self, sql: str, env: str = "prod") -> str:
        result = docker(
            "exec",
            self.db(env),
            "psql",
            "-U",
            "postgres",
            "-d",
            "appdb",
            "-AtX",
            "-c",
            sql,
            check=False,
        )
        return (result.stdout + result.stderr).strip()

    def sqlite(self, sql: str, env: str = "prod") -> str:
        result = docker(
            "exec", self.container(env), "sqlite3", "/app/data/app.db", sql, check=False
        )
        return (result.stdout + result.stderr).strip()

    def backups(self, kind: str) -> list[Path]:
        folder = self.ops_root / "backups" / kind
        return sorted(folder.iterdir()) if folder.exists() else []

    def records(self) -> list[dict]:
        log = self.ops_root / "deploy.log"
        if not log.exists():
            return []
        return [json.loads(t) for t in log.read_text().splitlines() if t.strip()]


def write_ops_inventory(
    path: Path,
    *,
    app: str,
    sshd,
    ops_root: Path,
    origin: OriginRepo,
    pg_image: str,
    extra_host: str = "",
    extra: str = "",
    user_override: dict | None = None,
) -> Path:
    write_inventory(
        path,
        app=app,
        sshd=sshd,
        ops_root=ops_root,
        origin=origin,
        extra_host=extra_host,
        health_tries=6,
        health_timeout=10,
    )
    text = path.read_text()
    text = text.replace(
        f'volumes = ["{app}-{{env}}-data"]',
        f'volumes = ["{app}-{{env}}-data"]\ndatabases = ["db"]\n'
        f'sqlite = {{ app = "/app/data/app.db" }}',
    )
    for key, value in (user_override or {}).items():
        text = text.replace(f'{key} = "{sshd.user}"', f'{key} = "{value}"', 1)
    text += f"""
[apps.{app}.services.db]
container = "{app}-db-{{env}}"
image = "{pg_image}"
memory = "256m"
environment = {{ POSTGRES_DB = "appdb", POSTGRES_PASSWORD_FILE = "/run/secrets/pg_password" }}
secrets = {{ pg_password = "pg_{{env}}_password.txt" }}
volumes = {{ "{app}-{{env}}-pg" = "/var/lib/postgresql/data" }}
networks = ["{app}-{{env}}-net"]
health = {{ cmd = ["pg_isready", "-U", "postgres", "-h", "127.0.0.1"], interval = 1, \
timeout = 3, retries = 5, start_period = 20 }}

[apps.{app}.services.cache]
container = "{app}-cache-{{env}}"
image = "{BUSYBOX_IMAGE}"
command = ["sleep", "86400"]
memory = "16m"
# A health check, because probe.STATE_FORMAT fails on Docker 20.10 for a container
# without one ("map has no entry for key Health"); reported to issue 2.
health = {{ cmd = ["true"], interval = 1, timeout = 2, retries = 2, start_period = 0 }}
networks = ["{app}-{{env}}-net"]
{extra}
"""
    path.write_text(text)
    return path


def write_local_secrets(root: Path, app: str, env: str, password: str = PG_PASSWORD) -> Path:
    """The git-ignored local secrets beside the inventory, as an operator keeps them."""
    folder = root / "secrets" / app
    folder.mkdir(parents=True, exist_ok=True)
    env_file = folder / f"{env}.env"
    env_file.write_text(f"KINGDEE_APP_SECRET={CANARY}\nKINGDEE_ACCT_ID=acct-1\n")
    # As an editor saves it: with a final newline, which must not reach the host.
    (folder / f"pg_{env}_password.txt").write_text(password + "\n")
    return env_file


@pytest.fixture
def ops(sshd, base_image, pg_images, docker_prefix, tmp_path) -> Iterator[OpsEnv]:
    app = docker_prefix
    pg_image, tools_image = pg_images
    ops_root = tmp_path / "ops"
    ops_root.mkdir()
    origin = OriginRepo(tmp_path / "origin", base_image=tools_image)
    project = tmp_path / "project"
    project.mkdir()
    inventory = write_ops_inventory(
        project / "hosts.toml",
        app=app,
        sshd=sshd,
        ops_root=ops_root,
        origin=origin,
        pg_image=pg_image,
    )
    for env in ("prod", "dev"):
        write_secrets(ops_root, app, env)
        write_local_secrets(project, app, env)
        secret = ops_root / "secrets" / app / f"pg_{env}_password.txt"
        secret.write_text(PG_PASSWORD)
        secret.chmod(0o600)
    yield OpsEnv(app, inventory, ops_root, origin, sshd, f"{app}-infra")
    remove_docker_resources(
        prefixes=[app],
        labels=[f"org.opsfab.deployment={app}-prod", f"org.opsfab.deployment={app}-dev"],
    )
    for tag in ("latest", "rollback"):
        for env in ("prod", "dev"):
            docker("rmi", "-f", f"opsfab/{app}-{env}:{tag}", check=False)


def deploy(env_: OpsEnv, env: str = "prod", *args: str) -> subprocess.CompletedProcess:
    result = env_.fab("deploy", env_.app, env, *args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert CANARY not in result.stdout + result.stderr
    return result


def fab_env(**extra: str) -> dict:
    return {**os.environ, **extra}
