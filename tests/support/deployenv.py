"""A test inventory for one app, shaped like QuickPulse, on the fixtures' real sshd.

The app gets a unique name (the docker prefix) so that its compose project, containers,
volumes, networks and images never meet another test's or a real deployment's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .docker import docker
from .gitrepo import APP_PORT, OriginRepo
from .sshd import SshServer

REPO_ROOT = Path(__file__).resolve().parents[2]
CANARY = "canary-Zq7-do-not-print-8d1f"


@dataclass
class DeployEnv:
    app: str
    inventory: Path
    ops_root: Path
    origin: OriginRepo
    sshd: SshServer
    shared_network: str

    def container(self, env: str = "prod") -> str:
        return f"{self.app}-{env}"

    def image(self, env: str = "prod") -> str:
        return f"opsfab/{self.app}-{env}:latest"

    def fab(
        self, *args: str, env: dict | None = None, timeout: int = 600
    ) -> subprocess.CompletedProcess:
        """Run the real command line, as an operator would."""
        environ = {**os.environ, "OPSFAB_INVENTORY": str(self.inventory), **(env or {})}
        environ.pop("OPSFAB_DEBUG", None)
        return subprocess.run(
            [sys.executable, "-m", "fabric", *args],
            cwd=REPO_ROOT,
            env=environ,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def health_body(self, env: str = "prod") -> str:
        """GET /health from inside the container (no traffic leaves loopback)."""
        result = docker(
            "exec",
            self.container(env),
            "wget",
            "-q",
            "-O-",
            f"http://127.0.0.1:{APP_PORT}/health",
            check=False,
        )
        return result.stdout.strip()

    def inspect(self, name: str, fmt: str) -> str:
        return docker("inspect", "--format", fmt, name, check=False).stdout.strip()

    def log_records(self) -> list[dict]:
        log = self.ops_root / "deploy.log"
        if not log.exists():
            return []
        return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]

    def repo_head(self, env: str = "prod") -> str:
        repo = self.ops_root / "apps" / self.app / env / "repo"
        return subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True
        ).stdout.strip()


def write_inventory(
    path: Path,
    *,
    app: str,
    sshd: SshServer,
    ops_root: Path,
    origin: OriginRepo,
    known_hosts: Path | None = None,
    compose: list[str] | None = None,
    min_free_mb: int = 100,
    extra_host: str = "",
    health_tries: int = 3,
    health_timeout: int = 10,
) -> Path:
    shared = f"{app}-infra"
    compose = compose or ["docker", "compose"]
    path.write_text(f"""
[hosts.testhost]
address = "{sshd.host}"
port = {sshd.port}
user = "{sshd.user}"
key = "{sshd.client_key}"
known_hosts = "{known_hosts or sshd.known_hosts}"
ops_root = "{ops_root}"
compose = {json.dumps(compose)}
memory = "4g"
min_free_mb = {min_free_mb}
shared_network = "{shared}"
proxy_container = "{app}-nginx"
{extra_host}

[apps.{app}]
host = "testhost"
repo = "{origin.url}"
nginx_order = 20
required_secrets = ["KINGDEE_APP_SECRET"]

[apps.{app}.envs.prod]
branch = "main"
backup_before_deploy = true

[apps.{app}.envs.dev]
branch = "develop"

[apps.{app}.backup]
volumes = ["{app}-{{env}}-data"]

[apps.{app}.deploy]
health_tries = {health_tries}
health_timeout = {health_timeout}
health_poll = 0.5
health_settle = 1

[apps.{app}.services.app]
container = "{app}-{{env}}"
build = "."
port = {APP_PORT}
memory = {{ prod = "128m", dev = "96m" }}
publish = {{ prod = 18003, dev = 18004 }}
env_file = true
volumes = {{ "{app}-{{env}}-data" = "/app/data", "{app}-{{env}}-reports" = "/app/reports" }}
networks = ["{app}-{{env}}-net", "{shared}"]
stop_grace_period = 2
health = {{ http = "/health", probe = "wget", interval = 1, timeout = 2, retries = 2, \
start_period = 0 }}
""")
    return path


def write_secrets(ops_root: Path, app: str, env: str, text: str | None = None) -> Path:
    folder = ops_root / "secrets" / app
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    file = folder / f"{env}.env"
    file.write_text(text if text is not None else f"KINGDEE_APP_SECRET={CANARY}\n")
    file.chmod(0o600)
    return file
