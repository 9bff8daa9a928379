"""Render the files a deployment needs from the inventory and templates/.

Rendering is pure and deterministic: the same inventory gives the same bytes. Files are
keyed by their absolute path on the host, so the same result feeds ``fab render`` (a
local folder laid out like the ops root), ``fab diff`` and the deploy's config push.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import jinja2

from .errors import TemplateError
from .inventory import PROJECT_ROOT, Deployment, Health, Inventory, ResolvedService

TEMPLATES = PROJECT_ROOT / "templates"


@dataclass(frozen=True)
class RenderedFile:
    path: PurePosixPath
    content: bytes
    mode: int = 0o644
    template: str = ""


def render_deployment(inventory: Inventory, deployment: Deployment) -> list[RenderedFile]:
    """Every file one deployment owns on the host, in a stable order."""
    files = [
        _render(
            "apps/docker-compose.yml.j2",
            deployment.compose_file,
            compose_context(inventory, deployment),
        )
    ]
    if any(s.publish is not None for s in _all_env_services(inventory, deployment.app_name)):
        files.append(render_app_nginx(inventory, deployment.app_name))
    for name, template in sorted(deployment.app.files.items()):
        context = {
            "inventory_name": inventory.path.name,
            "deployment": deployment.name,
            "app": deployment.app_name,
            "env": deployment.env,
        }
        files.append(_render(template, deployment.deploy_dir / name, context))
    return files


def render_app_nginx(inventory: Inventory, app_name: str) -> RenderedFile:
    """The app's conf.d file: one server block per published service and environment."""
    deployments = [inventory.deployment(app_name, env) for env in inventory.apps[app_name].envs]
    routes = [
        {
            "env": d.env,
            "listen": s.publish,
            "container": s.container,
            "port": s.port,
            "variable": "upstream_" + s.container.replace("-", "_"),
            "locations": nginx_locations(inventory, d.env, s),
        }
        for d in deployments
        for s in d.services
        if s.publish is not None
    ]
    routes.sort(key=lambda r: r["listen"])
    context = {"inventory_name": inventory.path.name, "app": app_name, "routes": routes}
    return _render("infra/nginx/conf.d/app.conf.j2", deployments[0].nginx_conf, context)


def nginx_locations(inventory: Inventory, env: str, service: ResolvedService) -> list[dict]:
    """The locations of one server block: "/" first, each with its rate-limit zone or None.

    Without an [infra] section there are no zones and the block has one plain "/".
    """
    zones = {}
    infra = inventory.infra
    if infra is not None:
        default = infra.nginx.limit_envs.get(env)
        if default is not None:
            zones["/"] = default
    zones.update(service.rate_limit)
    zones.setdefault("/", None)
    limits = infra.nginx.rate_limits if infra is not None else {}
    return [
        {"path": path, "zone": zone, "burst": limits[zone].burst if zone in limits else 0}
        for path, zone in sorted(zones.items(), key=lambda item: (item[0] != "/", item[0]))
    ]


def compose_context(inventory: Inventory, deployment: Deployment) -> dict:
    by_name = {s.name: s for s in deployment.services}
    services = [
        {
            "name": s.name,
            "container": s.container,
            "build": _build_context(s),
            "dockerfile": s.dockerfile,
            "image": s.image,
            "command": [*s.command, "--maxmemory", s.maxmemory]
            if s.maxmemory and s.command
            else s.command,
            "memory": f"{s.memory_mb}m",
            "stop_grace_period": s.stop_grace_period,
            "env_file": s.env_file,
            # Values are literal: compose would expand a "$" (its escape is "$$").
            "environment": {k: v.replace("$", "$$") for k, v in s.environment.items()},
            "volumes": s.volumes,
            "networks": s.networks,
            "healthcheck": healthcheck(s),
            "secrets": sorted(s.secrets),
            "depends_on": {
                dep: "service_healthy" if by_name[dep].health else "service_started"
                for dep in s.depends_on
            },
        }
        for s in deployment.services
    ]
    volumes = sorted({v for s in deployment.services for v in s.volumes if not is_bind(v)})
    return {
        "inventory_name": inventory.path.name,
        "deployment": deployment.name,
        "services": services,
        "env_file": str(deployment.env_file),
        "volumes": volumes,
        "networks": deployment.networks,
        "shared_network": deployment.host.shared_network,
        "secrets": {k: str(v) for k, v in sorted(deployment.secret_files.items())},
    }


def is_bind(volume: str) -> bool:
    """A host path (bind mount) rather than a named volume."""
    return volume.startswith(("/", "./", "../", "~"))


def healthcheck(service: ResolvedService) -> dict | None:
    health = service.health
    if health is None:
        return None
    return {
        "test": ["CMD", *probe_command(health, service.port)],
        "interval": health.interval,
        "timeout": health.timeout,
        "retries": health.retries,
        "start_period": health.start_period,
    }


def probe_command(health: Health, port: int | None) -> list[str]:
    if health.cmd is not None:
        return list(health.cmd)
    url = f"http://127.0.0.1:{port}{health.http}"
    if health.probe == "curl":
        return ["curl", "-fsS", "-o", "/dev/null", url]
    if health.probe == "python":
        code = f"import urllib.request; urllib.request.urlopen({url!r}, timeout={health.timeout})"
        return ["python", "-c", code]
    return ["wget", "-q", "-O", "/dev/null", url]


def _build_context(service: ResolvedService) -> str | None:
    if service.build is None:
        return None
    sub = service.build.strip("/")
    return "./repo" if sub in ("", ".") else f"./repo/{sub}"


def _all_env_services(inventory: Inventory, app_name: str) -> list[ResolvedService]:
    return [
        s
        for env in inventory.apps[app_name].envs
        for s in inventory.deployment(app_name, env).services
    ]


_environment = jinja2.Environment(
    loader=jinja2.FileSystemLoader(str(TEMPLATES)),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    autoescape=False,
)
# JSON strings are valid YAML scalars: every value is quoted exactly once.
_environment.filters["json"] = lambda value: json.dumps(value, ensure_ascii=False)
_environment.filters["sh"] = shlex.quote


def _render(template: str, path: PurePosixPath, context: dict, mode: int = 0o644) -> RenderedFile:
    try:
        text = _environment.get_template(template).render(**context)
    except jinja2.UndefinedError as exc:
        raise TemplateError(
            f"templates/{template}: {exc.message}",
            "add the missing value to hosts.toml or fix the template's variable name",
        ) from None
    except jinja2.TemplateError as exc:
        raise TemplateError(f"templates/{template}: {exc}", "fix the template") from None
    if not text.endswith("\n"):
        text += "\n"
    return RenderedFile(path, text.encode(), mode, template)


def write_tree(files: list[RenderedFile], out: Path, ops_root: PurePosixPath) -> list[Path]:
    """Write rendered files under ``out`` as they would lie under the ops root."""
    written = []
    for file in files:
        target = out / file.path.relative_to(ops_root)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(file.content)
        target.chmod(file.mode)
        written.append(target)
    return written
