"""`fab rollback`: go back to what ran before the last deploy, and verify it.

The deploy keeps the previous configs as ``.prev`` files, the previous commit as
``refs/opsfab/rollback`` and the previous images as ``:rollback`` tags. A rollback
swaps each of those with the current one, so a second rollback undoes the first.
"""

from __future__ import annotations

import time

from . import configs, health, probe
from .deploy import (
    CURRENT_REF,
    ROLLBACK_REF,
    Deploy,
    Options,
    _short,
    lock_error,
    mask_secrets,
    plan_lock,
    plan_record,
    reload_nginx,
    take_lock,
)
from .errors import OpsfabError
from .inventory import Inventory
from .output import Reporter
from .target import Target, line

SWAP_REF = "refs/opsfab/rollback-swap"


def rollback(
    inventory: Inventory,
    app: str,
    env: str,
    target: Target,
    reporter: Reporter | None = None,
    actor: str | None = None,
) -> dict:
    out = reporter or Reporter()
    d = inventory.deployment(app, env)
    run = Deploy(inventory, d, target, Options(actor=actor), out)
    run.facts = facts = probe.gather(target, d, run.file_paths)
    mask_secrets(target, facts)
    if facts.lock_holder is not None:
        raise lock_error(d, facts.lock_holder)
    running = run.running_commit
    missing = [
        s.rollback_image for s in d.built_services if facts.rollback_images.get(s.image) is None
    ]
    missing += [s.container for s in d.built_services if s.container not in facts.containers]
    fix = f"deploy a known good commit instead: fab deploy {app} {env} --ref <sha>"
    if facts.rollback_commit is None or missing:
        detail = f" (missing {', '.join(missing)})" if missing else " (no rollback point yet)"
        raise OpsfabError(f"{d.name} has nothing to roll back to{detail}", fix)
    same = facts.rollback_commit == running and all(
        facts.rollback_images.get(s.image) == facts.containers[s.container].image
        for s in d.built_services
    )
    if same:
        raise OpsfabError(
            f"{d.name} has nothing to roll back to: the rollback point is what runs now "
            f"({_short(running)})",
            fix,
        )
    out.say(
        f"rollback {d.name} on {d.host_name}: {_short(running)} -> {_short(facts.rollback_commit)}"
    )
    started = time.perf_counter()
    take_lock(target, d, plan_lock(run)[0].line)
    result, error = "failed", None
    try:
        run.changed = run.conf_paths
        target.run(configs.swap_line(run.file_paths))
        repo = str(d.repo_dir)
        target.run(
            line(
                ["git", "-C", repo, "update-ref", SWAP_REF, running],
                ["git", "-C", repo, "reset", "--hard", ROLLBACK_REF, "--"],
                ["git", "-C", repo, "update-ref", ROLLBACK_REF, SWAP_REF],
                ["git", "-C", repo, "update-ref", "-d", SWAP_REF],
                ["git", "-C", repo, "update-ref", CURRENT_REF, "HEAD"],
            )
        )
        for s in d.built_services:
            swap = s.image.rsplit(":", 1)[0] + ":swap"
            target.run(
                line(
                    ["docker", "image", "tag", facts.containers[s.container].image, swap],
                    ["docker", "image", "tag", s.rollback_image, s.image],
                    ["docker", "image", "tag", swap, s.rollback_image],
                    ["docker", "image", "rm", swap],
                )
            )
        if reload_nginx(run) is not None:  # keep serving the configs nginx accepts
            target.run(configs.swap_line(run.conf_paths))
        target.run(line([*d.compose, "up", "-d", "--no-build", "--remove-orphans"]))
        states = health.wait(target, d, facts.containers)
        head = target.run(line(["git", "-C", repo, "rev-parse", "HEAD"])).stdout.strip()
        run.new_head = head
        result = "ok"
        out.say(
            f"rolled back {d.name} to {_short(head)}: "
            + ", ".join(f"{c} {states[c].health}" for c in run.containers)
        )
    except OpsfabError as exc:
        error = exc
        raise
    finally:
        run.timings["rollback"] = round(time.perf_counter() - started, 3)
        record = run.record(
            result, None if error is None else "rollback", error.message if error else ""
        )
        record["action"] = "rollback"
        run.last_record = record
        for action in plan_record(run):
            try:
                target.run(action.line)
            except OpsfabError as exc:
                out.say(f"record: {exc.message}")
    return record
