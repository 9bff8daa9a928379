"""The operator tasks as functions for runbooks: each loads, connects, acts and closes.

    from fabfile import operate
    rows = operate.status("quickpulse")
    operate.backup("quickpulse", "prod")

Each raises an ``OpsfabError`` subclass on failure; none prints a secret value.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime

from . import backup as backup_mod
from . import bootstrap as bootstrap_mod
from . import doctor as doctor_mod
from . import secretsync as secrets_mod
from . import status as status_mod
from .deploy import actor, lock_line, take_lock
from .errors import OpsfabError, UsageError
from .inventory import Inventory, load
from .target import Target, connect, line


def _inventory(inventory: Inventory | None) -> Inventory:
    return inventory or load()


def target_for(inventory: Inventory, host_name: str) -> Target:
    return connect(host_name, inventory.host(host_name), inventory.path.parent)


def status(
    app: str | None = None, env: str | None = None, *, inventory: Inventory | None = None
) -> dict[str, list[status_mod.Row]]:
    """{host: rows}: one round trip per host."""
    inv = _inventory(inventory)
    deployments = status_mod.selected(inv, app, env)
    hosts = list(dict.fromkeys(d.host_name for d in deployments)) or list(inv.hosts)
    result = {}
    for host_name in hosts:
        mine = [d for d in deployments if d.host_name == host_name]
        with target_for(inv, host_name) as target:
            result[host_name] = status_mod.status(target, inv, mine, with_infra=app is None)
    return result


def logs(
    app: str,
    env: str,
    *,
    service: str | None = None,
    tail: int = 50,
    follow: bool = False,
    inventory: Inventory | None = None,
) -> int:
    """The logs on stdout, secret values masked; returns compose's exit status.

    ``follow`` streams as the lines come, which leaves no chance to mask them."""
    inv = _inventory(inventory)
    d = inv.deployment(app, env)
    command = status_mod.logs_line(d, service, tail, follow)
    with target_for(inv, d.host_name) as target:
        if follow:
            return target.run(command, stream=True, check=False).exited
        secrets_mod.mask_host_secrets(target, d)
        result = target.run(command + " 2>&1", check=False)
        sys.stdout.write(result.stdout)
        return result.exited


def secrets_check(app: str, env: str, *, inventory: Inventory | None = None) -> secrets_mod.Change:
    inv = _inventory(inventory)
    d = secrets_mod.check_names(app, env, inv)
    with target_for(inv, d.host_name) as target:
        return secrets_mod.check(target, inv, d)


def secrets_push(app: str, env: str, *, inventory: Inventory | None = None) -> secrets_mod.Change:
    inv = _inventory(inventory)
    d = secrets_mod.check_names(app, env, inv)
    with target_for(inv, d.host_name) as target:
        return secrets_mod.push(target, inv, d)


def backup(
    app: str, env: str, *, kind: str = "manual", inventory: Inventory | None = None
) -> backup_mod.Result:
    inv = _inventory(inventory)
    d = inv.deployment(app, env)
    with target_for(inv, d.host_name) as target:
        return backup_mod.backup(target, inv, d, kind)


def backup_all(
    kind: str, *, inventory: Inventory | None = None, report: Callable[[str], None] = print
):
    inv = _inventory(inventory)
    targets: dict[str, Target] = {}

    def target(host_name: str) -> Target:
        if host_name not in targets:
            targets[host_name] = target_for(inv, host_name)
        return targets[host_name]

    try:
        return backup_mod.backup_all(target, inv, kind, report)
    finally:
        for t in targets.values():
            t.close()


def backups(app: str, env: str, *, inventory: Inventory | None = None):
    inv = _inventory(inventory)
    d = inv.deployment(app, env)
    with target_for(inv, d.host_name) as target:
        return backup_mod.list_sets(target, d)


def restore(
    app: str,
    env: str,
    set_id: str,
    *,
    confirm: bool = False,
    inventory: Inventory | None = None,
    report: Callable[[str], None] = print,
) -> list[str]:
    """Put backup set SET_ID back; without ``confirm`` only shows what it would do."""
    inv = _inventory(inventory)
    d = inv.deployment(app, env)
    with target_for(inv, d.host_name) as target:
        kind, files = backup_mod.find_set(target, d, set_id)
        set_id = files[0].split(".", 1)[0]
        commands = backup_mod.restore_plan(d, kind, set_id, files)
        if not confirm:
            report(f"restore {set_id} ({kind}) into {d.name} would run:")
            for command in commands:
                report(f"  $ {command}")
            raise UsageError(
                f"restore of {d.name} not confirmed: it replaces the live data",
                f"fab restore {app} {env} {set_id} --confirm",
            )
        started = datetime.now(UTC)
        take_lock(target, d, lock_line(d, f"restore-{set_id}", actor(), started))
        result, done = "failed", 0
        start = commands[-1]  # `docker start` of every container of the deployment
        try:
            for command in commands:
                report(f"  $ {command}")
                target.run(
                    command,
                    fix=f"{done} of {len(commands)} restore commands ran; the containers were "
                    f"started again; fix the cause, then run the restore again",
                )
                done += 1
            result = "ok"
        finally:
            if result != "ok":  # never leave the app stopped, whatever failed
                target.run(start, check=False)
            record = {
                "time": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "action": "restore",
                "app": app,
                "env": env,
                "host": d.host_name,
                "who": actor(),
                "backup": set_id,
                "result": result,
            }
            append = line(["printf", "%s\\n", json.dumps(record, sort_keys=True)])
            target.run(
                append
                + " >> "
                + line([str(d.deploy_log)])
                + " ; "
                + line(["rm", "-rf", "--", str(d.lock_dir)]),
                check=False,
            )
    return files


def doctor(
    app: str, env: str, *, fix: bool = False, inventory: Inventory | None = None
) -> list[doctor_mod.Finding]:
    inv = _inventory(inventory)
    d = inv.deployment(app, env)
    with target_for(inv, d.host_name) as target:
        secrets_mod.mask_host_secrets(target, d)  # doctor prints container log lines
        findings = doctor_mod.examine(target, inv, d)
        if fix:
            doctor_mod.fix(target, findings)
    return findings


def bootstrap(
    host_name: str, *, dry_run: bool = False, inventory: Inventory | None = None
) -> list[bootstrap_mod.Change]:
    inv = _inventory(inventory)
    inv.host(host_name)
    with target_for(inv, host_name) as target:
        changes = bootstrap_mod.plan(target, inv, host_name)
        if not dry_run:
            bootstrap_mod.apply(target, changes)
    return changes


__all__ = [
    "OpsfabError",
    "status",
    "logs",
    "secrets_check",
    "secrets_push",
    "backup",
    "backup_all",
    "backups",
    "restore",
    "doctor",
    "bootstrap",
]
