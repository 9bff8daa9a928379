"""``fab check``: an offline lint of the inventory and of the nginx files it renders.

Two levels. ``structural_problems`` finds what makes the inventory unusable; ``load()``
refuses those, so no task runs on such a file. ``lint`` adds the policy rules an
operator of the server expects (health checks, prod and dev kept apart, only the proxy
publishing host ports, upstreams that are container names). ``run`` gathers both,
with the schema and load-time problems, into one report: a line per problem naming the
key path and the fix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import OpsfabError
from .inventory import (
    NAME,
    Inventory,
    InventoryError,
    _per_env,
    expand,
    memory_mb,
    read,
    validate,
)

Problem = tuple[str, str]
CONTAINER_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$")
CRON_FIELD = r"[0-9*/,-]+"
CRON = re.compile(rf"^{CRON_FIELD}( {CRON_FIELD}){{4}}$")
# `set $upstream_x http://name:port;`, `proxy_pass http://name:port;` and
# `server name:port;` inside an upstream block: the host part names a container.
UPSTREAM = re.compile(
    r"(?:^|[{;])\s*(?:set\s+\$\w+\s+|proxy_pass\s+|server\s+)(?:https?://)?"
    r"(?P<host>[A-Za-z0-9_.-]+)(?::(?P<port>\d+))?[^;]*;",
    re.M,
)
LITERAL_PROXY = re.compile(r"(?:^|[{;])\s*proxy_pass\s+https?://(?P<host>[A-Za-z0-9_.-]+)", re.M)
NOT_CONTAINERS = {"127.0.0.1", "localhost", "unix"}


@dataclass
class Report:
    """What ``fab check`` prints: problems first, then the memory budget per host."""

    path: Path
    problems: list[Problem] = field(default_factory=list)
    memory: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def lines(self) -> list[str]:
        out = [
            f"{self.path}: {key}: {message}" if key else f"{self.path}: {message}"
            for key, message in self.problems
        ]
        return out + self.memory


def run(path: str | Path | None = None, tree: Path | None = None) -> Report:
    """Every problem of the inventory (and of an nginx tree on disk, if given)."""
    try:
        inventory = read(path)
    except InventoryError as exc:
        return Report(Path(exc.path), list(exc.problems))
    problems = validate(inventory)
    if any(key.endswith(".host") for key, _ in problems):
        return Report(inventory.path, problems)  # nothing can be resolved on its host
    report = Report(inventory.path, problems + lint(inventory))
    report.memory = memory_budget(inventory)
    if tree is not None and (not tree.is_dir() or not _conf_files(tree)):
        report.problems.append(
            ("--tree", f"{tree} holds no nginx .conf file; give a copy of the ops root")
        )
    elif tree is not None:
        report.problems += lint_nginx_tree(_conf_files(tree), known_containers(inventory))
    elif not report.problems:
        report.problems += lint_rendered_nginx(inventory)
    return report


# -- load-time: what makes the inventory unusable ------------------------------------


def structural_problems(inventory: Inventory) -> list[Problem]:
    """Cross-field rules of the fields opsfab added for the whole server."""
    problems: list[Problem] = []
    zones = set(inventory.infra.nginx.rate_limits) if inventory.infra else set()
    for app_name, app in inventory.apps.items():
        where = f"apps.{app_name}"
        for svc_name, svc in app.services.items():
            key = f"{where}.services.{svc_name}"
            for env in app.envs:
                container = expand(svc.container, env)
                if not CONTAINER_NAME.match(container):
                    problems.append(
                        (
                            f"{key}.container",
                            f"{container!r} is not a Docker container"
                            " name; use letters, digits, '-', '_' and '.'",
                        )
                    )
            for dep in svc.depends_on:
                if dep not in app.services:
                    problems.append(
                        (
                            f"{key}.depends_on",
                            f"no service {dep!r} in {where}; use one of {sorted(app.services)}",
                        )
                    )
            for env, locations in svc.rate_limit.items():
                if env not in app.envs:
                    problems.append(
                        (
                            f"{key}.rate_limit.{env}",
                            f"no environment {env!r}; use one of {sorted(app.envs)}",
                        )
                    )
                for path, zone in locations.items():
                    if not re.match(r"^/[A-Za-z0-9._~/-]*$", path):
                        problems.append(
                            (
                                f"{key}.rate_limit.{env}",
                                f"location {path!r} must be"
                                " a path starting with '/', e.g. \"/api/\"",
                            )
                        )
                    if zone not in zones:
                        problems.append(
                            (
                                f"{key}.rate_limit.{env}",
                                f"zone {zone!r} is not defined;"
                                f' add [infra.nginx.rate_limits.{zone}] rate = "10r/s"',
                            )
                        )
            problems += _secret_file_problems(f"{key}.secrets", svc.secrets)
            if svc.maxmemory is not None:
                problems += _maxmemory_problems(key, svc, app.envs)
        for db in app.backup.databases:
            if db not in app.services:
                problems.append(
                    (
                        f"{where}.backup.databases",
                        f"no service {db!r} in {where}; use one of {sorted(app.services)}",
                    )
                )
        for name, template in app.files.items():
            problems += _extra_file_problems(f"{where}.files", name, template)
    if inventory.infra is not None:
        problems += _infra_problems(inventory)
    return problems


def _secret_file_problems(key: str, secrets: dict[str, str]) -> list[Problem]:
    return [
        (
            key,
            f"secret file {file!r} must be a file name in the secrets folder,"
            ' e.g. "pg_{env}_password.txt"',
        )
        for file in secrets.values()
        if "/" in file or file.startswith(".") or not file
    ]


def _maxmemory_problems(key: str, svc, envs) -> list[Problem]:
    problems = []
    if not svc.command:
        problems.append(
            (
                f"{key}.maxmemory",
                'maxmemory is appended to the command; add command = ["redis-server", ...]',
            )
        )
    for env in envs:
        value = _per_env(svc.maxmemory, env)
        if value is None:
            problems.append(
                (
                    f"{key}.maxmemory",
                    f'no value for environment {env!r}; add {env} = "50mb"',
                )
            )
            continue
        match = re.fullmatch(r"(\d+)(mb|gb)", str(value).lower())
        if not match:
            problems.append(
                (
                    f"{key}.maxmemory",
                    f'{value!r} is not a Redis size; write e.g. "100mb"',
                )
            )
            continue
        mb = int(match.group(1)) * (1024 if match.group(2) == "gb" else 1)
        limit = memory_mb(_per_env(svc.memory, env))
        if mb >= limit:
            problems.append(
                (
                    f"{key}.maxmemory",
                    f"{value} ({env}) leaves no room under the container's"
                    f" {limit} MB limit; keep maxmemory below it (about 80 %)",
                )
            )
    return problems


def _extra_file_problems(key: str, name: str, template: str) -> list[Problem]:
    from .render import TEMPLATES

    problems = []
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*$", name):
        problems.append((key, f'{name!r} must be a plain file name, e.g. "nginx-admin.conf"'))
    if ".." in template.split("/") or not (TEMPLATES / template).is_file():
        problems.append(
            (
                f"{key}.{name}",
                f"no template templates/{template}; create it or fix the path",
            )
        )
    return problems


def _infra_problems(inventory: Inventory) -> list[Problem]:
    infra = inventory.infra
    problems: list[Problem] = []
    if infra.host not in inventory.hosts:
        known = ", ".join(sorted(inventory.hosts))
        return [("infra.host", f"unknown host {infra.host!r}; use one of: {known}")]
    host = inventory.hosts[infra.host]
    zones = set(infra.nginx.rate_limits)
    for env, zone in infra.nginx.limit_envs.items():
        if zone not in zones:
            problems.append(
                (
                    f"infra.nginx.limit_envs.{env}",
                    f"zone {zone!r} is not defined;"
                    f' add [infra.nginx.rate_limits.{zone}] rate = "10r/s"',
                )
            )
    for text in infra.nginx.reserved_ports:
        if not text.isdigit() or not 1 <= int(text) <= 65535:
            problems.append(("infra.nginx.reserved_ports", f"{text!r} is not a port number"))
    for name in ("daily", "weekly"):
        if not CRON.match(getattr(infra.backup, name)):
            problems.append(
                (
                    f"infra.backup.{name}",
                    'write a cron schedule of five fields, e.g. "0 3 * * *"',
                )
            )
    proxies = [n for n, s in infra.services.items() if s.container_name(n) == host.proxy_container]
    if infra.services and len(proxies) != 1:
        problems.append(
            (
                "infra.services",
                f"no service runs the proxy {host.proxy_container!r}"
                f" (hosts.{infra.host}.proxy_container); add [infra.services.nginx]",
            )
        )
    app_containers = {
        s.container
        for d in inventory.deployments()
        if d.host_name == infra.host
        for s in d.services
    }
    seen: dict[str, str] = {}
    for name, svc in infra.services.items():
        key = f"infra.services.{name}"
        container = svc.container_name(name)
        if not CONTAINER_NAME.match(container):
            problems.append((f"{key}.container", f"{container!r} is not a Docker container name"))
        if container in app_containers or container in seen:
            other = seen.get(container, "an app service")
            problems.append(
                (
                    f"{key}.container",
                    f"container name {container!r} is also used by {other}; make it unique",
                )
            )
        seen[container] = key
        if svc.publish is not None and svc.port is None:
            problems.append(
                (
                    f"{key}.port",
                    "a published service needs its container port; add port = 3000",
                )
            )
        if svc.publish is not None and host.shared_network not in svc.networks:
            problems.append(
                (
                    f"{key}.networks",
                    f"nginx reaches {container} only over"
                    f" {host.shared_network!r}; add it to networks",
                )
            )
        if svc.health and (svc.health.http is None) == (svc.health.cmd is None):
            problems.append(
                (f"{key}.health", 'give exactly one of http = "/health" or cmd = [...]')
            )
        if svc.health and svc.health.http and svc.port is None and name not in proxies:
            problems.append(
                (
                    f"{key}.port",
                    "an http health check needs the container port; add port",
                )
            )
        problems += _secret_file_problems(f"{key}.secrets", svc.secrets)
    problems += _port_problems(inventory)
    return problems


def _port_problems(inventory: Inventory) -> list[Problem]:
    """Infrastructure host ports against each other and the apps' (apps: validate)."""
    from .ports import port_map

    problems = []
    owners = {}
    for entry in port_map(inventory):
        other = owners.get((entry.host, entry.port))
        if other is not None and not entry.kind == other.kind == "app":
            problems.append(
                (
                    entry.key,
                    f"port {entry.port} is already used by {other.key}"
                    f" ({other.label}); pick a free port (fab ports)",
                )
            )
        owners.setdefault((entry.host, entry.port), entry)
    return problems


