"""The deploy sequence: numbered steps, automatic rollback, a record of what happened.

Each step first *plans* its commands as data (``Action``s) from the deployment and the
facts read in preflight; the runner then executes them. A dry run prints the same plan
without connecting (facts unknown: conditional commands are shown with their
condition). Steps 6 to 9 (source, build, up, health) are the ones a failure of which
triggers the rollback; a failure before them changes nothing that needs undoing.
"""

from __future__ import annotations

import getpass
import hashlib
import io
import json
import os
import re
import secrets
import shlex
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from dotenv.parser import parse_stream

from . import backup, configs, health, probe, secretsync
from .errors import (
    DeployFailed,
    LockHeld,
    OpsfabError,
    PreflightError,
    RemoteCommandError,
    UsageError,
)
from .inventory import Deployment, Inventory
from .output import Reporter
from .render import RenderedFile, render_deployment
from .target import Result, Target, line

MIN_DOCKER = (20, 10)
MIN_COMPOSE = (2, 0)
REF = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/^~-]{0,199}$")
ROLLBACK_REF = probe.ROLLBACK_REF
CURRENT_REF = probe.CURRENT_REF
PREV_REF = (
    "refs/opsfab/rollback-prev"  # the rollback point before this deploy, restored on failure
)
LOCK_WRITE_FAILED = 70
MIN_OPS_FREE_MB = 100
ROLLBACK_STEPS = {"source", "build", "up", "health"}


@dataclass(frozen=True)
class Action:
    """One thing a step does on the host: a shell line, or an upload."""

    line: str
    when: str | None = None
    enabled: bool = True
    note: str | None = None
    upload: bytes | None = None

    def show(self) -> str:
        if self.upload is not None:
            return f"sftp put <{len(self.upload)} bytes: tar of the rendered files> {self.line}"
        return self.line


@dataclass
class Options:
    ref: str | None = None
    dry_run: bool = False
    actor: str | None = None


@dataclass
class Outcome:
    """What the deploy did; also the JSON line written to the deploy log."""

    record: dict
    ok: bool


@dataclass
class Step:
    name: str
    plan: Callable[[Deploy], list[Action]]
    run: Callable[[Deploy], str] | None = None


def deploy(
    inventory: Inventory,
    app: str,
    env: str,
    target: Target | None,
    options: Options | None = None,
    reporter: Reporter | None = None,
) -> Outcome:
    """Deploy APP ENV; raise ``OpsfabError`` (after rollback) when it did not succeed."""
    deployment = inventory.deployment(app, env)
    run = Deploy(inventory, deployment, target, options or Options(), reporter or Reporter())
    return run.dry_run() if run.options.dry_run else run.execute()


