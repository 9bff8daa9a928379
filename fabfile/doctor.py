"""`fab doctor APP ENV`: the server's troubleshooting table, checked by a program.

Each check reads facts gathered in one round trip and yields findings that say what
is wrong and what to do. ``--fix`` applies the fixes that are safe to automate
(connecting a proxied container to the shared network); the rest stay advice.

    symptom                        check here
    502 Bad Gateway                a proxied container is not on the shared network
    container unhealthy            its health probes and last log lines
    nginx cannot resolve upstream  conf.d names a container the inventory does not
    deploy fails at health check   it became healthy later than its start_period
    (and) disk and memory headroom free disk, available memory, usage near limits
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import datetime

from . import probe
from .inventory import Deployment, Inventory, memory_mb
from .status import MEMORY_SCRIPT, _memory, _time
from .target import Target, line

INSPECT = (
    "{{.Name}}|{{.Id}}|{{.State.Status}}|{{.State.StartedAt}}|{{.RestartCount}}|"
    "{{range $net, $cfg := .NetworkSettings.Networks}}{{$net}} {{end}}|"
    '{{if index .State "Health"}}{{json .State.Health}}{{end}}'
)
UPSTREAM = re.compile(r"http://([A-Za-z0-9_.-]+):(\d+)")


@dataclass
class Finding:
    level: str  # "problem" or "warning"
    subject: str
    message: str
    fix: str
    command: str | None = None  # what --fix runs
    fixed: bool = False

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("level", "subject", "message", "fix", "fixed")}


def doctor_sections(inventory: Inventory, d: Deployment) -> list[tuple[str, str]]:
    containers = [s.container for s in d.services]
    return [
        ("now", line(["date", "-u", "+%Y-%m-%dT%H:%M:%SZ"])),
        ("inspect", line(["docker", "container", "inspect", "--format", INSPECT, *containers])),
        (
            "network",
            line(["docker", "network", "inspect", "--format", "{{.Name}}", d.host.shared_network]),
        ),
        ("conf", line(["cat", str(d.nginx_conf)])),
        ("disk", dict(probe.sections(d, []))["disk"]),
        ("meminfo", line(["cat", "/proc/meminfo"])),
        ("memory", MEMORY_SCRIPT),
    ]


def examine(target: Target, inventory: Inventory, d: Deployment) -> list[Finding]:
    """Every finding for APP ENV: one round trip, plus one per unhealthy container."""
    raw = probe.parse(target.run(probe.script(doctor_sections(inventory, d)), check=False).stdout)
    containers = _containers(raw.get("inspect", (1, ""))[1])
    now = _time(raw.get("now", (1, ""))[1].strip())
    findings = []
    findings += network_findings(d, containers, raw.get("network", (1, ""))[0] == 0)
    findings += health_findings(target, d, containers, now)
    findings += upstream_findings(inventory, d, raw.get("conf", (1, "")))
    findings += headroom_findings(inventory, d, raw, containers)
    return findings


def fix(target: Target, findings: list[Finding]) -> None:
    for finding in findings:
        if finding.command and not finding.fixed:
            target.run(finding.command)
            finding.fixed = True


def _containers(text: str) -> dict[str, dict]:
    found = {}
    for row in text.splitlines():
        parts = row.split("|", 6)
        if len(parts) != 7:
            continue
        name, cid, status, started, restarts, networks, health_json = parts
        try:
            state = json.loads(health_json) if health_json.strip() else None
        except json.JSONDecodeError:
            state = None
        found[name.lstrip("/")] = {
            "id": cid,
            "status": status,
            "started": started,
            "restarts": int(restarts or 0),
            "networks": networks.split(),
            "health": state,
        }
    return found


# -- the checks ---------------------------------------------------------------------


def network_findings(d: Deployment, containers: dict, shared_exists: bool) -> list[Finding]:
    shared = d.host.shared_network
    if not shared_exists:
        # Creating the network alone fixes nothing: the app's containers must join it.
        joins = [
            ["docker", "network", "connect", shared, s.container]
            for s in d.proxied
            if s.container in containers
        ]
        return [
            Finding(
                "problem",
                shared,
                f"the shared network {shared} does not exist, so "
                "nginx reaches no app (502 Bad Gateway)",
                f"fab doctor {d.app_name} {d.env} --fix (creates it and connects "
                f"{d.name}'s proxied containers), or fab bootstrap {d.host_name}",
                line(["docker", "network", "create", shared], *joins),
            )
        ]
    findings = []
    for service in d.proxied:
        state = containers.get(service.container)
        if state is not None and shared not in state["networks"]:
            findings.append(
                Finding(
                    "problem",
                    service.container,
                    f"{service.container} is not on {shared}: nginx answers 502 on port "
                    f"{service.publish}",
                    f"fab doctor {d.app_name} {d.env} --fix (docker network connect {shared} "
                    f"{service.container}); a redeploy also fixes it",
                    line(["docker", "network", "connect", shared, service.container]),
                )
            )
    return findings


def health_findings(
    target: Target, d: Deployment, containers: dict, now: datetime | None
) -> list[Finding]:
    findings = []
    for service in d.services:
        state = containers.get(service.container)
        if state is None:
            findings.append(
                Finding(
                    "problem",
                    service.container,
                    "the container does not exist",
                    f"fab deploy {d.app_name} {d.env}",
                )
            )
            continue
        if state["status"] != "running" or (state["health"] or {}).get("Status") == "unhealthy":
            findings.append(_unhealthy(target, d, service.container, state))
            continue
        slow = _slow_start(service, state, now)
        if slow:
            findings.append(slow)
    return findings


def _unhealthy(target: Target, d: Deployment, name: str, state: dict) -> Finding:
    probes = [
        f"{p.get('ExitCode')}: {(p.get('Output') or '').strip()[:200]}"
        for p in ((state["health"] or {}).get("Log") or [])[-3:]
    ]
    logs = target.run(line(["docker", "logs", "--tail", "20", name]) + " 2>&1", check=False)
    what = state["status"] if state["status"] != "running" else "unhealthy"
    detail = "\n      ".join(
        [
            "last health probes:",
            *probes,
            "last log lines:",
            *logs.stdout.strip().splitlines()[-20:],
        ]
    )
    return Finding(
        "problem",
        name,
        f"{name} is {what} (restarts: {state['restarts']})\n      {detail}",
        f"read the lines above; check the secrets (fab secrets.check {d.app_name} "
        f"{d.env}) and fab logs {d.app_name} {d.env}; then redeploy",
    )


def _slow_start(service, state: dict, now: datetime | None) -> Finding | None:
    """A container that passed its first probe after its start_period, or is still starting."""
    spec, state_health = service.health, state["health"]
    if spec is None or not state_health:
        return None
    started = _time(state["started"])
    if started is None:
        return None
    log = state_health.get("Log") or []
    failed_before = any(p.get("ExitCode") != 0 for p in log)
    first_ok = next((_time(p.get("Start", "")) for p in log if p.get("ExitCode") == 0), None)
    if state_health.get("Status") == "starting" and now is not None:
        took = (now - started).total_seconds()
    elif failed_before and first_ok is not None:
        took = (first_ok - started).total_seconds()
    else:
        return None
    if took <= spec.start_period + spec.interval:
        return None
    suggested = int(math.ceil(took * 1.5 / 10) * 10)
    return Finding(
        "warning",
        service.container,
        f"{service.container} took {took:.0f} s to pass its health check, longer than its "
        f"start_period of {spec.start_period} s; deploys may fail at the health step",
        f"raise health.start_period of service {service.name} to about {suggested} in hosts.toml",
    )


def upstream_findings(inventory: Inventory, d: Deployment, conf: tuple[int, str]) -> list[Finding]:
    expected = {
        s.container: s.port
        for env in d.app.envs
        for s in inventory.deployment(d.app_name, env).proxied
    }
    if not expected:
        return []
    rc, text = conf
    if rc != 0:
        return [
            Finding(
                "problem",
                str(d.nginx_conf),
                "the app's nginx conf is missing, so nginx does not publish it",
                f"fab deploy {d.app_name} {d.env}",
            )
        ]
    findings = []
    named = {m.group(1): int(m.group(2)) for m in UPSTREAM.finditer(text)}
    for name, port in sorted(named.items()):
        if name not in expected:
            findings.append(
                Finding(
                    "problem",
                    str(d.nginx_conf),
                    f"nginx upstream {name}:{port} matches no container of {d.app_name} "
                    f"(its containers: {', '.join(sorted(expected))}); nginx cannot resolve it",
                    f"redeploy to render the conf from the inventory (fab diff {d.app_name} "
                    f"{d.env} shows it), or correct container = in hosts.toml",
                )
            )
        elif expected[name] != port:
            findings.append(
                Finding(
                    "problem",
                    str(d.nginx_conf),
                    f"nginx sends {name} traffic to port {port}, "
                    f"the inventory says {expected[name]}",
                    f"fab deploy {d.app_name} {d.env} renders it again",
                )
            )
    return findings


def headroom_findings(
    inventory: Inventory, d: Deployment, raw: dict, containers: dict
) -> list[Finding]:
    findings = []
    facts = probe.interpret({"disk": raw.get("disk", (1, ""))}, d)
    if facts.free_mb is not None and facts.free_mb < d.host.min_free_mb:
        findings.append(
            Finding(
                "problem",
                "disk",
                f"only {facts.free_mb} MB free under {facts.docker_root}; "
                f"deploys need {d.host.min_free_mb} MB (hosts.{d.host_name}.min_free_mb)",
                "docker system df; docker image prune; fab backup.all prunes old backups",
            )
        )
    meminfo = dict(re.findall(r"^(\w+):\s+(\d+) kB", raw.get("meminfo", (1, ""))[1], re.M))
    total, available = (
        int(meminfo.get("MemTotal", 0)) // 1024,
        int(meminfo.get("MemAvailable", 0)) // 1024,
    )
    limits = sum(
        s.memory_mb
        for x in inventory.deployments()
        if x.host_name == d.host_name
        for s in x.services
    )
    if total and available < total * 0.1:
        findings.append(
            Finding(
                "warning",
                "memory",
                f"only {available} MB of {total} MB memory available on the host",
                "lower memory limits or stop an unused deployment",
            )
        )
    if total and limits > total:
        findings.append(
            Finding(
                "warning",
                "memory",
                f"the memory limits of the inventory add "
                f"up to {limits} MB, more than the host's {total} MB",
                f"lower some limits or correct hosts.{d.host_name}.memory "
                f"({memory_mb(d.host.memory)} MB)",
            )
        )
    used = _memory(raw.get("memory", (1, ""))[1])
    for service in d.services:
        state = containers.get(service.container)
        mb = used.get(state["id"]) if state else None
        if mb is not None and mb > 0.9 * service.memory_mb:
            findings.append(
                Finding(
                    "warning",
                    service.container,
                    f"{service.container} uses {mb:.0f} MB of its "
                    f"{service.memory_mb} MB limit; it may be killed when it grows",
                    f"raise memory of service {service.name} in hosts.toml, then redeploy",
                )
            )
    return findings


def report(findings: list[Finding]) -> str:
    if not findings:
        return "no problems found"
    rows = []
    for f in findings:
        mark = "FIXED" if f.fixed else f.level.upper()
        rows.append(f"{mark:<8} {f.subject}: {f.message}\n         fix: {f.fix}")
    return "\n".join(rows)