# -- fab check: the policy lints ------------------------------------------------------


def lint(inventory: Inventory) -> list[Problem]:
    problems = _health_problems(inventory)
    problems += _isolation_problems(inventory)
    problems += _host_port_problems(inventory)
    return problems


def _health_problems(inventory: Inventory) -> list[Problem]:
    problems = []
    checks = [
        (f"apps.{a}.services.{n}", s.health, app.deploy)
        for a, app in inventory.apps.items()
        for n, s in app.services.items()
    ]
    if inventory.infra is not None:
        checks += [
            (f"infra.services.{n}", s.health, inventory.infra.deploy)
            for n, s in inventory.infra.services.items()
        ]
    for key, health, settings in checks:
        if health is None:
            problems.append(
                (
                    f"{key}.health",
                    "no health check: a deploy cannot tell it works;"
                    ' add health = { http = "/health" } or { cmd = [...] }',
                )
            )
            continue
        decided = health.start_period + health.retries * health.interval
        window = settings.health_tries * settings.health_timeout
        if decided > window:
            problems.append(
                (
                    f"{key}.health",
                    f"Docker decides only after start_period +"
                    f" retries x interval = {health.start_period} + {health.retries} x"
                    f" {health.interval} = {decided} s, but the deploy waits"
                    f" {settings.health_tries} x {settings.health_timeout} = {window}"
                    " s; shorten the interval or start_period, or raise"
                    " deploy.health_timeout",
                )
            )
        if health.timeout > health.interval:
            problems.append(
                (
                    f"{key}.health.timeout",
                    f"a probe may take {health.timeout} s but runs"
                    f" every {health.interval} s; make timeout at most the interval",
                )
            )
    return problems


