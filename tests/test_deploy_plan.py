"""Unit tests of the deploy sequence: the plan, preflight refusals, and the runner's
order and rollback decisions against a scripted fake host (no network). The runner
tests use the dev environment: the prod backup recipe has its own tests.

What crosses the wire is tested for real in test_deploy_integration.py.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from fabfile import inventory as inventory_mod
from fabfile import render
from fabfile.deploy import Deploy, Options, lock_error, preflight_problems
from fabfile.errors import DeployFailed, PreflightError, TemplateError, UsageError
from fabfile.output import Reporter
from fabfile.probe import Facts
from fabfile.target import Result, Target
from tests.support.deployenv import REPO_ROOT

UNLOCK = r"status=\$\?; rm -rf -- /opt/ops/locks"  # the record line releases the lock
HEALTHY = "/quickpulse-dev|abc|sha256:new|running|healthy|0|0|2026-12-03T10:00:00Z"
UNHEALTHY = "/quickpulse-dev|abc|sha256:new|running|unhealthy|0|0|2026-12-03T10:00:00Z"


@pytest.fixture(scope="module")
def inv():
    return inventory_mod.load(REPO_ROOT / "hosts.toml")


def plan(inv, env: str) -> dict[str, list[str]]:
    run = Deploy(
        inv,
        inv.deployment("quickpulse", env),
        None,
        Options(dry_run=True, actor="t"),
        Reporter(quiet=True),
    )
    return {step.name: [a.show() for a in step.plan(run)] for step in run.steps}


def test_prod_plan_backs_up_the_data_volume_and_dev_does_not(inv):
    prod, dev = plan(inv, "prod"), plan(inv, "dev")
    assert list(prod) == [
        "preflight",
        "lock",
        "configs",
        "remember",
        "backup",
        "source",
        "build",
        "up",
        "health",
        "rollback",
        "cleanup",
        "record",
    ]
    backup = "\n".join(prod["backup"])
    assert "qp-prod-data" in backup
    assert dev["backup"] == []


def test_plan_commands_are_exact_and_explicit_about_the_compose_project(inv):
    prod = plan(inv, "prod")
    compose = (
        "docker compose --project-directory /opt/ops/apps/quickpulse/prod "
        "-p quickpulse-prod -f /opt/ops/apps/quickpulse/prod/docker-compose.yml"
    )
    assert prod["build"] == [f"{compose} build --no-cache"]
    assert prod["up"] == [f"{compose} up -d --no-build --remove-orphans"]
    assert prod["source"][1] == (
        "git -C /opt/ops/apps/quickpulse/prod/repo fetch --prune --tags --force origin && "
        "git -C /opt/ops/apps/quickpulse/prod/repo reset --hard origin/main -- && "
        "git -C /opt/ops/apps/quickpulse/prod/repo rev-parse HEAD"
    )
    assert plan(inv, "dev")["source"][1].count("origin/develop") == 1
    [remember] = prod["remember"]
    assert remember.endswith(
        "{ if id=$(docker container inspect --format '{{.Image}}' quickpulse-prod 2>/dev/null); "
        'then docker image tag "$id" opsfab/quickpulse-prod:rollback; fi; }'
    )
    assert "update-ref refs/opsfab/rollback-prev refs/opsfab/rollback" in remember
    assert "update-ref refs/opsfab/rollback refs/opsfab/current" in remember


def test_ref_is_checked_before_anything_runs(inv):
    d = inv.deployment("quickpulse", "prod")
    with pytest.raises(UsageError, match="not a git ref"):
        Deploy(inv, d, None, Options(ref="--upload-pack=evil"), Reporter(quiet=True))
    run = Deploy(inv, d, None, Options(ref="v1.2.3", dry_run=True), Reporter(quiet=True))
    assert "reset --hard 'v1.2.3^{commit}' --" in run.steps[5].plan(run)[1].show()


def test_dry_run_cli_prints_every_step_and_needs_no_host():
    result = subprocess.run(
        [sys.executable, "-m", "fabric", "deploy", "quickpulse", "prod", "--dry-run"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"},
    )
    assert result.returncode == 0, result.stderr
    for number in range(1, 13):
        assert f"[{number:>2}/12]" in result.stdout
    assert "nothing is sent to the host" in result.stdout


def test_unknown_app_and_env_are_refused_naming_the_choices(inv):
    with pytest.raises(UsageError, match="unknown app 'nope'") as err:
        inv.deployment("nope", "prod")
    assert "quickpulse" in err.value.fix
    with pytest.raises(UsageError, match="no environment 'staging'") as err:
        inv.deployment("quickpulse", "staging")
    assert "dev, prod" in err.value.fix


def test_a_missing_template_value_is_an_error_not_an_empty_string(monkeypatch):
    import jinja2

    monkeypatch.setattr(
        render._environment, "loader", jinja2.DictLoader({"t.j2": "listen {{ port }};\n"})
    )
    render._environment.cache.clear() if render._environment.cache else None
    with pytest.raises(TemplateError, match="'port' is undefined"):
        render._render("t.j2", render.PurePosixPath("/x"), {})


# -- preflight refusals -----------------------------------------------------------------


def good_facts() -> Facts:
    return Facts(
        docker_version="20.10.24",
        compose_version="2.29.1",
        docker_root="/var/lib/docker",
        free_mb=50_000,
        shared_network=True,
        env_file_present=True,
        secret_keys=[
            "KINGDEE_ACCT_ID",
            "KINGDEE_USERNAME",
            "KINGDEE_APP_ID",
            "KINGDEE_APP_SECRET",
            "KINGDEE_SERVER_URL",
        ],
    )


def problems(inv, **changes) -> list[str]:
    facts = good_facts()
    for key, value in changes.items():
        setattr(facts, key, value)
    return [
        f"{m} | {f}" for m, f in preflight_problems(inv.deployment("quickpulse", "prod"), facts)
    ]


def test_good_host_passes_preflight(inv):
    assert problems(inv) == []


def test_missing_docker_is_refused(inv):
    [p] = problems(inv, docker_version=None, docker_error="sh: 1: docker: not found")
    assert "docker does not answer on cvm: sh: 1: docker: not found" in p


def test_old_compose_is_refused_naming_the_version_found(inv):
    [p] = problems(inv, compose_version="1.29.2")
    assert "version 1.29.2" in p and "Compose 2.0 or newer" in p


def test_missing_compose_is_refused(inv):
    [p] = problems(
        inv, compose_version=None, compose_error="docker: 'compose' is not a docker command."
    )
    assert "`docker compose` is not usable" in p and "'compose' is not a docker command" in p


def test_low_disk_is_refused_with_both_figures(inv):
    [p] = problems(inv, free_mb=900)
    assert "only 900 MB free under /var/lib/docker" in p and "2048 MB" in p


def test_missing_secrets_file_and_keys_are_refused_by_name_only(inv):
    [p] = problems(inv, env_file_present=False, secret_keys=[])
    assert "/opt/ops/secrets/quickpulse/prod.env is missing" in p and "fab secrets.push" in p
    [p] = problems(inv, secret_keys=["KINGDEE_ACCT_ID"])
    assert "lacks required keys: KINGDEE_USERNAME, KINGDEE_APP_ID" in p


def test_lock_error_names_holder_and_start_time(inv):
    err = lock_error(
        inv.deployment("quickpulse", "prod"),
        '{"who": "ci@runner", "since": "2026-12-03T09:00:00Z", "id": "d1"}',
    )
    assert "locked by ci@runner since 2026-12-03T09:00:00Z" in err.message


# -- the runner against a scripted host --------------------------------------------------


class FakeClock:
    """Health waits sleep on this clock instead of the real one."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(autouse=True)
