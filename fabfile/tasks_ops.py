"""Operator tasks: status, logs, secrets, backups, restore, doctor, bootstrap.

Each parses its arguments and calls ``fabfile.operate``; errors become a message and an
exit code through ``reported``.
"""

from __future__ import annotations

import json as _json

from fabric import task
from invoke import Collection
from invoke.exceptions import Exit

from . import operate
from . import status as status_mod
from .backup import describe
from .errors import UsageError
from .tasks import reported


@task(
    help={
        "app": "only this app",
        "env": "only this environment of --app",
        "json": "print the rows as JSON (one object per host)",
    }
)
@reported
def status(c, app=None, env=None, json=False):
    """One table per host: state, health, uptime, memory, commit; one round trip each.

    Invoke has no optional positional arguments, so the filter is --app and --env.
    """
    if env is not None and app is None:
        raise UsageError("--env needs --app", "fab status --app APP --env ENV")
    hosts = operate.status(app, env)
    if json:
        print(
            _json.dumps({h: status_mod.as_json(rows) for h, rows in hosts.items()}, sort_keys=True)
        )
        return
    for host, rows in hosts.items():
        if len(hosts) > 1:
            print(f"[{host}]")
        print(status_mod.table(rows))


@task(
    help={
        "service": "only this service of the app",
        "tail": "lines to show (default 50)",
        "follow": "keep printing new lines until Ctrl-C",
    }
)
@reported
def logs(c, app, env, service=None, tail=50, follow=False):
    """The logs of APP ENV through docker compose."""
    code = operate.logs(app, env, service=service, tail=int(tail), follow=follow)
    if code not in (0, 130):
        raise Exit(code=code)


@task(name="check")
@reported
def secrets_check(c, app, env):
    """Which secret keys and files a push of APP ENV would add, remove or change."""
    _print_change(app, env, operate.secrets_check(app, env), "would change")


@task(name="push")
@reported
def secrets_push(c, app, env):
    """Write secrets/APP/ENV.env and the Docker secret files to the host (mode 600)."""
    _print_change(app, env, operate.secrets_push(app, env), "written")


def _print_change(app, env, change, verb):
    if not change.any:
        print(f"secrets of {app} {env}: no changes")
        return
    print(f"secrets of {app} {env}: {verb}")
    for row in change.lines():
        print(row)


@task(default=True, help={"kind": "manual (default), daily or weekly: the folder and retention"})
@reported
def backup(c, app, env, kind="manual"):
    """Back up APP ENV with its recipe and verify it before it counts."""
    print(describe(operate.backup(app, env, kind=kind)))


@task(name="all", help={"kind": "daily or weekly"})
@reported
def backup_all(c, kind="daily"):
    """Back up every deployment the schedule covers, then apply its retention."""
    done, failed = operate.backup_all(kind)
    if failed:
        raise Exit(f"{len(failed)} backup(s) failed: {', '.join(n for n, _ in failed)}", code=8)
    if not done:
        print("no deployment has a backup recipe for the scheduled environments")


@task(name="list")
@reported
def backup_list(c, app, env):
    """The backup sets of APP ENV on its host, newest first."""
    sets = operate.backups(app, env)
    if not sets:
        print(f"no backups of {app} {env}")
    for kind, set_id, files in sets:
        print(f"{set_id:<48} {kind:<7} {len(files)} file(s)")


@task(help={"confirm": "really replace the live data (without it: show the plan only)"})
@reported
def restore(c, app, env, backup, confirm=False):
    """Put backup set BACKUP of APP ENV back; stops the app's containers meanwhile."""
    files = operate.restore(app, env, backup, confirm=confirm)
    print(f"restored {', '.join(files)} into {app}-{env}")


@task(
    help={
        "fix": "apply the safe fixes (connect containers to the shared network)",
        "json": "print the findings as JSON",
    }
)
@reported
def doctor(c, app, env, fix=False, json=False):
    """Check APP ENV against the troubleshooting table; say what to do about each finding."""
    from .doctor import report

    findings = operate.doctor(app, env, fix=fix)
    if json:
        print(_json.dumps([f.as_dict() for f in findings], sort_keys=True))
    else:
        print(report(findings))
    if any(f.level == "problem" and not f.fixed for f in findings):
        raise Exit(code=9)


@task(help={"dry-run": "show what would change; change nothing"})
@reported
def bootstrap(c, host, dry_run=False):
    """Prepare HOST for deploys: folders and modes, networks, volumes, clones."""
    changes = operate.bootstrap(host, dry_run=dry_run)
    if not changes:
        print(f"{host}: no changes")
        return
    for change in changes:
        print(("would " if dry_run else "") + change.what)


secrets = Collection("secrets", secrets_push, secrets_check)
backups = Collection("backup", backup, backup_all, backup_list)