class Deploy:
    def __init__(
        self,
        inventory: Inventory,
        deployment: Deployment,
        target: Target | None,
        options: Options,
        reporter: Reporter,
    ) -> None:
        if options.ref is not None and not REF.match(options.ref):
            raise UsageError(
                f"--ref {options.ref!r} is not a git ref opsfab accepts",
                "give a commit sha, a tag or origin/<branch> (letters, digits, . _ / - ^ ~)",
            )
        self.inventory = inventory
        self.d = deployment
        self.target = target
        self.options = options
        self.out = reporter
        self.files: list[RenderedFile] = render_deployment(inventory, deployment)
        now = datetime.now(UTC)
        self.started = now
        self.id = now.strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)
        self.facts: probe.Facts | None = None
        self.reached: set[str] = set()
        self.changed: list[str] = []
        self.timings: dict[str, float] = {}
        self.new_head: str | None = None
        self.backups: list[str] = []
        self.restored: str = ""
        self.steps = [
            Step("preflight", plan_preflight, run_preflight),
            Step("lock", plan_lock, run_lock),
            Step("configs", plan_configs, run_configs),
            Step("remember", plan_remember),
            Step("backup", plan_backup, run_backup),
            Step("source", plan_source, run_source),
            Step("build", plan_build),
            Step("up", plan_up),
            Step("health", plan_health, run_health),
            Step("rollback", plan_rollback),
            Step("cleanup", plan_cleanup),
            Step("record", plan_record),
        ]

    # -- helpers shared by the steps ------------------------------------------------

    @property
    def known(self) -> bool:
        """Facts were read from the host (false in a dry run)."""
        return self.facts is not None

    def when(self, condition: Callable[[probe.Facts], bool]) -> bool:
        return condition(self.facts) if self.facts is not None else True

    def execute_actions(self, actions: list[Action]) -> None:
        assert self.target is not None
        for action in actions:
            if not action.enabled:
                continue
            if action.upload is not None:
                self.target.put(action.line, action.upload)
            else:
                self.target.run(action.line)

    @property
    def file_paths(self) -> list[str]:
        return [str(f.path) for f in self.files]

    @property
    def conf_paths(self) -> list[str]:
        return [p for p in self.file_paths if p.endswith(".conf")]

    @property
    def containers(self) -> list[str]:
        return [s.container for s in self.d.services]

    @property
    def can_roll_back(self) -> bool:
        """Something ran before: a clone, and a container of every built service."""
        facts = self.facts
        return (
            facts is not None
            and facts.repo_head is not None
            and all(s.container in facts.containers for s in self.d.built_services)
        )

    @property
    def running_commit(self) -> str | None:
        facts = self.facts
        return (facts.current_commit or facts.repo_head) if facts else None

    # -- the two ways to run ----------------------------------------------------------

    def dry_run(self) -> Outcome:
        d = self.d
        self.out.say(
            f"dry run: deploy {d.app_name} {d.env} to {d.host_name} "
            f"({d.host.user}@{d.host.address}); nothing is sent to the host"
        )
        total = len(self.steps)
        for number, step in enumerate(self.steps, 1):
            actions = step.plan(self)
            self.out.say(f"[{number:>2}/{total}] {step.name}")
            if not actions:
                self.out.say("        (nothing to do)")
            for action in actions:
                self.out.command(action.show(), action.when, action.note)
        return Outcome(self.record("dry-run", None, ""), True)

    def execute(self) -> Outcome:
        assert self.target is not None
        d, total = self.d, len(self.steps)
        self.out.say(
            f"deploy {d.app_name} {d.env} to {d.host_name} "
            f"({d.host.user}@{d.host.address}), id {self.id}"
        )
        result, failed_step, error = "interrupted", None, None
        try:
            failed_step, error = self._run_steps(total)
            locked = "lock" in self.reached
            if error is None:
                result = "ok"
                self._timed(11, total, "cleanup", lambda: self._run_plan(self.steps[10]))
            elif failed_step in ROLLBACK_STEPS:
                result = self._rollback(total)
            elif "configs" in self.reached:
                result = self._restore_configs(total)
            else:
                result = "failed"
        finally:
            if "lock" in self.reached:
                self._finish(total, result, failed_step, error)
        if error is None:
            self.out.say(f"deployed {d.name} at {_short(self.new_head)}: healthy")
            return Outcome(self.last_record, True)
        if not locked:
            raise error
        if result == "rolled-back":
            failure = DeployFailed(
                f"deploy of {d.name} failed at {failed_step}: {error.message}\n"
                f"rolled back: {self.restored}",
                error.fix
                or f"see `fab history {d.app_name} {d.env}` and the output above; "
                "fix and redeploy",
            )
        else:
            detail = f"\nrollback: {self.restored}" if self.restored else ""
            failure = DeployFailed(
                f"deploy of {d.name} failed at {failed_step}: {error.message}{detail}",
                error.fix or f"inspect the host: fab health {d.app_name} {d.env}",
            )
        failure.record = self.last_record
        raise failure

    def _run_steps(self, total: int) -> tuple[str | None, OpsfabError | None]:
        """Steps 1 to 9; returns the failed step and its error, or (None, None).

        An interrupt counts as a failure of the step it hit; one that lands just after
        a step finished counts against that step, whose effects then exist."""
        number, step, started = 0, self.steps[0], time.perf_counter()
        try:
            for number, step in enumerate(self.steps[:9], 1):
                started = time.perf_counter()
                outcome, detail = step.run(self) if step.run else self._run_plan(step)
                self.timings[step.name] = round(time.perf_counter() - started, 3)
                self.out.step(number, total, step.name, outcome, self.timings[step.name], detail)
                self.reached.add(step.name)
        except (OpsfabError, KeyboardInterrupt) as exc:
            if step.name not in self.reached:
                self.timings[step.name] = round(time.perf_counter() - started, 3)
                self.out.step(number, total, step.name, "FAILED", self.timings[step.name])
            if isinstance(exc, KeyboardInterrupt):
                exc = OpsfabError(
                    "interrupted (Ctrl-C or SIGTERM)", "check the output above, then redeploy"
                )
            return step.name, exc
        return None, None

    def _run_plan(self, step: Step) -> tuple[str, str]:
        actions = step.plan(self)
        enabled = [a for a in actions if a.enabled]
        self.execute_actions(enabled)
        return ("ok", "") if enabled else ("skipped", "nothing to do")

    def _timed(
        self, number: int, total: int, name: str, func: Callable[[], tuple[str, str]]
    ) -> None:
        started = time.perf_counter()
        try:
            outcome, detail = func()
        except OpsfabError as exc:
            outcome, detail = "FAILED", exc.message.splitlines()[0]
        seconds = time.perf_counter() - started
        self.timings[name] = round(seconds, 3)
        self.out.step(number, total, name, outcome, seconds, detail)

    def _rollback(self, total: int) -> str:
        number = 10
        if not self.can_roll_back:
            self.restored = "nothing: no earlier version of this deployment ever ran"
            self.out.step(number, total, "rollback", "none", 0.0, self.restored)
            return "failed"
        started = time.perf_counter()
        try:
            self.execute_actions(plan_rollback(self))
            if "up" in self.reached or "build" in self.reached:
                states = health.wait(self.target, self.d, self.facts.containers)
            else:
                states = probe.container_states(self.target, self.containers)
                health.check_now(states, self.d)
        except OpsfabError as exc:
            seconds = time.perf_counter() - started
            self.restored = f"rollback did not end healthy: {exc.message.splitlines()[0]}"
            self.out.step(number, total, "rollback", "FAILED", seconds, self.restored)
            self.timings["rollback"] = round(seconds, 3)
            return "rollback-failed"
        seconds = time.perf_counter() - started
        self.timings["rollback"] = round(seconds, 3)
        images = ", ".join(
            f"{s.container} {states[s.container].image[7:19]}"
            for s in self.d.services
            if s.container in states
        )
        self.restored = (
            f"commit {_short(self.running_commit)} is running again ({images}), healthy"
        )
        self.out.step(number, total, "rollback", "ok", seconds, self.restored)
        return "rolled-back"

    def _restore_configs(self, total: int) -> str:
        """A failure after the configs were pushed but before the source changed:
        the app still runs its old version, so only the configs go back."""
        started = time.perf_counter()
        try:
            self.target.run(
                configs.restore_line(self.file_paths) + " && " + restore_pointers_line(self.d)
            )
            reload_nginx(self)
        except OpsfabError as exc:
            self.restored = (
                f"could not put the previous configs back: {exc.message.splitlines()[0]}"
            )
            self.out.step(
                10, total, "rollback", "FAILED", time.perf_counter() - started, self.restored
            )
            return "failed"
        self.restored = "the previous configs are back; the running containers were not touched"
        self.out.step(10, total, "rollback", "ok", time.perf_counter() - started, self.restored)
        return "failed"

    def _finish(
        self, total: int, result: str, failed_step: str | None, error: OpsfabError | None
    ) -> None:
        started = time.perf_counter()
        self.last_record = self.record(result, failed_step, error.message if error else "")
        outcome = "ok"
        try:
            self.execute_actions(plan_record(self))
        except OpsfabError as exc:
            outcome = "FAILED"
            self.out.say(f"record: {exc.message}")
        self.out.step(
            total, total, "record", outcome, time.perf_counter() - started, f"{self.d.deploy_log}"
        )

    # -- the deploy log -------------------------------------------------------------------

    def record(self, result: str, failed_step: str | None, error: str) -> dict:
        facts = self.facts
        rec = {
            "time": self.started.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "id": self.id,
            "action": "deploy",
            "app": self.d.app_name,
            "env": self.d.env,
            "host": self.d.host_name,
            "who": self.options.actor or actor(),
            "ref": self.options.ref or f"origin/{self.d.branch}",
            "from": {
                "commit": facts.repo_head if facts else None,
                "images": dict(facts.images) if facts else {},
            },
            "to": {"commit": self.new_head},
            "result": result,
            "failed_step": failed_step,
            "error": error.splitlines()[0] if error else "",
            "configs_changed": self.changed,
            "backups": self.backups,
            "steps": self.timings,
            "seconds": round((datetime.now(UTC) - self.started).total_seconds(), 3),
        }
        self.last_record = rec
        return rec