def _isolation_problems(inventory: Inventory) -> list[Problem]:
    """prod and dev of one app must not share a network, volume or secret."""
    problems = []
    for app_name, app in inventory.apps.items():
        shared_net = (
            inventory.hosts[app.host].shared_network if app.host in inventory.hosts else ""
        )
        envs = sorted(app.envs)
        for svc_name, svc in app.services.items():
            key = f"apps.{app_name}.services.{svc_name}"
            kinds = [
                ("networks", [n for n in svc.networks if n != shared_net], "network"),
                ("volumes", [v for v in svc.volumes if not _is_bind(v)], "volume"),
                ("secrets", list(svc.secrets.values()), "secret file"),
            ]
            for field_name, values, label in kinds:
                for value in values:
                    resolved = {expand(value, env) for env in envs}
                    if len(envs) > 1 and len(resolved) == 1:
                        problems.append(
                            (
                                f"{key}.{field_name}",
                                f"{', '.join(envs)} share the {label}"
                                f" {value!r}; put {{env}} in its name, e.g."
                                f' "{_with_env(value)}"',
                            )
                        )
    return problems


def _host_port_problems(inventory: Inventory) -> list[Problem]:
    infra = inventory.infra
    if infra is None or infra.host not in inventory.hosts:
        return []
    proxy = inventory.hosts[infra.host].proxy_container
    return [
        (
            f"infra.services.{n}.ports",
            f"{s.container_name(n)} publishes host ports {s.ports};"
            f" only the proxy {proxy} may: remove ports and set publish = <port>"
            " so nginx forwards it",
        )
        for n, s in infra.services.items()
        if s.ports and s.container_name(n) != proxy
    ]


