"""The complete ops tree of a host: every deployment's files and the infrastructure's.

``render_all`` is what ``fab render --all`` writes and what ``fab infra.deploy`` and
``fab infra.diff`` compare with the host: files keyed by their path on the host, laid
out as the reference's /opt/ops, in a stable order. The monitoring files are rendered
for the infrastructure services of those names (prometheus, grafana, loki, promtail,
node-exporter, alertmanager); the proxy is the service whose container is the host's
``proxy_container``.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from .backup import recipe
from .inventory import Host, Infra, InfraService, Inventory, load, memory_mb
from .ports import port_map, published_ports
from .render import (
    RenderedFile,
    _render,
    is_bind,
    probe_command,
    render_deployment,
    write_tree,
)

STACKS = ("infra", "monitoring")
MONITORING_FILES = {
    "prometheus": [
        ("prometheus/prometheus.yml", "prometheus.yml.j2"),
        ("prometheus/alert-rules.yml", "alert-rules.yml.j2"),
    ],
    "grafana": [
        (
            "grafana/provisioning/datasources/datasources.yml",
            "grafana-datasources.yml.j2",
        )
    ],
    "loki": [("loki/loki.yml", "loki.yml.j2")],
    "promtail": [("promtail/promtail.yml", "promtail.yml.j2")],
    "alertmanager": [("alertmanager/alertmanager.yml", "alertmanager.yml.j2")],
    "node-exporter": [("scripts/container-metrics.sh", "container-metrics.sh.j2")],
}


def render_all(inventory: Inventory, host: str | None = None) -> list[RenderedFile]:
    """Every file of every deployment and of the infrastructure, sorted by host path.

    With ``host``, only what lives on that host.
    """
    files: dict[PurePosixPath, RenderedFile] = {}
    for deployment in inventory.deployments():
        if host is None or deployment.host_name == host:
            for file in render_deployment(inventory, deployment):
                files[file.path] = file
    if host is None or (inventory.infra is not None and inventory.infra.host == host):
        for file in render_infra(inventory):
            files[file.path] = file
    return [files[path] for path in sorted(files)]


def render_all_to(out: Path, inventory: Inventory | None = None) -> list[Path]:
    """``fab render --all``: each host's tree in ``out`` (``out/<host>`` if several)."""
    inventory = inventory or load()
    written = []
    for name, host in inventory.hosts.items():
        folder = out if len(inventory.hosts) == 1 else out / name
        written += write_tree(render_all(inventory, name), folder, PurePosixPath(host.ops_root))
    return written


def render_infra(inventory: Inventory, with_app_nginx: bool = False) -> list[RenderedFile]:
    """The infrastructure's files; ``with_app_nginx`` adds every app's conf.d file."""
    infra = inventory.infra
    if infra is None:
        return []
    host = inventory.host(infra.host)
    root = PurePosixPath(host.ops_root)
    base = {"inventory_name": inventory.path.name}
    files = []
    for stack in STACKS:
        services = stack_services(infra, stack)
        if services:
            files.append(
                _render(
                    "infra/docker-compose.yml.j2",
                    root / stack / "docker-compose.yml",
                    {**base, **compose_context(inventory, stack)},
                )
            )
    files += _nginx_files(inventory, base)
    if with_app_nginx:
        files += [
            f
            for d in inventory.deployments()
            if d.host_name == infra.host
            for f in render_deployment(inventory, d)
            if f.path.parent == nginx_conf_dir(host)
        ]
    context = {**base, **monitoring_context(inventory)}
    for name, pairs in MONITORING_FILES.items():
        if name in infra.services:
            for path, template in pairs:
                mode = 0o755 if path.endswith(".sh") else 0o644
                files.append(
                    _render(
                        f"monitoring/{template}",
                        root / "monitoring" / path,
                        context,
                        mode,
                    )
                )
    backup = backup_context(inventory)
    files.append(
        _render(
            "backups/backup.sh.j2",
            root / "backups/scripts/backup.sh",
            {**base, **backup},
            0o755,
        )
    )
    files.append(
        _render(
            "backups/opsfab.cron.j2",
            root / "backups/scripts/opsfab.cron",
            {**base, **backup, "metrics": "node-exporter" in infra.services},
        )
    )
    unique = {f.path: f for f in files}
    return [unique[p] for p in sorted(unique)]