def actor() -> str:
    explicit = os.environ.get("OPSFAB_ACTOR") or os.environ.get("GITHUB_ACTOR")
    if explicit:
        return explicit
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def _short(commit: str | None) -> str:
    return commit[:12] if commit else "(none)"


def _version(text: str | None) -> tuple[int, ...] | None:
    match = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text or "")
    return tuple(int(g) for g in match.groups() if g is not None) if match else None


# -- 1. preflight ------------------------------------------------------------------------


def plan_preflight(run: Deploy) -> list[Action]:
    return [
        Action(
            probe.script(probe.sections(run.d, run.file_paths)),
            note="read-only probe, one round trip",
        )
    ]


def run_preflight(run: Deploy) -> tuple[str, str]:
    d = run.d
    run.facts = facts = probe.gather(run.target, d, run.file_paths)
    mask_secrets(run.target, facts)
    problems = preflight_problems(d, facts) + env_file_problems(d, facts.env_text)
    if problems:
        raise PreflightError(problems)
    if facts.lock_holder is not None:
        raise lock_error(d, facts.lock_holder)
    run.changed = [
        f.path.as_posix()
        for f in run.files
        if facts.file_hashes.get(str(f.path)) != _sha256(f.content)
    ]
    free = f"{facts.free_mb / 1024:.1f} GB free" if facts.free_mb is not None else ""
    head = f"running {_short(facts.repo_head)}" if facts.repo_head else "first deploy"
    return "ok", f"docker {facts.docker_version}, compose {facts.compose_version}, {free}, {head}"