def fake_clock(monkeypatch):
    from fabfile import health

    clock = FakeClock()
    monkeypatch.setattr(health, "time", clock)
    return clock


class ScriptedHost(Target):
    """Answers each command by the first matching rule; records what ran."""

    def __init__(self, rules: list[tuple[str, int, str]]) -> None:
        super().__init__("fake")
        self.rules = rules
        self.uploads: list[str] = []

    def _run(self, command, *, timeout, stream):
        for pattern, code, out in self.rules:
            if re.search(pattern, command):
                return Result(command, out, "", code)
        return Result(command, "", "", 0)

    def _put(self, path, data):
        self.uploads.append(path)


def probe_output(repo_head: str | None = "a" * 40, image: bool = True) -> str:
    sections = {
        "docker": (0, "20.10.24"),
        "compose": (0, "2.29.1"),
        "disk": (
            0,
            "/var/lib/docker\nFS 1K-blocks Used Available Use% Mounted\n/dev/x 1 1 99999999 1% /",
        ),
        "network": (0, "ops-infra"),
        "lock": (1, "No such file"),
        "repo": (0, repo_head) if repo_head else (128, "fatal"),
        "proxy": (1, ""),
        "envfile": (
            0,
            "KINGDEE_ACCT_ID=1\nKINGDEE_USERNAME=u\nexport KINGDEE_APP_ID=2\n"
            'KINGDEE_APP_SECRET="s3cr3t-canary"\nKINGDEE_SERVER_URL=x',
        ),
        "image opsfab/quickpulse-dev:latest": (0, "sha256:old") if image else (1, ""),
        "rollback opsfab/quickpulse-dev:latest": (1, ""),
        "container quickpulse-dev": (0, HEALTHY.replace("new", "old")),
        "volume qp-dev-data": (0, "qp-dev-data"),
        "hashes": (1, ""),
    }
    return "".join(f"@@opsfab {k}\n{out}\n@@opsfab-rc {rc}\n" for k, (rc, out) in sections.items())