# -- helpers the infra tasks share -----------------------------------------------------


def stack_services(infra: Infra, stack: str) -> list[tuple[str, InfraService]]:
    return [(name, svc) for name, svc in infra.services.items() if svc.stack == stack]


def proxy_service(inventory: Inventory) -> tuple[str, InfraService] | None:
    infra = inventory.infra
    host = inventory.host(infra.host)
    for name, svc in infra.services.items():
        if svc.container_name(name) == host.proxy_container:
            return name, svc
    return None


def stack_dir(host: Host, stack: str) -> PurePosixPath:
    return PurePosixPath(host.ops_root) / stack


def nginx_conf_dir(host: Host) -> PurePosixPath:
    return PurePosixPath(host.ops_root) / host.conf_dir


def project(infra: Infra, stack: str) -> str:
    return f"{infra.project_prefix}-{stack}"


def compose_command(infra: Infra, host: Host, stack: str) -> list[str]:
    """A stack's compose command, with project directory, name and file explicit."""
    folder = stack_dir(host, stack)
    return [
        *host.compose,
        "--project-directory",
        str(folder),
        "-p",
        project(infra, stack),
        "-f",
        str(folder / "docker-compose.yml"),
    ]


def infra_secret_files(inventory: Inventory) -> dict[str, PurePosixPath]:
    infra = inventory.infra
    folder = PurePosixPath(inventory.host(infra.host).ops_root) / "secrets" / "infra"
    return {k: folder / v for s in infra.services.values() for k, v in sorted(s.secrets.items())}


# -- contexts --------------------------------------------------------------------------


def compose_context(inventory: Inventory, stack: str) -> dict:
    infra = inventory.infra
    host = inventory.host(infra.host)
    proxy = proxy_service(inventory)
    services = []
    for name, svc in stack_services(infra, stack):
        is_proxy = proxy is not None and proxy[0] == name
        port = infra.nginx.status_port if is_proxy else svc.port
        ports = [
            *svc.ports,
            *(published_ports(inventory, infra.host) if is_proxy else []),
        ]
        services.append(
            {
                "name": name,
                "container": svc.container_name(name),
                "image": svc.image,
                "command": svc.command,
                "user": svc.user,
                "memory": f"{memory_mb(svc.memory)}m",
                "environment": {k: v.replace("$", "$$") for k, v in svc.environment.items()},
                "volumes": svc.volumes,
                "networks": svc.networks,
                "secrets": sorted(svc.secrets),
                "ports": [f"{infra.nginx.bind}:{p}:{p}" for p in sorted(set(ports))],
                "healthcheck": _healthcheck(svc, port),
            }
        )
    networks = []
    for _, svc in stack_services(infra, stack):
        networks += [n for n in svc.networks if n not in networks]
    secrets = infra_secret_files(inventory)
    used = {k for _, s in stack_services(infra, stack) for k in s.secrets}
    return {
        "project": project(infra, stack),
        "services": services,
        "volumes": sorted(
            {v for _, s in stack_services(infra, stack) for v in s.volumes if not is_bind(v)}
        ),
        "networks": networks,
        "shared_network": host.shared_network,
        "secrets": {k: str(v) for k, v in sorted(secrets.items()) if k in used},
    }


def _healthcheck(svc: InfraService, port: int | None) -> dict | None:
    if svc.health is None:
        return None
    health = svc.health
    return {
        "test": ["CMD", *probe_command(health, port)],
        "interval": health.interval,
        "timeout": health.timeout,
        "retries": health.retries,
        "start_period": health.start_period,
    }