def mask_secrets(target: Target, facts: probe.Facts) -> None:
    """From now on the env file's values and the secret files never reach any output."""
    secretsync.mask_values(target, facts.env_text, facts.secret_values)


UNESCAPED_DOLLAR = re.compile(r"(?<![\\$])\$(?![$])")


def env_file_problems(d: Deployment, text: str | None) -> list[tuple[str, str]]:
    """Lines compose would misread in the host's env file; named by line and key only."""
    if text is None or text.startswith(secretsync.HEADER):
        return []  # absent (reported above), or written by fab secrets.push: exact
    problems = []
    for binding in parse_stream(io.StringIO(text)):
        where = f"{d.env_file} line {binding.original.line}"
        if binding.error:
            problems.append((f"{where} is not KEY=value (an unclosed quote?)", "fix that line"))
        elif binding.key and binding.value and UNESCAPED_DOLLAR.search(binding.value):
            raw = binding.original.string.split("=", 1)[-1].lstrip()
            if not raw.startswith("'"):
                problems.append(
                    (
                        f"{where}: the value of {binding.key} holds a '$' that compose would "
                        "expand (and so change the value)",
                        f"write $$ for a literal $, or push it with fab secrets.push "
                        f"{d.app_name} {d.env}, which escapes it",
                    )
                )
    return problems