def run_with(inv, rules, repo_head="a" * 40) -> tuple[ScriptedHost, Deploy, Exception | None]:
    host = ScriptedHost(
        [
            (r"^echo '@@opsfab docker'", 0, probe_output(repo_head)),
            (r"tar -tzf", 0, "3\n"),
            *rules,
            (r"rev-parse HEAD$", 0, "b" * 40 + "\n"),
        ]
    )
    run = Deploy(
        inv, inv.deployment("quickpulse", "dev"), host, Options(actor="t"), Reporter(quiet=True)
    )
    error = None
    try:
        run.execute()
    except Exception as exc:  # noqa: BLE001 - the test inspects it
        error = exc
    return host, run, error


def ran(host: ScriptedHost, pattern: str) -> list[str]:
    return [c for c in host.stats.log if re.search(pattern, c)]


def test_healthy_deploy_runs_the_steps_in_order_and_releases_the_lock(inv):
    host, run, error = run_with(inv, [(r"container inspect --format '\{\{\.Name", 0, HEALTHY)])
    assert error is None
    order = [
        ran(host, p)[0]
        for p in (
            "@@opsfab docker",
            r"mkdir /opt/ops/locks/",
            "tar -xf",
            "update-ref refs/opsfab/rollback HEAD",
            "reset --hard origin/develop",
            "build --no-cache",
            "up -d",
            "image prune",
            "deploy.log",
            UNLOCK,
        )
    ]
    assert [host.stats.log.index(c) for c in order] == sorted(
        host.stats.log.index(c) for c in order
    )
    assert run.last_record["result"] == "ok"
    assert not ran(host, "refs/opsfab/rollback --")  # no rollback


def test_health_failure_rolls_back_configs_commit_and_images_then_checks_health(inv):
    polls = iter([UNHEALTHY])

    class Host(ScriptedHost):
        def _run(self, command, *, timeout, stream):
            if command.startswith("docker container inspect --format '{{.Name}}"):
                return Result(command, next(polls, HEALTHY), "", 0)
            return super()._run(command, timeout=timeout, stream=stream)

    host = Host(
        [
            (r"^echo '@@opsfab docker'", 0, probe_output()),
            (r"tar -tzf", 0, "3\n"),
            (r"rev-parse HEAD$", 0, "b" * 40),
        ]
    )
    run = Deploy(
        inv, inv.deployment("quickpulse", "dev"), host, Options(actor="t"), Reporter(quiet=True)
    )
    with pytest.raises(DeployFailed, match="failed at health") as err:
        run.execute()
    assert "rolled back: commit aaaaaaaaaaaa is running again" in err.value.message
    after = host.stats.log[host.stats.log.index(ran(host, "up -d")[0]) + 1 :]
    assert any("docker-compose.yml.prev" in c for c in after)
    assert any("reset --hard refs/opsfab/rollback" in c for c in after)
    assert any(
        c == "docker image tag opsfab/quickpulse-dev:rollback opsfab/quickpulse-dev:latest"
        for c in after
    )
    assert len(ran(host, "up -d --no-build")) == 2
    assert run.last_record["result"] == "rolled-back" and ran(host, UNLOCK)
    assert not ran(host, "image prune")


def test_build_failure_rolls_back_without_recreating_containers(inv):
    host, run, error = run_with(
        inv,
        [
            (r"build --no-cache", 1, "boom"),
            (r"container inspect --format '\{\{\.Name", 0, HEALTHY),
        ],
    )
    assert isinstance(error, DeployFailed) and "failed at build" in error.message
    assert not ran(host, "up -d")
    assert ran(host, "reset --hard refs/opsfab/rollback")
    assert run.last_record["result"] == "rolled-back"


