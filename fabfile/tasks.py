"""The command line: each task parses its arguments and calls a function of ``api``.

Errors become one message and an exit code here, at the edge; set OPSFAB_DEBUG=1 for
the traceback.
"""

from __future__ import annotations

import functools
import json as _json
import os
import sys
from pathlib import Path

from fabric import Task, task
from invoke.exceptions import Exit
from invoke.parser import Argument

from . import api
from .errors import OpsfabError, UsageError
from .output import Reporter
from .target import hold_interrupts


def reported(func):
    """Turn an OpsfabError into its message on stderr and a non-zero exit."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except OpsfabError as exc:
            if os.environ.get("OPSFAB_DEBUG"):
                raise
            print(f"error: {exc.render()}", file=sys.stderr)
            raise Exit(code=exc.exit_code) from None

    return wrapper


@task(
    help={
        "ref": "deploy this commit, tag or origin/<branch> instead of the env's branch",
        "dry-run": "print every command each step would run; touch nothing",
        "json": "print the deploy record as JSON on stdout",
    }
)
@reported
def deploy(c, app, env, ref=None, dry_run=False, json=False):
    """Deploy APP ENV: lock, back up, build, check health, roll back on failure."""
    reporter = Reporter(stream=sys.stderr if json else sys.stdout)
    # Ctrl-C, or a CD job cancelled with SIGTERM, rolls back instead of dying mid-step.
    if not dry_run:
        hold_interrupts()
    try:
        outcome = api.deploy(app, env, ref=ref, dry_run=dry_run, reporter=reporter)
    except OpsfabError as exc:
        if json and getattr(exc, "record", None):
            print(_json.dumps(exc.record, sort_keys=True))
        raise
    if json:
        print(_json.dumps(outcome.record, sort_keys=True))


@task
@reported
def rollback(c, app, env):
    """Go back to what ran before the last deploy of APP ENV, and check its health."""
    api.rollback(app, env)


@task(help={"json": "print the container states as JSON"})
@reported
def health(c, app, env, json=False):
    """Show the health of every container of APP ENV; exit non-zero unless all healthy."""
    try:
        states = api.health(app, env)
    except OpsfabError:
        raise
    if json:
        print(_json.dumps({k: v.__dict__ for k, v in states.items()}, sort_keys=True))
        return
    for name, state in states.items():
        print(f"{name:<28} {state.status:<10} {state.health:<10} started {state.started_at[:19]}")


@task(help={"limit": "how many records (default 20)", "json": "print the records as JSON lines"})
@reported
def history(c, app, env, limit=20, json=False):
    """The deploy log of APP ENV, newest first."""
    records = api.history(app, env, limit=int(limit))
    if json:
        for record in records:
            print(_json.dumps(record, sort_keys=True))
        return
    if not records:
        print(f"no deploys of {app} {env} in the log")
    for r in records:
        frm = (r.get("from") or {}).get("commit") or ""
        to = (r.get("to") or {}).get("commit") or ""
        print(
            f"{r.get('time', '?'):<21} {r.get('action', '?'):<9} {r.get('result', '?'):<12} "
            f"{frm[:10] or '-':<10} -> {to[:10] or '-':<10} {r.get('seconds', 0):>7.1f} s  "
            f"{r.get('who', '?')}"
            + (f"  ({r['failed_step']}: {r['error']})" if r.get("failed_step") else "")
        )


@task
@reported
def unlock(c, app, env):
    """Remove the lock of APP ENV left by a deploy that died (says who held it)."""
    holder = api.unlock(app, env)
    if holder:
        print(f"released the lock of {app}-{env}, held by {holder}")
    else:
        print(f"the lock of {app}-{env} was free; nothing to release")


class _PositionalUnlessAll(Argument):
    """APP and ENV of render: required positionals, unless --all was given."""

    all_flag: Argument

    @property
    def value(self):
        if self._value is None and self.all_flag.value:
            return ""
        return self._value if self._value is not None else self.default

    @value.setter
    def value(self, arg):
        self.set_value(arg, cast=True)


class _RenderTask(Task):
    # invoke has no optional positionals; this lets `fab render --all` go without them.
    def get_arguments(self, ignore_unknown_help=None):
        args = super().get_arguments(ignore_unknown_help)
        flag = next(a for a in args if a.name == "all")
        for arg in args:
            if arg.name in ("app", "env"):
                arg.__class__ = _PositionalUnlessAll
                arg.all_flag = flag
        return args


@task(
    klass=_RenderTask,
    help={
        "out": "folder to write into (default: rendered/)",
        "all": "every deployment and the infrastructure: the whole ops tree",
    },
)
@reported
def render(c, app, env, out="rendered", all=False):  # all: the --all flag
    """Render APP ENV's files (or --all) into a local folder laid out like the ops root."""
    if all:
        from .tree import render_all_to

        paths = render_all_to(Path(out))
    elif app and env:
        paths = api.render(app, env, Path(out))
    else:
        raise UsageError("give APP ENV, or --all", "fab render quickpulse prod; fab render --all")
    for path in paths:
        print(path)