def preflight_problems(d: Deployment, facts: probe.Facts) -> list[tuple[str, str]]:
    """Everything that makes the deploy unsafe, found before anything changes."""
    problems = []
    where = f"on {d.host_name}"
    found = _version(facts.docker_version)
    if found is None:
        problems.append(
            (
                f"docker does not answer {where}: "
                f"{facts.docker_error.strip()[:200] or 'no output'}",
                "install Docker Engine or start its daemon, and make sure "
                f"{d.host.user} may use it",
            )
        )
    elif found < MIN_DOCKER:
        problems.append(
            (
                f"Docker {facts.docker_version} found {where}; opsfab needs 20.10 or newer",
                "upgrade Docker Engine on the host",
            )
        )
    compose = _version(facts.compose_version)
    cmd = " ".join(d.host.compose)
    if compose is None:
        problems.append(
            (
                f"`{cmd}` is not usable {where}: "
                f"{facts.compose_error.strip()[:200] or 'no output'}",
                "install the Compose v2 plugin (docker compose) or set "
                f"hosts.{d.host_name}.compose",
            )
        )
    elif compose < MIN_COMPOSE:
        problems.append(
            (
                f"`{cmd}` is version {facts.compose_version} {where}; "
                "opsfab needs Compose 2.0 or newer",
                "install the Compose v2 plugin and set "
                f'hosts.{d.host_name}.compose = ["docker", "compose"]',
            )
        )
    if facts.free_mb is not None and facts.free_mb < d.host.min_free_mb:
        problems.append(
            (
                f"only {facts.free_mb} MB free under {facts.docker_root} {where};"
                f" the inventory asks for {d.host.min_free_mb} MB"
                f" (hosts.{d.host_name}.min_free_mb)",
                "free space (docker system df; docker image prune) or lower min_free_mb",
            )
        )
    if facts.ops_free_mb is not None and facts.ops_free_mb < MIN_OPS_FREE_MB:
        problems.append(
            (
                f"only {facts.ops_free_mb} MB free for {d.ops_root} {where}; configs, the lock "
                f"and backups need at least {MIN_OPS_FREE_MB} MB",
                "free space on that filesystem (old backups: fab backup.list)",
            )
        )
    if any(s.env_file for s in d.services):
        if not facts.env_file_present:
            problems.append(
                (
                    f"secrets file {d.env_file} is missing {where}",
                    f"fab secrets.push {d.app_name} {d.env} (or create it, mode 600)",
                )
            )
        else:
            missing = [k for k in d.app.required_secrets if k not in facts.secret_keys]
            if missing:
                problems.append(
                    (
                        f"{d.env_file} lacks required keys: {', '.join(missing)}",
                        f"add them and run fab secrets.push {d.app_name} {d.env}",
                    )
                )
    return problems


def lock_error(d: Deployment, holder_text: str) -> LockHeld:
    try:
        holder = json.loads(holder_text)
        who, since, deploy_id = holder.get("who"), holder.get("since"), holder.get("id")
    except (json.JSONDecodeError, AttributeError):
        who, since, deploy_id = holder_text.strip()[:80], "unknown", "?"
    return LockHeld(
        f"{d.name} is locked by {who} since {since} (deploy {deploy_id}); "
        "refusing a second deploy",
        f"wait for it to finish; if it died, check `fab history {d.app_name} {d.env}` "
        f"and run `fab unlock {d.app_name} {d.env}`",
    )


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- 2. lock -----------------------------------------------------------------------------


def plan_lock(run: Deploy) -> list[Action]:
    return [Action(lock_line(run.d, run.id, run.options.actor or actor(), run.started))]


def lock_line(d: Deployment, deploy_id: str, who: str, started: datetime) -> str:
    holder = json.dumps(
        {"who": who, "since": started.strftime("%Y-%m-%dT%H:%M:%SZ"), "id": deploy_id}
    )
    holder_file = str(d.lock_dir / "holder")
    write = (
        line(["printf", "%s\\n", holder])
        + " > "
        + _q(holder_file)
        + " && "
        + line(["mkdir", "-p", str(d.deploy_dir)])
        + " && "
        + configs.prepare_line(d.ops_root)
    )
    # A lock whose holder could not be written (disk full) is removed again at once.
    return (
        line(["mkdir", "-p", str(d.lock_dir.parent)], ["mkdir", str(d.lock_dir)])
        + f" && {{ {write} || {{ {line(['rm', '-rf', '--', str(d.lock_dir)])}; "
        f"exit {LOCK_WRITE_FAILED}; }}; }}"
    )


def run_lock(run: Deploy) -> tuple[str, str]:
    take_lock(run.target, run.d, plan_lock(run)[0].line)
    return "ok", str(run.d.lock_dir)


def take_lock(target: Target, d: Deployment, command: str) -> None:
    """Run the lock line; a refusal names the holder, or why the lock could not be taken."""
    result = target.run(command, check=False)
    if result.ok:
        return
    output = (result.stdout + result.stderr).strip()
    if result.exited == LOCK_WRITE_FAILED:
        raise OpsfabError(
            f"could not write in {d.ops_root} on {d.host_name}: {output[-300:]}",
            "free disk space on the host (df -h) or fix the folder's owner, then redeploy",
        )
    holder = target.run(line(["cat", str(d.lock_dir / "holder")]), check=False)
    if holder.ok and holder.stdout.strip():
        raise lock_error(d, holder.stdout)
    raise OpsfabError(
        f"cannot take the lock {d.lock_dir} on {d.host_name}: {output[-300:] or 'no output'}",
        f"if no deploy runs, `fab unlock {d.app_name} {d.env}`; check disk space and permissions",
    )