def test_first_deploy_failure_has_nothing_to_roll_back_and_says_so(inv):
    host, run, error = run_with(inv, [(r"build --no-cache", 1, "boom")], repo_head=None)
    assert isinstance(error, DeployFailed)
    assert "no earlier version of this deployment ever ran" in error.message
    assert not ran(host, "reset --hard refs/opsfab/rollback")
    assert run.last_record["result"] == "failed" and ran(host, UNLOCK)


def test_preflight_refusal_changes_nothing(inv):
    host = ScriptedHost(
        [(r"^echo '@@opsfab docker'", 0, probe_output().replace("2.29.1", "1.29.2"))]
    )
    run = Deploy(
        inv, inv.deployment("quickpulse", "dev"), host, Options(actor="t"), Reporter(quiet=True)
    )
    with pytest.raises(PreflightError, match="1.29.2"):
        run.execute()
    assert len(host.stats.log) == 1 and host.uploads == []


def test_failure_before_the_source_changes_puts_only_the_configs_back(inv):
    host, run, error = run_with(inv, [(r"update-ref refs/opsfab/rollback HEAD", 1, "disk full")])
    assert isinstance(error, DeployFailed) and "failed at remember" in error.message
    assert "previous configs are back" in error.message
    assert ran(host, r"docker-compose.yml.prev .*docker-compose.yml.restore")
    assert not ran(host, "reset --hard") and not ran(host, "build") and not ran(host, "up -d")
    assert run.last_record["result"] == "failed" and ran(host, UNLOCK)


def test_a_branch_given_as_ref_means_the_origins_branch(inv):
    d = inv.deployment("quickpulse", "prod")
    run = Deploy(inv, d, None, Options(ref="main", dry_run=True), Reporter(quiet=True))
    source = run.steps[5].plan(run)[1].show()
    assert (
        "if git -C /opt/ops/apps/quickpulse/prod/repo rev-parse -q --verify "
        "refs/remotes/origin/main" in source
    )
    assert "then git -C /opt/ops/apps/quickpulse/prod/repo reset --hard origin/main --;" in source
    assert (
        "else git -C /opt/ops/apps/quickpulse/prod/repo reset --hard 'main^{commit}' --;" in source
    )


def test_interrupt_during_health_rolls_back(inv):
    class Host(ScriptedHost):
        def _run(self, command, *, timeout, stream):
            if command.startswith("docker container inspect --format '{{.Name}}"):
                if not ran(self, r"reset --hard refs/opsfab/rollback"):
                    raise KeyboardInterrupt
                return Result(command, HEALTHY, "", 0)
            return super()._run(command, timeout=timeout, stream=stream)

    host = Host(
        [(r"^echo '@@opsfab docker'", 0, probe_output()), (r"rev-parse HEAD$", 0, "b" * 40)]
    )
    run = Deploy(
        inv, inv.deployment("quickpulse", "dev"), host, Options(actor="t"), Reporter(quiet=True)
    )
    with pytest.raises(DeployFailed, match="interrupted") as err:
        run.execute()
    assert "rolled back" in err.value.message
    assert ran(host, "update-ref refs/opsfab/rollback refs/opsfab/rollback-prev")
    assert run.last_record["result"] == "rolled-back"


def test_failed_deploy_puts_the_previous_rollback_point_back(inv):
    host, run, error = run_with(
        inv,
        [
            (r"build --no-cache", 1, "boom"),
            (r"container inspect --format '\{\{\.Name", 0, HEALTHY),
        ],
    )
    assert isinstance(error, DeployFailed)
    restore = ran(host, "update-ref refs/opsfab/rollback refs/opsfab/rollback-prev")
    assert (
        restore
        and "opsfab/quickpulse-dev:rollback-prev opsfab/quickpulse-dev:rollback" in restore[0]
    )
    assert not ran(host, "update-ref refs/opsfab/current")  # current moves only on success


def test_success_moves_current_and_drops_the_saved_pointers(inv):
    host, run, error = run_with(inv, [(r"container inspect --format '\{\{\.Name", 0, HEALTHY)])
    assert error is None
    [cleanup] = ran(host, "image prune")
    assert cleanup.startswith(
        "git -C /opt/ops/apps/quickpulse/dev/repo update-ref refs/opsfab/current HEAD"
    )
    assert "docker image rm opsfab/quickpulse-dev:rollback-prev" in cleanup


