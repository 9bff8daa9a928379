"""Tasks for the whole server: check, ports, diff, infra.deploy and infra.diff.

Like ``tasks``, each parses its arguments and calls plain functions (``check``,
``ports``, ``tree``, ``infra``) that a runbook can call too.
"""

from __future__ import annotations

import sys
from pathlib import Path

from fabric import task
from invoke.exceptions import Exit

from . import check as check_mod
from . import inventory as inventory_mod
from . import ports as ports_mod
from .infra import deploy as deploy_infra
from .infra import diff as diff_files
from .infra import require_infra
from .output import Reporter
from .render import render_deployment
from .target import connect
from .tasks import reported
from .tree import render_infra


@task(help={"tree": "also lint the conf.d files of this folder (a rendered or copied tree)"})
def check(c, tree=None):
    """Lint the inventory offline: one line per problem with its key and fix."""
    report = check_mod.run(None, Path(tree) if tree else None)
    for text in report.lines():
        print(text)
    if not report.ok:
        print(f"{len(report.problems)} problem(s)", file=sys.stderr)
        raise Exit(code=2)
    print("no problems")


@task
@reported
def ports(c):
    """Print the port map derived from the inventory."""
    for text in ports_mod.table(inventory_mod.load()):
        print(text)


@task
@reported
def diff(c, app, env):
    """Show what a deploy of APP ENV would change in its files on the host."""
    inventory = inventory_mod.load()
    deployment = inventory.deployment(app, env)
    files = render_deployment(inventory, deployment)
    _print_diff(inventory, deployment.host_name, files)


@task(name="deploy", help={"dry-run": "print the commands of each step; touch nothing"})
@reported
def infra_deploy(c, dry_run=False):
    """Push the infrastructure's configs, reload nginx after nginx -t, start it all."""
    inventory = inventory_mod.load()
    infra, host = require_infra(inventory)
    if dry_run:
        deploy_infra(inventory, None, Reporter(), dry_run=True)
        return
    with connect(infra.host, host, inventory.path.parent) as target:
        changed = deploy_infra(inventory, target, Reporter())
    print(f"infrastructure of {infra.host} is up; {len(changed)} file(s) changed")


@task(name="diff")
@reported
def infra_diff(c):
    """Show what infra.deploy would change in the infrastructure's files on the host."""
    inventory = inventory_mod.load()
    infra, _ = require_infra(inventory)
    _print_diff(inventory, infra.host, render_infra(inventory, with_app_nginx=True))


def _print_diff(inventory, host_name: str, files) -> None:
    with connect(host_name, inventory.host(host_name), inventory.path.parent) as target:
        lines = diff_files(target, files)
    if not lines:
        print(f"no changes: {len(files)} file(s) on {host_name} match the inventory")
        return
    for text in lines:
        print(text)