def _q(text: str) -> str:
    return shlex.quote(text)


# -- 3. configs --------------------------------------------------------------------------


def plan_configs(run: Deploy) -> list[Action]:
    d = run.d
    tar_path, stage = configs.stage_paths(d.ops_root, run.id)
    actions = [
        Action(
            line(["docker", "network", "create", d.host.shared_network])
            + " || "
            + line(
                ["docker", "network", "inspect", "--format", "{{.Name}}", d.host.shared_network]
            ),
            when=f"the shared network {d.host.shared_network} does not exist",
            enabled=run.when(lambda f: not f.shared_network),
        ),
        Action(tar_path, upload=configs.bundle(run.files)),
        Action(configs.install_line(run.files, tar_path, stage)),
    ]
    actions += nginx_reload_actions(run)
    return actions


def nginx_reload_actions(run: Deploy) -> list[Action]:
    proxy = run.d.host.proxy_container
    conf_changed = run.when(lambda f: any(p in run.changed for p in run.conf_paths))
    running = run.when(lambda f: f.proxy_running)
    when = f"an nginx conf changed and {proxy} is running"
    return [
        Action(
            line(["docker", "exec", proxy, "nginx", "-t"]),
            when=when,
            enabled=conf_changed and running,
        ),
        Action(
            line(["docker", "exec", proxy, "nginx", "-s", "reload"]),
            when=when + " and nginx -t passed",
            enabled=conf_changed and running,
        ),
    ]


def reload_nginx(run: Deploy) -> Result | None:
    """``nginx -t`` in the proxy, then reload, when a conf changed and the proxy runs.

    Returns the failed test (nothing was reloaded), or None."""
    test, reload = nginx_reload_actions(run)
    if not test.enabled:
        return None
    result = run.target.run(test.line, check=False)
    if not result.ok:
        return result
    run.target.run(reload.line)
    return None


def run_configs(run: Deploy) -> tuple[str, str]:
    run.execute_actions(plan_configs(run)[:-2])  # the last two: the guarded reload
    rejected = reload_nginx(run)
    if rejected is not None:
        run.target.run(configs.restore_line(run.file_paths))
        raise OpsfabError(
            "nginx rejected the new config; the previous files are back:\n"
            + _nginx_error(rejected),
            "fix the template or the inventory value named above (fab render to inspect)",
        )
    if not run.changed:
        return "ok", "no changes"
    return "ok", "changed: " + ", ".join(p.rsplit("/", 1)[-1] for p in run.changed)


def _nginx_error(result: Result) -> str:
    text = (result.stdout + result.stderr).strip().splitlines()
    return "\n".join("    " + t for t in text[-5:])


# -- 4. remember -------------------------------------------------------------------------


def plan_remember(run: Deploy) -> list[Action]:
    """Point the rollback ref and :rollback tags at what runs now, keeping the old
    pointers as rollback-prev so that a failed deploy can put them back. One line;
    each part tests on the host whether there is anything to remember."""
    d = run.d
    repo = str(d.repo_dir)
    git = ["git", "-C", repo]
    parts = [
        _if(
            [*git, "rev-parse", "-q", "--verify", ROLLBACK_REF],
            [*git, "update-ref", PREV_REF, ROLLBACK_REF],
        ),
        f"{{ if {line([*git, 'rev-parse', '-q', '--verify', CURRENT_REF])} >/dev/null 2>&1; "
        f"then {line([*git, 'update-ref', ROLLBACK_REF, CURRENT_REF])}; "
        f"elif {line([*git, 'rev-parse', '-q', '--verify', 'HEAD'])} >/dev/null 2>&1; "
        f"then {line([*git, 'update-ref', ROLLBACK_REF, 'HEAD'])}; fi; }}",
    ]
    for s in d.built_services:
        parts.append(
            _if(
                ["docker", "image", "inspect", s.rollback_image],
                ["docker", "image", "tag", s.rollback_image, _prev_tag(s.image)],
            )
        )
        inspect = line(["docker", "container", "inspect", "--format", "{{.Image}}", s.container])
        parts.append(
            f'{{ if id=$({inspect} 2>/dev/null); then docker image tag "$id" '
            f"{shlex.quote(s.rollback_image)}; fi; }}"
        )
    return [Action(" && ".join(parts), note="the image tagged is the one the container runs")]