def test_secret_values_are_masked_in_every_output(inv):
    host = ScriptedHost(
        [
            (r"^echo '@@opsfab docker'", 0, probe_output()),
            (r"rev-parse HEAD$", 0, "b" * 40),
            (r"build --no-cache", 1, "Step 3: echo s3cr3t-canary\nboom"),
        ]
    )
    run = Deploy(
        inv, inv.deployment("quickpulse", "dev"), host, Options(actor="t"), Reporter(quiet=True)
    )
    with pytest.raises(DeployFailed) as err:
        run.execute()
    assert "s3cr3t-canary" not in err.value.message and "[REDACTED]" in err.value.message


def test_env_file_lines_compose_would_misread_are_refused_by_line_and_key(inv):
    from fabfile.deploy import env_file_problems

    d = inv.deployment("quickpulse", "prod")
    text = "A=1\nKINGDEE_APP_SECRET=\"tok3n-open\nB=pa$sw0rd\nC='li$teral'\nD=x$$y\nE=x\\$y\n"
    problems = env_file_problems(d, text)
    messages = "\n".join(m for m, _ in problems)
    assert "prod.env line 2 is not KEY=value" in messages
    assert "line 3: the value of B holds a '$'" in messages
    assert "value of C" not in messages and "value of D" not in messages
    assert "value of E" not in messages
    assert "tok3n" not in messages and "sw0rd" not in messages


def test_a_container_that_dies_right_after_turning_healthy_fails_the_deploy(inv):
    states = iter([HEALTHY, HEALTHY.replace("|0|0|", "|1|0|")])

    class Host(ScriptedHost):
        def _run(self, command, *, timeout, stream):
            if command.startswith("docker container inspect --format '{{.Name}}") and not ran(
                self, "reset --hard refs/opsfab/rollback"
            ):
                return Result(command, next(states, HEALTHY), "", 0)
            return super()._run(command, timeout=timeout, stream=stream)

    host = Host(
        [
            (r"^echo '@@opsfab docker'", 0, probe_output()),
            (r"rev-parse HEAD$", 0, "b" * 40),
            (r"container inspect --format '\{\{\.Name", 0, HEALTHY),
        ]
    )
    run = Deploy(
        inv, inv.deployment("quickpulse", "dev"), host, Options(actor="t"), Reporter(quiet=True)
    )
    with pytest.raises(DeployFailed, match="is restarting"):
        run.execute()


def test_past_restarts_of_a_container_that_was_not_recreated_are_not_a_failure(inv):
    from fabfile import health
    from fabfile.probe import parse_state

    d = inv.deployment("quickpulse", "dev")
    before = parse_state(HEALTHY.replace("|0|0|", "|2|0|"))
    assert health.failure({before.name: before}, d, {before.id: 2}) is None
    assert "restarting" in health.failure({before.name: before}, d, {})
    health.check_now({before.name: before}, d)  # fab health: healthy now is healthy


def test_ctrl_c_during_a_remote_build_is_held_and_then_rolls_back(inv):
    from fabfile import target as target_mod

    class Host(ScriptedHost):
        def _run(self, command, *, timeout, stream):
            if "build --no-cache" in command:
                target_mod._Interrupts._handle(2, None)  # the signal arrives mid-command
            return super()._run(command, timeout=timeout, stream=stream)

    host = Host(
        [
            (r"^echo '@@opsfab docker'", 0, probe_output()),
            (r"rev-parse HEAD$", 0, "b" * 40),
            (r"container inspect --format '\{\{\.Name", 0, HEALTHY),
        ]
    )
    run = Deploy(
        inv, inv.deployment("quickpulse", "dev"), host, Options(actor="t"), Reporter(quiet=True)
    )
    with pytest.raises(DeployFailed, match="failed at build: interrupted"):
        run.execute()
    assert not ran(host, "up -d")
    assert ran(
        host, "docker image tag opsfab/quickpulse-dev:rollback opsfab/quickpulse-dev:latest"
    )
    assert target_mod._Interrupts.pending is False


def test_a_dollar_in_an_inventory_value_reaches_the_container_literally(tmp_path):
    text = (
        (REPO_ROOT / "hosts.toml")
        .read_text()
        .replace(
            'env_file = true\nvolumes = { "qp-',
            'env_file = true\nenvironment = { TZ = "a$HOME" }\nvolumes = { "qp-',
            1,
        )
    )
    (tmp_path / "hosts.toml").write_text(text)
    inv = inventory_mod.load(tmp_path / "hosts.toml")
    [compose] = [
        f
        for f in render.render_deployment(inv, inv.deployment("quickpulse", "prod"))
        if f.path.name == "docker-compose.yml"
    ]
    assert 'TZ: "a$$HOME"' in compose.content.decode()