def memory_budget(inventory: Inventory) -> list[str]:
    """One line per host: the sum of the memory limits and the host's memory."""
    out = []
    for host_name, host in inventory.hosts.items():
        apps = sum(
            s.memory_mb
            for d in inventory.deployments()
            if d.host_name == host_name
            for s in d.services
        )
        infra = inventory.infra
        extra = (
            sum(memory_mb(s.memory) for s in infra.services.values())
            if infra is not None and infra.host == host_name
            else 0
        )
        total, have = apps + extra, memory_mb(host.memory)
        verdict = "fits" if total <= have else "EXCEEDS the host"
        out.append(
            f"memory on {host_name}: limits add up to {total} MB (apps {apps} MB,"
            f" infrastructure {extra} MB) of the host's {have} MB: {verdict}"
        )
    return out


# -- nginx upstreams -------------------------------------------------------------------


def known_containers(inventory: Inventory) -> set[str]:
    names = {s.container for d in inventory.deployments() for s in d.services}
    if inventory.infra is not None:
        names |= {s.container_name(n) for n, s in inventory.infra.services.items()}
    return names


def lint_rendered_nginx(inventory: Inventory) -> list[Problem]:
    from .tree import render_all

    try:
        files = render_all(inventory)
    except OpsfabError as exc:
        return [("templates", exc.message)]
    confs = {
        str(f.path): f.content.decode()
        for f in files
        if "/conf.d/" in str(f.path) and str(f.path).endswith(".conf")
    }
    return lint_nginx_tree(confs, known_containers(inventory))


def lint_nginx_tree(confs: dict[str, str], containers: set[str]) -> list[Problem]:
    """Upstream hosts in nginx conf files that are not container names."""
    problems = []
    for path, text in sorted(confs.items()):
        for match in UPSTREAM.finditer(text):
            host = match.group("host")
            if host.startswith("$") or host in NOT_CONTAINERS or host in containers:
                continue
            number = text.count("\n", 0, match.start("host")) + 1
            close = _closest(host, containers)
            hint = f"did you mean {close!r}? " if close else ""
            problems.append(
                (
                    f"{path}:{number}",
                    f"upstream {host!r} is not a container name in the"
                    f" inventory; {hint}nginx answers 502 for it (fab ports lists"
                    " them)",
                )
            )
        for match in LITERAL_PROXY.finditer(text):
            number = text.count("\n", 0, match.start("host")) + 1
            problems.append(
                (
                    f"{path}:{number}",
                    f"proxy_pass names {match.group('host')!r} directly:"
                    " nginx refuses to start while that container is down; set a"
                    " variable and use a resolver (see templates/infra/nginx/conf.d)",
                )
            )
    return problems


def _conf_files(tree: Path) -> dict[str, str]:
    folder = tree / "infra" / "nginx" / "conf.d"
    if not folder.is_dir():
        folder = tree
    return {
        str(p): p.read_text(encoding="utf-8", errors="replace")
        for p in sorted(folder.glob("*.conf"))
    }


def _closest(name: str, candidates: set[str]) -> str | None:
    import difflib

    found = difflib.get_close_matches(name, sorted(candidates), n=1, cutoff=0.75)
    return found[0] if found else None


def _is_bind(volume: str) -> bool:
    return volume.startswith(("/", "./", "../", "~"))


def _with_env(value: str) -> str:
    return f"{value}-{{env}}" if re.match(NAME, value) else value