def _prev_tag(image: str) -> str:
    return image.rsplit(":", 1)[0] + ":rollback-prev"


def restore_pointers_line(d: Deployment) -> str:
    """After a failed deploy: the rollback point goes back to what it was before it."""
    git = ["git", "-C", str(d.repo_dir)]
    parts = [
        _if(
            [*git, "rev-parse", "-q", "--verify", PREV_REF],
            [*git, "update-ref", ROLLBACK_REF, PREV_REF],
        )
    ]
    for s in d.built_services:
        parts.append(
            _if(
                ["docker", "image", "inspect", _prev_tag(s.image)],
                ["docker", "image", "tag", _prev_tag(s.image), s.rollback_image],
            )
        )
    return " && ".join(parts)


def _if(test: list[str], then: list[str]) -> str:
    """``then`` only when ``test`` succeeds; the line fails only if ``then`` does."""
    return f"{{ if {line(test)} >/dev/null 2>&1; then {line(then)}; fi; }}"


# -- 5. backup ---------------------------------------------------------------------------


def plan_backup(run: Deploy) -> list[Action]:
    """The app's backup recipe (fabfile/backup.py) for a prod-like environment."""
    job = _backup_job(run)
    if not job.items:
        return []
    return [
        Action(
            backup.dump_script(job),
            note="dumps "
            + ", ".join(i.label for i in job.items)
            + " and reads back what verifies them; an item is skipped while its "
            "volume or container does not exist yet",
        ),
        Action(
            backup.keep_line(job),
            when="every dump passed its verification",
            note="old pre-deploy sets beyond the retention are removed with it; a "
            "failed verification removes the partial files and stops the deploy",
        ),
    ]


def run_backup(run: Deploy) -> tuple[str, str]:
    if not run.d.environment.backup_before_deploy or not backup.recipe(run.d):
        return "skipped", "no backup for this environment"
    job = _backup_job(run)
    if not job.items:
        return "skipped", "no data yet"
    result = backup.run(run.target, job, backup.retention(run.inventory, "deploy"))
    run.backups += result.files
    return "ok", ", ".join(result.details)


def _backup_job(run: Deploy) -> backup.Job:
    """The pre-deploy set: only items whose volume or container exists (once known)."""
    d = run.d
    job = backup.new_job(d, "deploy", f"{d.name}-{run.id}")
    if not d.environment.backup_before_deploy:
        job.items = []
    elif run.facts is not None:
        job.items = [i for i in job.items if _backup_ready(i, run.facts)]
    return job


def _backup_ready(item: backup.Item, facts: probe.Facts) -> bool:
    if item.kind == "volume":
        return item.name in facts.volumes
    state = facts.containers.get(item.container)
    return state is not None and state.status == "running"


# -- 6. source ---------------------------------------------------------------------------


def plan_source(run: Deploy) -> list[Action]:
    d = run.d
    repo = str(d.repo_dir)
    git = ["git", "-C", repo]
    ref = run.options.ref
    if ref is None:
        reset = line([*git, "reset", "--hard", f"origin/{d.branch}", "--"])
    else:  # a branch name means the origin's branch, never the clone's stale one
        reset = (
            f"{{ if {line([*git, 'rev-parse', '-q', '--verify', f'refs/remotes/origin/{ref}'])}"
            f" >/dev/null; then {line([*git, 'reset', '--hard', f'origin/{ref}', '--'])}; "
            f"else {line([*git, 'reset', '--hard', f'{ref}^{{commit}}', '--'])}; fi; }}"
        )
    return [
        Action(
            line(["git", "clone", "--branch", d.branch, "--", d.app.repo, repo]),
            when="the repository is not cloned yet",
            enabled=run.when(lambda f: f.repo_head is None),
        ),
        Action(
            line([*git, "fetch", "--prune", "--tags", "--force", "origin"])
            + f" && {reset} && "
            + line([*git, "rev-parse", "HEAD"])
        ),
    ]


def run_source(run: Deploy) -> tuple[str, str]:
    actions = plan_source(run)
    run.reached.add("source")
    d = run.d
    fix = (
        f"check apps.{d.app_name}.repo, apps.{d.app_name}.envs.{d.env}.branch (or --ref), "
        "and that the host can reach the repository (its deploy key)"
    )
    try:
        run.execute_actions(actions[:1])
        result = run.target.run(actions[1].line)
    except RemoteCommandError as exc:
        exc.fix = fix
        raise
    run.new_head = result.stdout.strip().splitlines()[-1]
    before = run.facts.repo_head if run.facts else None
    if before == run.new_head:
        return "ok", f"{_short(run.new_head)} (unchanged)"
    return "ok", f"{_short(before)} -> {_short(run.new_head)}"