def _nginx_files(inventory: Inventory, base: dict) -> list[RenderedFile]:
    infra = inventory.infra
    host = inventory.host(infra.host)
    conf_dir = nginx_conf_dir(host)
    nginx_dir = conf_dir.parent
    rows = sorted((e for e in port_map(inventory) if e.host == infra.host), key=lambda e: e.port)
    context = {
        **base,
        "nginx": infra.nginx,
        "rate_limits": sorted(infra.nginx.rate_limits.items()),
        "status_port": infra.nginx.status_port,
        "ports": rows,
        "host_name": infra.host,
    }
    files = [
        _render("infra/nginx/nginx.conf.j2", nginx_dir / "nginx.conf", context),
        _render("infra/nginx/mime.types.j2", nginx_dir / "mime.types", context),
        _render("infra/nginx/conf.d/00-status.conf.j2", conf_dir / "00-status.conf", context),
        _render("infra/nginx/html/index.html.j2", nginx_dir / "html" / "index.html", context),
    ]
    for stack in STACKS:
        routes = [
            {
                "env": stack,
                "listen": svc.publish,
                "container": svc.container_name(name),
                "port": svc.port,
                "variable": "upstream_"
                + svc.container_name(name).replace("-", "_").replace(".", "_"),
                "locations": [{"path": "/", "zone": None, "burst": 0}],
            }
            for name, svc in stack_services(infra, stack)
            if svc.publish is not None
        ]
        if routes:
            routes.sort(key=lambda r: r["listen"])
            files.append(
                _render(
                    "infra/nginx/conf.d/app.conf.j2",
                    conf_dir / f"90-{stack}.conf",
                    {**base, "app": f"the {stack} stack", "routes": routes},
                )
            )
    return files


def monitoring_context(inventory: Inventory) -> dict:
    infra = inventory.infra
    host = inventory.host(infra.host)
    services = infra.services

    def address(name: str) -> str:
        svc = services[name]
        return f"{svc.container_name(name)}:{svc.port}"

    jobs = [
        {"name": name, "path": svc.metrics, "targets": [address(name)]}
        for name, svc in services.items()
        if svc.metrics and svc.port
    ]
    for d in inventory.deployments():
        for s in d.services:
            if s.metrics and s.port and d.host_name == infra.host:
                jobs.append(
                    {
                        "name": f"{d.name}-{s.name}",
                        "path": s.metrics,
                        "targets": [f"{s.container}:{s.port}"],
                    }
                )
    containers = [
        (s.container, s.memory_mb * 1024 * 1024)
        for d in inventory.deployments()
        if d.host_name == infra.host
        for s in d.services
    ]
    containers += [
        (svc.container_name(n), memory_mb(svc.memory) * 1024 * 1024) for n, svc in services.items()
    ]
    return {
        "monitoring": infra.monitoring,
        "jobs": jobs,
        "alertmanager": address("alertmanager") if "alertmanager" in services else None,
        "prometheus_url": f"http://{address('prometheus')}" if "prometheus" in services else None,
        "loki_url": f"http://{address('loki')}" if "loki" in services else None,
        "host_name": infra.host,
        "containers": sorted(containers),
        "textfile_dir": str(stack_dir(host, "monitoring") / "textfile"),
    }


def backup_context(inventory: Inventory) -> dict:
    infra = inventory.infra
    host = inventory.host(infra.host)
    root = PurePosixPath(host.ops_root)
    jobs = []
    for d in inventory.deployments():
        if d.host_name != infra.host or d.env not in infra.backup.envs:
            continue
        items = recipe(d)
        if items:
            jobs.append({"name": d.name, "parts": items})
    return {
        "ops_root": str(root),
        "backup": infra.backup,
        "jobs": jobs,
        "metrics_script": str(stack_dir(host, "monitoring") / "scripts" / "container-metrics.sh"),
    }
