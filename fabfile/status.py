"""`fab status` and `fab logs`: what runs on a host, read in one round trip.

Status reads every container of the selected deployments (and the infrastructure's)
with one ``docker container inspect`` using explicit ``--format`` fields (never the
environment, which holds secrets), memory use from the containers' cgroups (instant,
unlike ``docker stats``), each repository's HEAD and the tail of the deploy log, all
in one shell script sent once.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from . import probe
from .errors import UsageError
from .inventory import Deployment, Inventory
from .target import Target, line

INSPECT_FORMAT = (
    "{{.Name}}|{{.State.Status}}|"
    '{{if index .State "Health"}}{{.State.Health.Status}}{{else}}none{{end}}|'
    "{{.RestartCount}}|{{.State.ExitCode}}|{{.State.StartedAt}}|{{.HostConfig.Memory}}|{{.Id}}"
)
# Memory in use per running container, as docker stats counts it (usage minus the
# inactive page cache), for cgroup v2 (systemd or cgroupfs driver) and v1.
MEMORY_SCRIPT = r"""for id in $(docker ps -q --no-trunc); do
  for d in /sys/fs/cgroup/system.slice/docker-$id.scope /sys/fs/cgroup/docker/$id \
           /sys/fs/cgroup/memory/docker/$id /sys/fs/cgroup/memory/system.slice/docker-$id.scope; do
    if [ -r $d/memory.current ]; then
      echo "$id $(cat $d/memory.current) $(sed -n 's/^inactive_file //p' $d/memory.stat)"; break
    elif [ -r $d/memory.usage_in_bytes ]; then
      echo "$id $(cat $d/memory.usage_in_bytes) \
        $(sed -n 's/^total_inactive_file //p' $d/memory.stat)"; break
    fi
  done