# -- 7, 8. build and up --------------------------------------------------------------------


def plan_build(run: Deploy) -> list[Action]:
    if not run.d.built_services:
        return []
    return [Action(line([*run.d.compose, "build", "--no-cache"]))]


def plan_up(run: Deploy) -> list[Action]:
    return [Action(line([*run.d.compose, "up", "-d", "--no-build", "--remove-orphans"]))]


# -- 9. health ---------------------------------------------------------------------------


def plan_health(run: Deploy) -> list[Action]:
    _d, s = run.d, run.d.app.deploy
    return [
        Action(
            probe.state_line(run.containers),
            note=f"repeated every {s.health_poll:g} s until every container is healthy, "
            f"at most {s.health_tries} x {s.health_timeout} s; "
            "fails at once when a container exits, restarts or turns unhealthy",
        )
    ]


def run_health(run: Deploy) -> tuple[str, str]:
    states = health.wait(run.target, run.d, run.facts.containers)
    return "ok", ", ".join(f"{c} {states[c].health}" for c in run.containers)


# -- 10. rollback ------------------------------------------------------------------------


def plan_rollback(run: Deploy) -> list[Action]:
    d = run.d
    when = "source, build, up or health failed and a previous version exists"
    up_ran = "up" in run.reached or "build" in run.reached or not run.known
    actions = [
        Action(configs.restore_line(run.file_paths), when=when),
        Action(
            line(["git", "-C", str(d.repo_dir), "reset", "--hard", ROLLBACK_REF, "--"]), when=when
        ),
    ]
    for s in d.built_services:
        actions.append(
            Action(
                line(["docker", "image", "tag", s.rollback_image, s.image]),
                when=f"{when}, and {s.image} existed",
                enabled=run.when(lambda f, s=s: f.images.get(s.image) is not None),
            )
        )
    actions.append(
        Action(
            restore_pointers_line(d),
            when=when,
            note="the rollback point goes back to what it was before this deploy",
        )
    )
    actions += nginx_reload_actions(run)
    actions.append(
        Action(
            line([*d.compose, "up", "-d", "--no-build", "--remove-orphans"]),
            when=f"{when}, and the new build was made",
            enabled=up_ran,
            note="then health is checked again as in step 9",
        )
    )
    return actions


# -- 11. cleanup, 12. record -------------------------------------------------------------


def plan_cleanup(run: Deploy) -> list[Action]:
    """After a success: the new commit is current, the saved rollback-prev pointers go,
    and only untagged images of this deployment are pruned."""
    d = run.d
    git = ["git", "-C", str(d.repo_dir)]
    parts = [
        line([*git, "update-ref", CURRENT_REF, "HEAD"]),
        _if([*git, "rev-parse", "-q", "--verify", PREV_REF], [*git, "update-ref", "-d", PREV_REF]),
    ]
    parts += [
        _if(
            ["docker", "image", "inspect", _prev_tag(s.image)],
            ["docker", "image", "rm", _prev_tag(s.image)],
        )
        for s in d.built_services
    ]
    prune = [
        "docker",
        "image",
        "prune",
        "--force",
        "--filter",
        f"label=org.opsfab.deployment={d.name}",
    ]
    parts.append(line(prune))
    return [
        Action(
            " && ".join(parts),
            when="the deploy succeeded",
            note="removes only untagged images of this deployment: :latest and :rollback stay",
        )
    ]


def plan_record(run: Deploy) -> list[Action]:
    """Append the record, then release the lock even if the append failed."""
    d = run.d
    rec = getattr(run, "last_record", None) or run.record("<result>", None, "")
    append = (
        line(["printf", "%s\\n", json.dumps(rec, sort_keys=True)]) + " >> " + _q(str(d.deploy_log))
    )
    unlock = line(["rm", "-rf", "--", str(d.lock_dir)])
    return [
        Action(
            f"{append}; status=$?; {unlock} && exit $status",
            note=None if run.known else "the JSON line holds the real result and timings",
        )
    ]
