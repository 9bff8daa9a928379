"""The inventory: hosts.toml, its schema, its validation and the resolved deployments.

``load()`` reads and validates the whole file before anything runs. Every problem is
reported with the file, the key path and what to write instead; a file with problems
never yields an ``Inventory``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Annotated, Literal

import paramiko
from dotenv import dotenv_values
from paramiko.pkey import UnknownKeyType
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import InventoryError, UsageError

NAME = r"^[a-z][a-z0-9-]{0,40}$"
PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_INVENTORY = PROJECT_ROOT / "hosts.toml"
MEMORY = re.compile(r"^(\d+(?:\.\d+)?)([mg])$")

Name = Annotated[str, Field(pattern=NAME)]
SecretName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,62}$")]


def memory_mb(value: str | int) -> int:
    """ "128m" -> 128, "1.5g" -> 1536, 96 -> 96."""
    if isinstance(value, int):
        return value
    match = MEMORY.match(value.strip().lower())
    if not match:
        raise ValueError(f'{value!r} is not a memory size; write e.g. "128m" or "1.5g"')
    number, unit = float(match.group(1)), match.group(2)
    return int(number * 1024) if unit == "g" else int(number)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Host(Strict):
    address: str
    user: str = "root"
    port: int = Field(22, ge=1, le=65535)
    key: str | None = None
    known_hosts: str = "~/.ssh/known_hosts"
    host_key: str | None = None
    transport: Literal["ssh", "local"] = "ssh"
    ops_root: str = "/opt/ops"
    compose: list[str] = ["docker", "compose"]
    memory: str = Field(description='total memory, e.g. "7.1g"')
    min_free_mb: int = Field(2048, ge=0)
    shared_network: Name = "ops-infra"
    proxy_container: Name = "ops-nginx"
    conf_dir: str = "infra/nginx/conf.d"
    connect_timeout: int = Field(10, ge=1)

    @field_validator("ops_root")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/") or ".." in value.split("/"):
            raise ValueError("must be an absolute path without '..', e.g. \"/opt/ops\"")
        return value.rstrip("/") or "/"

    @field_validator("memory")
    @classmethod
    def _memory(cls, value: str) -> str:
        memory_mb(value)
        return value

    @field_validator("host_key")
    @classmethod
    def _host_key(cls, value: str | None) -> str | None:
        if value is None:
            return value
        hint = (
            'write the key type and base64 key, e.g. "ssh-ed25519 AAAA..."'
            " (a line of ssh-keyscan without the host name)"
        )
        parts = value.split()
        if len(parts) != 2:
            raise ValueError(hint)
        try:
            paramiko.PKey.from_type_string(parts[0], base64.b64decode(parts[1], validate=True))
        except (ValueError, binascii.Error, paramiko.SSHException, UnknownKeyType) as exc:
            raise ValueError(f"not a valid SSH public key ({exc}); {hint}") from None
        return value


class Health(Strict):
    """A container health check. ``http`` is a path probed inside the container."""

    http: str | None = None
    cmd: list[str] | None = None
    probe: Literal["wget", "curl", "python"] = "wget"
    interval: int = Field(10, ge=1)
    timeout: int = Field(5, ge=1)
    retries: int = Field(3, ge=1)
    start_period: int = Field(10, ge=0)


PerEnvInt = int | dict[str, int]
PerEnvStr = str | dict[str, str]


class Service(Strict):
    container: str = Field(description="container name; {env} is replaced")
    build: str | None = None
    dockerfile: str = "Dockerfile"
    image: str | None = None
    port: int | None = Field(None, ge=1, le=65535)
    memory: PerEnvStr
    publish: dict[str, int] = {}
    env_file: bool = False
    volumes: dict[str, str] = {}
    networks: list[str] = []
    health: Health | None = None
    environment: dict[str, str] = {}
    command: list[str] | None = None
    secrets: dict[SecretName, str] = Field(
        {}, description="Docker secret name -> file in the app's secrets folder; {env} is replaced"
    )
    maxmemory: PerEnvStr | None = Field(
        None, description="Redis maxmemory, appended to the command"
    )
    rate_limit: dict[str, dict[str, Name]] = Field(
        {}, description="env -> {location path: zone of infra.nginx.rate_limits}"
    )
    depends_on: list[Name] = Field(
        [], description="services of the same app that must be healthy first"
    )
    metrics: str | None = Field(None, description="path Prometheus scrapes on the container port")
    stop_grace_period: int = Field(
        10, ge=1, description="seconds between SIGTERM and SIGKILL on stop"
    )


class Backup(Strict):
    volumes: list[str] = []
    databases: list[Name] = Field(
        [], description="PostgreSQL services: pg_dump of their POSTGRES_DB as POSTGRES_USER"
    )
    sqlite: dict[Name, str] = Field(
        {}, description="service -> SQLite file inside its container, copied with .backup"
    )


class DeploySettings(Strict):
    health_tries: int = Field(5, ge=1)
    health_timeout: int = Field(30, ge=1)
    health_poll: float = Field(2.0, gt=0)
    health_settle: float = Field(3.0, ge=0, description="seconds all must stay healthy")


class Environment(Strict):
    branch: str
    backup_before_deploy: bool = False


class App(Strict):
    host: str
    repo: str
    nginx_order: int = Field(50, ge=0, le=99)
    required_secrets: list[str] = []
    envs: dict[Name, Environment]
    services: dict[Name, Service]
    backup: Backup = Backup()
    deploy: DeploySettings = DeploySettings()
    files: dict[str, str] = Field(
        {}, description="extra file in the deploy folder -> template under templates/"
    )


# -- the infrastructure: the front nginx, monitoring, scheduled backups -------------


class RateLimit(Strict):
    rate: str = Field(pattern=r"^[1-9][0-9]*r/[sm]$", description='e.g. "10r/s"')
    burst: int = Field(20, ge=0)


class NginxSettings(Strict):
    status_port: int = Field(80, ge=1, le=65535)
    bind: str = Field("0.0.0.0", description="host address the proxy's ports are published on")
    reserved_ports: dict[str, str] = Field({}, description="port -> purpose, kept free")
    rate_limits: dict[Name, RateLimit] = {}
    limit_envs: dict[Name, Name] = Field(
        {}, description='env -> zone applied to "/" of every published service'
    )
    client_max_body_size: str = Field("20m", pattern=r"^[0-9]+[kmg]?$")
    worker_connections: int = Field(1024, ge=16)


class MonitoringSettings(Strict):
    retention: str = Field("7d", pattern=r"^[0-9]+[hdwy]$")
    scrape_interval: int = Field(15, ge=1)
    memory_alert_ratio: float = Field(0.9, gt=0, le=1)
    disk_alert_ratio: float = Field(0.85, gt=0, le=1)
    alert_webhook: str | None = None


class BackupSchedule(Strict):
    daily: str = "0 3 * * *"
    weekly: str = "0 4 * * 0"
    keep_daily: int = Field(7, ge=1)
    keep_weekly: int = Field(4, ge=1)
    keep_deploy: int = Field(10, ge=1, description="pre-deploy backup sets kept")
    envs: list[Name] = ["prod"]
    cron_file: str | None = Field(
        "/etc/cron.d/opsfab", description="where infra.deploy installs the schedule"
    )
    metrics_every: int = Field(
        1, ge=1, le=59, description="minutes between container metrics for node-exporter"
    )


class InfraService(Strict):
    """A container of the infrastructure; its name defaults to ops-<service>."""

    stack: Literal["infra", "monitoring"]
    container: str | None = None
    image: str
    port: int | None = Field(None, ge=1, le=65535)
    memory: str
    publish: int | None = Field(
        None, ge=1, le=65535, description="nginx publishes it on this host port"
    )
    ports: list[int] = Field(
        [], description="host ports the container itself publishes; only the proxy may"
    )
    volumes: dict[str, str] = {}
    networks: list[Name] = []
    health: Health | None = None
    environment: dict[str, str] = {}
    command: list[str] | None = None
    secrets: dict[SecretName, str] = Field(
        {}, description="Docker secret name -> file in secrets/infra/"
    )
    metrics: str | None = None
    user: str | None = None

    @field_validator("memory")
    @classmethod
    def _memory(cls, value: str) -> str:
        memory_mb(value)
        return value

    def container_name(self, service: str) -> str:
        return self.container or f"ops-{service}"


class Infra(Strict):
    host: str
    project_prefix: Name = Field(
        "ops", description="compose projects are <prefix>-infra and <prefix>-monitoring"
    )
    nginx: NginxSettings = NginxSettings()
    monitoring: MonitoringSettings = MonitoringSettings()
    backup: BackupSchedule = BackupSchedule()
    deploy: DeploySettings = DeploySettings()
    services: dict[Name, InfraService] = {}


class InventoryFile(Strict):
    hosts: dict[Name, Host]
    apps: dict[Name, App] = {}
    infra: Infra | None = None


# -- resolved views ----------------------------------------------------------------


@dataclass(frozen=True)
class ResolvedService:
    name: str
    container: str
    build: str | None
    dockerfile: str
    image: str
    port: int | None
    memory_mb: int
    publish: int | None
    env_file: bool
    volumes: dict[str, str]
    networks: list[str]
    health: Health | None
    environment: dict[str, str]
    command: list[str] | None
    secrets: dict[str, str] = dataclasses.field(default_factory=dict)
    maxmemory: str | None = None
    rate_limit: dict[str, str] = dataclasses.field(default_factory=dict)
    depends_on: list[str] = dataclasses.field(default_factory=list)
    metrics: str | None = None
    stop_grace_period: int = 10

    @property
    def built(self) -> bool:
        return self.build is not None

    @property
    def rollback_image(self) -> str:
        return self.image.rsplit(":", 1)[0] + ":rollback"


@dataclass(frozen=True)
class Deployment:
    """One app in one environment on its host, with every name and path resolved."""

    app_name: str
    env: str
    app: App
    environment: Environment
    host_name: str
    host: Host
    services: tuple[ResolvedService, ...]

    @property
    def name(self) -> str:
        return f"{self.app_name}-{self.env}"

    @property
    def ops_root(self) -> PurePosixPath:
        return PurePosixPath(self.host.ops_root)

    @property
    def deploy_dir(self) -> PurePosixPath:
        return self.ops_root / "apps" / self.app_name / self.env

    @property
    def repo_dir(self) -> PurePosixPath:
        return self.deploy_dir / "repo"

    @property
    def compose_file(self) -> PurePosixPath:
        return self.deploy_dir / "docker-compose.yml"

    @property
    def secrets_dir(self) -> PurePosixPath:
        return self.ops_root / "secrets" / self.app_name

    @property
    def env_file(self) -> PurePosixPath:
        return self.secrets_dir / f"{self.env}.env"

    @property
    def nginx_conf(self) -> PurePosixPath:
        return (
            self.ops_root / self.host.conf_dir / f"{self.app.nginx_order:02d}-{self.app_name}.conf"
        )

    @property
    def lock_dir(self) -> PurePosixPath:
        return self.ops_root / "locks" / f"{self.name}.lock"

    @property
    def backup_dir(self) -> PurePosixPath:
        return self.ops_root / "backups" / "deploy"

    @property
    def deploy_log(self) -> PurePosixPath:
        return self.ops_root / "deploy.log"

    @property
    def branch(self) -> str:
        return self.environment.branch

    @property
    def compose(self) -> list[str]:
        """The compose command with project directory, name and file always explicit."""
        return [
            *self.host.compose,
            "--project-directory",
            str(self.deploy_dir),
            "-p",
            self.name,
            "-f",
            str(self.compose_file),
        ]

    @property
    def backup_volumes(self) -> list[str]:
        return [expand(v, self.env) for v in self.app.backup.volumes]

    @property
    def built_services(self) -> list[ResolvedService]:
        return [s for s in self.services if s.built]

    @property
    def networks(self) -> list[str]:
        seen: list[str] = []
        for service in self.services:
            seen += [n for n in service.networks if n not in seen]
        return seen

    @property
    def proxied(self) -> list[ResolvedService]:
        return [s for s in self.services if s.publish is not None]

    @property
    def secret_files(self) -> dict[str, PurePosixPath]:
        """Docker secrets of every service: name -> file on the host."""
        return {k: self.secrets_dir / v for s in self.services for k, v in s.secrets.items()}


def expand(value: str, env: str) -> str:
    return value.replace("{env}", env)


@dataclass(frozen=True)
class Inventory:
    path: Path
    data: InventoryFile

    @property
    def hosts(self) -> dict[str, Host]:
        return self.data.hosts

    @property
    def apps(self) -> dict[str, App]:
        return self.data.apps

    def deployment(self, app: str, env: str) -> Deployment:
        """Resolve APP ENV; anything the inventory does not name is refused."""
        if app not in self.apps:
            known = ", ".join(sorted(self.apps)) or "none"
            raise UsageError(
                f"unknown app {app!r} in {self.path}",
                f"use one of: {known}; or add [apps.{_safe(app)}] to the inventory",
            )
        spec = self.apps[app]
        if env not in spec.envs:
            known = ", ".join(sorted(spec.envs))
            raise UsageError(
                f"app {app!r} has no environment {env!r} in {self.path}",
                f"use one of: {known}; or add [apps.{app}.envs.{_safe(env)}]",
            )
        host = self.hosts[spec.host]
        services = tuple(_resolve_service(name, svc, env) for name, svc in spec.services.items())
        return Deployment(app, env, spec, spec.envs[env], spec.host, host, services)

    def deployments(self) -> list[Deployment]:
        return [self.deployment(a, e) for a, spec in self.apps.items() for e in spec.envs]

    @property
    def infra(self) -> Infra | None:
        return self.data.infra

    def host(self, name: str) -> Host:
        if name not in self.hosts:
            known = ", ".join(sorted(self.hosts))
            raise UsageError(f"unknown host {name!r} in {self.path}", f"use one of: {known}")
        return self.hosts[name]


def _safe(text: str) -> str:
    """Echo user input back only when it is a plain name."""
    return text if re.match(NAME, text) else "NAME"


def _per_env(value: str | int | dict, env: str) -> str | int | None:
    if isinstance(value, dict):
        return value.get(env)
    return value


def _resolve_service(name: str, svc: Service, env: str) -> ResolvedService:
    container = expand(svc.container, env)
    image = expand(svc.image, env) if svc.image else f"opsfab/{container}:latest"
    return ResolvedService(
        name=name,
        container=container,
        build=svc.build,
        dockerfile=svc.dockerfile,
        image=image,
        port=svc.port,
        memory_mb=memory_mb(_per_env(svc.memory, env)),
        publish=svc.publish.get(env),
        env_file=svc.env_file,
        volumes={expand(k, env): v for k, v in svc.volumes.items()},
        networks=[expand(n, env) for n in svc.networks],
        health=svc.health,
        environment={k: expand(v, env) for k, v in svc.environment.items()},
        command=svc.command,
        secrets={k: expand(v, env) for k, v in svc.secrets.items()},
        maxmemory=_per_env(svc.maxmemory, env) if svc.maxmemory is not None else None,
        rate_limit=dict(svc.rate_limit.get(env, {})),
        depends_on=list(svc.depends_on),
        metrics=svc.metrics,
        stop_grace_period=svc.stop_grace_period,
    )


# -- loading -------------------------------------------------------------------------


def inventory_path(path: str | os.PathLike | None = None) -> Path:
    return Path(path or os.environ.get("OPSFAB_INVENTORY") or DEFAULT_INVENTORY)


def load(path: str | os.PathLike | None = None) -> Inventory:
    """Read, apply environment overrides to and validate the inventory."""
    inventory = read(path)
    problems = validate(inventory)
    if problems:
        raise InventoryError(str(inventory.path), problems)
    return inventory


def read(path: str | os.PathLike | None = None) -> Inventory:
    """Read the inventory and check its schema, without the cross-field checks."""
    file = inventory_path(path)
    try:
        raw = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InventoryError(
            str(file),
            [("", "no such file; create it (see README.md) or set OPSFAB_INVENTORY")],
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise InventoryError(str(file), [("", f"not valid TOML: {exc}")]) from None
    _apply_env_overrides(raw, file.parent)
    try:
        data = InventoryFile.model_validate(raw)
    except ValidationError as exc:
        raise InventoryError(str(file), [_describe(e) for e in exc.errors()]) from None
    return Inventory(file, data)


def local_env(folder: Path) -> dict[str, str]:
    """Process environment over the git-ignored .env beside the inventory."""
    values = {k: v for k, v in dotenv_values(folder / ".env").items() if v is not None}
    values.update(os.environ)
    return values


def _apply_env_overrides(raw: dict, folder: Path) -> None:
    """Host ``cvm`` takes CVM_HOST, CVM_USER, CVM_SSH_KEY and CVM_TRANSPORT from the env."""
    env = local_env(folder)
    for name, host in (raw.get("hosts") or {}).items():
        if not isinstance(host, dict):
            continue
        prefix = re.sub(r"[^A-Z0-9]", "_", str(name).upper())
        for var, key in (
            ("HOST", "address"),
            ("USER", "user"),
            ("SSH_KEY", "key"),
            ("TRANSPORT", "transport"),
        ):
            value = env.get(f"{prefix}_{var}")
            if value:
                host[key] = value


def _describe(error: dict) -> tuple[str, str]:
    path = ".".join(str(p) for p in error["loc"])
    kind = error["type"]
    if kind == "extra_forbidden":
        return path, "unknown key; remove it or correct its spelling (see README.md, Inventory)"
    if kind == "missing":
        return path, "required key is missing; add it"
    if kind == "string_pattern_mismatch":
        return path, "names must be lower case letters, digits and '-', starting with a letter"
    msg = error["msg"].removeprefix("Value error, ")
    return path, f"{msg} (got {error.get('input')!r})" if kind != "value_error" else msg


def validate(inventory: Inventory) -> list[tuple[str, str]]:
    """Cross-field checks that a schema cannot express. Returns (key path, problem)."""
    problems: list[tuple[str, str]] = []
    ports: dict[tuple[str, int], str] = {}
    containers: dict[tuple[str, str], str] = {}
    for app_name, app in inventory.apps.items():
        where = f"apps.{app_name}"
        if app.host not in inventory.hosts:
            known = ", ".join(sorted(inventory.hosts))
            problems.append((f"{where}.host", f"unknown host {app.host!r}; use one of: {known}"))
            continue
        host = inventory.hosts[app.host]
        for svc_name, svc in app.services.items():
            key = f"{where}.services.{svc_name}"
            if (svc.build is None) == (svc.image is None):
                problems.append(
                    (key, 'give exactly one of build = "<context>" or image = "<ref>"')
                )
            if svc.build is not None and (
                svc.build.startswith("/") or ".." in svc.build.split("/")
            ):
                problems.append(
                    (f"{key}.build", 'must be a folder inside the repository, e.g. "."')
                )
            for field in ("memory", "publish"):
                value = getattr(svc, field)
                if isinstance(value, dict):
                    for env in value:
                        if env not in app.envs:
                            problems.append(
                                (
                                    f"{key}.{field}.{env}",
                                    f"no environment {env!r}; use one of {sorted(app.envs)}",
                                )
                            )
            if isinstance(svc.memory, dict):
                for env in app.envs:
                    if env not in svc.memory:
                        problems.append(
                            (
                                f"{key}.memory",
                                f'no limit for environment {env!r}; add {env} = "128m"',
                            )
                        )
            if svc.publish and svc.port is None:
                problems.append(
                    (
                        f"{key}.port",
                        "a published service needs its container port; add port = 8000",
                    )
                )
            if svc.health and (svc.health.http is None) == (svc.health.cmd is None):
                problems.append(
                    (f"{key}.health", 'give exactly one of http = "/health" or cmd = [...]')
                )
            for env in app.envs:
                resolved = _resolve_service(svc_name, svc, env)
                ckey = (app.host, resolved.container)
                if ckey in containers:
                    problems.append(
                        (
                            f"{key}.container",
                            f"container name {resolved.container!r} is also used by "
                            f"{containers[ckey]}; make it unique",
                        )
                    )
                else:
                    containers[ckey] = f"{where}.services.{svc_name} ({env})"
                if resolved.publish is not None:
                    pkey = (app.host, resolved.publish)
                    if pkey in ports:
                        problems.append(
                            (
                                f"{key}.publish.{env}",
                                f"port {resolved.publish} is already used by {ports[pkey]}; "
                                "pick a free port (fab ports)",
                            )
                        )
                    else:
                        ports[pkey] = f"{app_name} {env}"
                    if host.shared_network not in resolved.networks:
                        problems.append(
                            (
                                f"{key}.networks",
                                f"nginx reaches {resolved.container} only over "
                                f"{host.shared_network!r}; add it to networks",
                            )
                        )
                try:
                    memory_mb(_per_env(svc.memory, env))
                except (ValueError, TypeError) as exc:
                    problems.append((f"{key}.memory", str(exc)))
    problems += _memory_problems(inventory)
    if any(key.endswith(".host") for key, _ in problems):
        return problems  # the checks below resolve every deployment on its host
    from .check import structural_problems  # check imports this module

    problems += structural_problems(inventory)
    return problems


def _memory_problems(inventory: Inventory) -> list[tuple[str, str]]:
    problems = []
    for host_name, host in inventory.hosts.items():
        total = 0
        for app in inventory.apps.values():
            if app.host != host_name:
                continue
            for svc in app.services.values():
                for env in app.envs:
                    with contextlib.suppress(ValueError, TypeError):  # reported by validate()
                        total += memory_mb(_per_env(svc.memory, env))
        infra = inventory.data.infra
        if infra is not None and infra.host == host_name:
            total += sum(memory_mb(s.memory) for s in infra.services.values())
        if total > memory_mb(host.memory):
            problems.append(
                (
                    f"hosts.{host_name}.memory",
                    f"memory limits add up to {total} MB, more than the host's "
                    f"{memory_mb(host.memory)} MB; lower some limits",
                )
            )
    return problems
