"""The functions behind the tasks, for runbooks: each opens what it needs and closes it.

    from fabfile import api
    api.deploy("quickpulse", "dev")
    api.health("quickpulse", "dev")

Each raises an ``OpsfabError`` subclass on failure; nothing here calls ``sys.exit``.
"""

from __future__ import annotations

import json
from pathlib import Path

from . import health as health_mod
from . import inventory as inventory_mod
from . import probe
from .deploy import Options, Outcome
from .deploy import deploy as run_deploy
from .errors import OpsfabError
from .inventory import Inventory
from .output import Reporter
from .render import RenderedFile, render_deployment, write_tree
from .rollback import rollback as run_rollback
from .target import Target, connect, line


def load(path: str | Path | None = None) -> Inventory:
    return inventory_mod.load(path)


def target_for(inventory: Inventory, host_name: str) -> Target:
    return connect(host_name, inventory.host(host_name), inventory.path.parent)


def deploy(
    app: str,
    env: str,
    *,
    ref: str | None = None,
    dry_run: bool = False,
    inventory: Inventory | None = None,
    reporter: Reporter | None = None,
) -> Outcome:
    inv = inventory or load()
    d = inv.deployment(app, env)
    options = Options(ref=ref, dry_run=dry_run)
    if dry_run:
        return run_deploy(inv, app, env, None, options, reporter)
    with target_for(inv, d.host_name) as target:
        return run_deploy(inv, app, env, target, options, reporter)


def rollback(
    app: str, env: str, *, inventory: Inventory | None = None, reporter: Reporter | None = None
) -> dict:
    inv = inventory or load()
    d = inv.deployment(app, env)
    with target_for(inv, d.host_name) as target:
        return run_rollback(inv, app, env, target, reporter)


def health(
    app: str, env: str, *, inventory: Inventory | None = None
) -> dict[str, probe.ContainerState]:
    """The state of every container of APP ENV now; raises HealthError if one is not healthy."""
    inv = inventory or load()
    d = inv.deployment(app, env)
    with target_for(inv, d.host_name) as target:
        states = probe.container_states(target, [s.container for s in d.services])
    health_mod.check_now(states, d)
    return states


def history(
    app: str, env: str, *, limit: int = 20, inventory: Inventory | None = None
) -> list[dict]:
    """Deploy log records of APP ENV, newest first."""
    inv = inventory or load()
    d = inv.deployment(app, env)
    with target_for(inv, d.host_name) as target:
        result = target.run(line(["cat", str(d.deploy_log)]), check=False)
    records = []
    for text in result.stdout.splitlines():
        try:
            record = json.loads(text)
        except json.JSONDecodeError:
            continue
        if record.get("app") == app and record.get("env") == env:
            records.append(record)
    return list(reversed(records))[:limit]


def unlock(app: str, env: str, *, inventory: Inventory | None = None) -> str:
    """Remove a lock left by a deploy that died; returns who held it ('' if none)."""
    inv = inventory or load()
    d = inv.deployment(app, env)
    with target_for(inv, d.host_name) as target:
        holder = target.run(line(["cat", str(d.lock_dir / "holder")]), check=False)
        target.run(line(["rm", "-rf", "--", str(d.lock_dir)]))
    return holder.stdout.strip() if holder.ok else ""


def render(app: str, env: str, out: Path, *, inventory: Inventory | None = None) -> list[Path]:
    inv = inventory or load()
    d = inv.deployment(app, env)
    files: list[RenderedFile] = render_deployment(inv, d)
    return write_tree(files, out, d.ops_root)


# The operator tasks' functions, so that one import serves a runbook.
from .operate import (  # noqa: E402
    backup,
    backup_all,
    backups,
    bootstrap,
    doctor,
    logs,
    restore,
    secrets_check,
    secrets_push,
    status,
)

__all__ = [
    "OpsfabError",
    "backup",
    "backup_all",
    "backups",
    "bootstrap",
    "deploy",
    "doctor",
    "health",
    "history",
    "load",
    "logs",
    "render",
    "restore",
    "rollback",
    "secrets_check",
    "secrets_push",
    "status",
    "unlock",
]