done"""
LOG_LINES = 2000


@dataclass
class Row:
    """One container as status shows it."""

    deployment: str
    container: str
    state: str = "missing"
    health: str = "-"
    restarts: int = 0
    exit_code: int = 0
    started_at: str = ""
    uptime_s: int | None = None
    memory_mb: float | None = None
    limit_mb: int | None = None
    commit: str | None = None
    deployed_at: str | None = None
    last_result: str | None = None


def selected(inventory: Inventory, app: str | None, env: str | None) -> list[Deployment]:
    """APP ENV, every env of APP, or every deployment; names the inventory lacks refused."""
    if app is None:
        return inventory.deployments()
    if env is not None:
        return [inventory.deployment(app, env)]
    if app not in inventory.apps:
        inventory.deployment(app, "prod")  # raises UsageError listing the known apps
    return [inventory.deployment(app, e) for e in inventory.apps[app].envs]


def infra_containers(inventory: Inventory, host_name: str) -> list[str]:
    infra = inventory.infra
    names = [inventory.host(host_name).proxy_container]
    if infra is not None and infra.host == host_name:
        names += [s.container_name(n) for n, s in infra.services.items()]
    return list(dict.fromkeys(names))


def status_script(deployments: list[Deployment], extra: list[str]) -> str:
    """The one command status sends to a host."""
    return probe.script(status_sections(deployments, extra))


def status_sections(deployments: list[Deployment], extra: list[str]) -> list[tuple[str, str]]:
    containers = [s.container for d in deployments for s in d.services] + extra
    items = [
        ("now", line(["date", "-u", "+%Y-%m-%dT%H:%M:%SZ"])),
        (
            "inspect",
            line(["docker", "container", "inspect", "--format", INSPECT_FORMAT, *containers]),
        ),
        ("memory", MEMORY_SCRIPT),
    ]
    for d in deployments:
        items.append(
            (f"head {d.name}", line(["git", "-C", str(d.repo_dir), "log", "-1", "--format=%H"]))
        )
    if deployments:
        log = str(deployments[0].deploy_log)
        items.append(("log", line(["tail", "-n", str(LOG_LINES), log])))
    return items


def status(
    target: Target, inventory: Inventory, deployments: list[Deployment], with_infra: bool = True
) -> list[Row]:
    """Rows for the deployments (all on ``target``'s host), in one round trip."""
    host_name = deployments[0].host_name if deployments else target.name
    extra = infra_containers(inventory, host_name) if with_infra else []
    result = target.run(status_script(deployments, extra), check=False)
    return rows(probe.parse(result.stdout), deployments, extra)


def rows(
    raw: dict[str, tuple[int, str]], deployments: list[Deployment], extra: list[str]
) -> list[Row]:
    now = _time(raw.get("now", (1, ""))[1].strip()) or datetime.now(UTC)
    states = {}
    for text in raw.get("inspect", (1, ""))[1].splitlines():
        parts = text.split("|")
        if len(parts) == 8:
            states[parts[0].lstrip("/")] = parts
    memory = _memory(raw.get("memory", (1, ""))[1])
    last = _last_deploys(raw.get("log", (1, ""))[1])
    table = []
    for d in deployments:
        head = raw.get(f"head {d.name}", (1, ""))
        commit = head[1].strip() if head[0] == 0 and head[1].strip() else None
        record = last.get((d.app_name, d.env), {})
        for s in d.services:
            row = Row(
                d.name,
                s.container,
                commit=commit,
                deployed_at=record.get("time"),
                last_result=record.get("result"),
            )
            _fill(row, states.get(s.container), memory, now)
            table.append(row)
    for name in extra:
        if name in states or name not in {r.container for r in table}:
            row = Row("infra", name)
            _fill(row, states.get(name), memory, now)
            table.append(row)
    return table


def _fill(row: Row, parts: list[str] | None, memory: dict[str, float], now: datetime) -> None:
    if parts is None:
        return
    _, state, health, restarts, code, started, limit, cid = parts
    row.state, row.health = state, health
    row.restarts, row.exit_code = int(restarts or 0), int(code or 0)
    row.started_at = started
    row.limit_mb = int(limit) // 1048576 if limit.isdigit() and int(limit) else None
    begun = _time(started)
    if state == "running" and begun:
        row.uptime_s = max(0, int((now - begun).total_seconds()))
        row.memory_mb = memory.get(cid)


def _memory(text: str) -> dict[str, float]:
    used = {}
    for row in text.splitlines():
        parts = row.split()
        if len(parts) >= 2 and parts[1].isdigit():
            inactive = int(parts[2]) if len(parts) > 2 and parts[2].isdigit() else 0
            used[parts[0]] = round((int(parts[1]) - inactive) / 1048576, 1)
    return used


def _last_deploys(text: str) -> dict[tuple[str, str], dict]:
    """The newest deploy or rollback record of each deployment in the log's tail."""
    last: dict[tuple[str, str], dict] = {}
    for row in text.splitlines():
        try:
            record = json.loads(row)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and record.get("action") in ("deploy", "rollback"):
            last[(record.get("app"), record.get("env"))] = record
    return last


def _time(text: str) -> datetime | None:
    """Docker's RFC 3339 times (nanoseconds and all) as aware datetimes."""
    if not text or text.startswith("0001-"):
        return None
    text = text.rstrip("Z").split(".")[0]
    try:
        return datetime.fromisoformat(text[:19]).replace(tzinfo=UTC)
    except ValueError:
        return None


# -- showing it ---------------------------------------------------------------------


def table(rows_: list[Row]) -> str:
    header = ("DEPLOYMENT", "CONTAINER", "STATE", "HEALTH", "UP", "MEMORY", "COMMIT", "DEPLOYED")
    body = [header] + [
        (
            r.deployment,
            r.container,
            r.state if r.state != "exited" else f"exited({r.exit_code})",
            r.health if r.state != "missing" else "-",
            duration(r.uptime_s) + (f" r{r.restarts}" if r.restarts else ""),
            memory_text(r),
            (r.commit or "-")[:12],
            (
                (r.deployed_at or "-").replace("T", " ")[:16]
                + (f" {r.last_result}" if r.last_result and r.last_result != "ok" else "")
            ),
        )
        for r in rows_
    ]
    widths = [max(len(row[i]) for row in body) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in body
    )


def memory_text(row: Row) -> str:
    if row.memory_mb is None:
        return f"-/{row.limit_mb} MB" if row.limit_mb else "-"
    if not row.limit_mb:
        return f"{row.memory_mb:.0f} MB"
    return f"{row.memory_mb:.0f}/{row.limit_mb} MB {100 * row.memory_mb / row.limit_mb:.0f}%"


def duration(seconds: int | None) -> str:
    if seconds is None:
        return "-"
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {secs}s" if minutes else f"{secs}s"


def as_json(rows_: list[Row]) -> list[dict]:
    return [asdict(r) for r in rows_]


# -- logs ---------------------------------------------------------------------------


def logs_line(
    d: Deployment, service: str | None = None, tail: int = 50, follow: bool = False
) -> str:
    """``docker compose logs`` of the deployment (or one service), project explicit."""
    names = [s.name for s in d.services]
    if service is not None and service not in names:
        raise UsageError(
            f"{d.app_name} has no service {service!r}", f"use one of: {', '.join(names)}"
        )
    if int(tail) < 0:
        raise UsageError(f"--tail {tail}: give a number of lines, 0 or more", "--tail 50")
    argv = [*d.compose, "logs", "--no-color", "--tail", str(int(tail))]
    if follow:
        argv.append("--follow")
    if service is not None:
        argv.append(service)
    return line(argv)
