"""`fab deploy` end to end: a real sshd, the real Docker engine, a real git origin.

Scenarios of issue 2: first deploy on a bare host, healthy redeploy, failing health
(rolled back), failing build (running container untouched), a held lock, unknown and
changed host keys, dry run, manual rollback and history.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fabfile import inventory as inventory_mod
from fabfile.deploy import Deploy, Options
from fabfile.output import Reporter
from fabfile.target import connect
from tests.support.deployenv import CANARY, DeployEnv, write_inventory, write_secrets
from tests.support.docker import docker, remove_docker_resources


@pytest.fixture
def qp(sshd, base_image, docker_prefix, origin_repo, tmp_path) -> DeployEnv:
    app = docker_prefix
    ops_root = tmp_path / "ops"
    ops_root.mkdir()
    inventory = write_inventory(
        tmp_path / "hosts.toml", app=app, sshd=sshd, ops_root=ops_root, origin=origin_repo
    )
    write_secrets(ops_root, app, "prod")
    write_secrets(ops_root, app, "dev")
    yield DeployEnv(app, inventory, ops_root, origin_repo, sshd, f"{app}-infra")
    remove_docker_resources(
        prefixes=[app],
        labels=[f"org.opsfab.deployment={app}-prod", f"org.opsfab.deployment={app}-dev"],
    )
    for tag in ("latest", "rollback"):
        for env in ("prod", "dev"):
            docker("rmi", "-f", f"opsfab/{app}-{env}:{tag}", check=False)


def deployed(qp: DeployEnv, *args: str) -> None:
    result = qp.fab("deploy", qp.app, "prod", *args)
    assert result.returncode == 0, result.stdout + result.stderr


def test_first_deploy_on_bare_host_then_healthy_redeploy(qp: DeployEnv):
    assert docker("network", "inspect", qp.shared_network, check=False).returncode != 0

    first = qp.fab("deploy", qp.app, "prod")
    assert first.returncode == 0, first.stdout + first.stderr
    for number, name in enumerate(
        ["preflight", "lock", "configs", "remember", "backup", "source", "build", "up", "health"],
        1,
    ):
        assert f"[{number:>2}/12] {name}" in first.stdout
    assert "first deploy" in first.stdout
    assert qp.health_body() == "ok v1"
    assert docker("network", "inspect", qp.shared_network, check=False).returncode == 0
    assert qp.inspect(qp.container(), "{{.HostConfig.Memory}}") == str(128 * 1024 * 1024)
    [record] = qp.log_records()
    assert record["result"] == "ok" and record["to"]["commit"] == qp.origin.head()
    assert record["from"]["commit"] is None
    assert not (qp.ops_root / "locks" / f"{qp.app}-prod.lock").exists()
    conf = qp.ops_root / "infra/nginx/conf.d/20-" / ""
    assert (qp.ops_root / f"infra/nginx/conf.d/20-{qp.app}.conf").exists(), conf
    v1_image = qp.inspect(qp.container(), "{{.Image}}")

    v2 = qp.origin.commit_version("ok v2")
    second = qp.fab("deploy", qp.app, "prod", "--json")
    assert second.returncode == 0, second.stdout + second.stderr
    record = json.loads(second.stdout)
    assert record["result"] == "ok" and record["to"]["commit"] == v2
    assert qp.health_body() == "ok v2"
    assert qp.inspect(f"opsfab/{qp.app}-prod:rollback", "{{.Id}}") == v1_image
    assert len(record["backups"]) == 1
    archive = qp.ops_root / "backups" / "deploy" / record["backups"][0]
    assert archive.stat().st_size > 0
    assert (qp.ops_root / "apps" / qp.app / "prod" / "docker-compose.yml.prev").exists()
    assert CANARY not in first.stdout + first.stderr + second.stdout + second.stderr


def test_failing_health_rolls_back_to_previous_commit_and_image(qp: DeployEnv):
    deployed(qp)
    good = qp.origin.head()
    good_image = qp.inspect(qp.container(), "{{.Image}}")

    qp.origin.commit_unhealthy()
    result = qp.fab("deploy", qp.app, "prod")

    assert result.returncode == 7, result.stdout + result.stderr
    assert "failed at health" in result.stderr and "rolled back" in result.stderr
    assert qp.repo_head() == good
    assert qp.inspect(qp.container(), "{{.Image}}") == good_image
    assert qp.inspect(qp.container(), "{{.State.Health.Status}}") == "healthy"
    assert qp.health_body() == "ok v1"
    last = qp.log_records()[-1]
    assert last["result"] == "rolled-back" and last["failed_step"] == "health"
    assert not (qp.ops_root / "locks" / f"{qp.app}-prod.lock").exists()


def test_crashing_container_fails_fast_and_rolls_back(qp: DeployEnv):
    deployed(qp)
    qp.origin.commit_crash()
    result = qp.fab("deploy", qp.app, "prod")
    assert result.returncode == 7, result.stdout + result.stderr
    assert "opsfab test: crashing on purpose" in result.stderr  # the container's own log
    assert qp.health_body() == "ok v1"
    assert qp.log_records()[-1]["result"] == "rolled-back"


def test_failing_build_never_touches_the_running_container(qp: DeployEnv):
    deployed(qp)
    before = qp.inspect(qp.container(), "{{.Id}} {{.State.StartedAt}}")
    good = qp.origin.head()

    qp.origin.commit_build_failure()
    result = qp.fab("deploy", qp.app, "prod")

    assert result.returncode == 7, result.stdout + result.stderr
    assert "failed at build" in result.stderr
    assert qp.inspect(qp.container(), "{{.Id}} {{.State.StartedAt}}") == before
    assert qp.repo_head() == good
    assert qp.log_records()[-1]["result"] == "rolled-back"


def test_second_deploy_while_locked_is_refused_naming_the_holder(qp: DeployEnv):
    lock = qp.ops_root / "locks" / f"{qp.app}-prod.lock"
    lock.mkdir(parents=True)
    (lock / "holder").write_text(
        json.dumps({"who": "alice@laptop", "since": "2026-12-03T10:00:00Z", "id": "x1"}) + "\n"
    )

    result = qp.fab("deploy", qp.app, "prod")

    assert result.returncode == 5
    assert "alice@laptop" in result.stderr and "2026-12-03T10:00:00Z" in result.stderr
    assert "fab unlock" in result.stderr
    assert lock.exists() and not (qp.ops_root / "apps").exists()
    assert qp.log_records() == []


def test_unknown_host_key_is_refused(qp: DeployEnv, tmp_path: Path):
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    write_inventory(
        qp.inventory,
        app=qp.app,
        sshd=qp.sshd,
        ops_root=qp.ops_root,
        origin=qp.origin,
        known_hosts=empty,
    )
    result = qp.fab("deploy", qp.app, "prod")
    assert result.returncode == 3
    assert "refusing an unknown host key" in result.stderr
    assert "ssh-keyscan" in result.stderr and str(qp.sshd.port) in result.stderr
    assert not (qp.ops_root / "apps").exists()


def test_changed_host_key_is_refused(qp: DeployEnv, wrong_known_hosts: Path):
    write_inventory(
        qp.inventory,
        app=qp.app,
        sshd=qp.sshd,
        ops_root=qp.ops_root,
        origin=qp.origin,
        known_hosts=wrong_known_hosts,
    )
    result = qp.fab("deploy", qp.app, "prod")
    assert result.returncode == 3
    assert "CHANGED" in result.stderr and "ssh-keygen -R" in result.stderr


def test_pinned_host_key_in_the_inventory_is_enough(qp: DeployEnv, tmp_path: Path):
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    write_inventory(
        qp.inventory,
        app=qp.app,
        sshd=qp.sshd,
        ops_root=qp.ops_root,
        origin=qp.origin,
        known_hosts=empty,
        extra_host=f'host_key = "{qp.sshd.host_public_key}"',
    )
    result = qp.fab("health", qp.app, "prod")
    assert "does not exist" in result.stderr  # connected, verified, found nothing yet


def test_dry_run_changes_nothing_and_lists_what_a_real_deploy_runs(qp: DeployEnv):
    before = sorted(p.relative_to(qp.ops_root) for p in qp.ops_root.rglob("*"))
    dry = qp.fab("deploy", qp.app, "prod", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert sorted(p.relative_to(qp.ops_root) for p in qp.ops_root.rglob("*")) == before
    assert docker("network", "inspect", qp.shared_network, check=False).returncode != 0

    inv = inventory_mod.load(qp.inventory)
    d = inv.deployment(qp.app, "prod")
    plan = Deploy(inv, d, None, Options(dry_run=True, actor="t"), Reporter(quiet=True))
    with connect(d.host_name, d.host) as target:
        real = Deploy(inv, d, target, Options(actor="t"), Reporter(quiet=True))
        real.id, real.started = plan.id, plan.started
        real.execute()
        executed = list(target.stats.log)
        assert target.stats.connections == 1
    planned = {
        a.show() if a.upload is None else f"upload {len(a.upload)} bytes -> {a.line}"
        for step in plan.steps
        for a in step.plan(plan)
    }
    planned.add(plan.steps[-1].plan(plan)[-1].line)
    unplanned = [c for c in executed if c not in planned and "deploy.log" not in c]
    assert unplanned == []


def test_manual_rollback_and_history(qp: DeployEnv):
    deployed(qp)
    v1 = qp.origin.head()
    qp.origin.commit_version("ok v2")
    deployed(qp)
    assert qp.health_body() == "ok v2"

    result = qp.fab("rollback", qp.app, "prod")
    assert result.returncode == 0, result.stdout + result.stderr
    assert qp.health_body() == "ok v1" and qp.repo_head() == v1

    history = qp.fab("history", qp.app, "prod", "--json")
    records = [json.loads(line) for line in history.stdout.splitlines()]
    assert [r["action"] for r in records] == ["rollback", "deploy", "deploy"]
    assert records[0]["to"]["commit"] == v1

    again = qp.fab("rollback", qp.app, "prod")  # undoes the rollback
    assert again.returncode == 0, again.stderr
    assert qp.health_body() == "ok v2"

    health = qp.fab("health", qp.app, "prod")
    assert health.returncode == 0 and "healthy" in health.stdout


def test_old_compose_on_the_host_is_refused_naming_the_version(qp: DeployEnv, tmp_path: Path):
    fake = tmp_path / "old-compose"
    fake.write_text("#!/bin/sh\necho 1.29.2\n")
    fake.chmod(0o755)
    write_inventory(
        qp.inventory,
        app=qp.app,
        sshd=qp.sshd,
        ops_root=qp.ops_root,
        origin=qp.origin,
        compose=[str(fake)],
    )
    result = qp.fab("deploy", qp.app, "prod")
    assert result.returncode == 4, result.stderr
    assert "version 1.29.2" in result.stderr and "Compose 2.0 or newer" in result.stderr
    assert "nothing was changed" in result.stderr
    assert not (qp.ops_root / "apps").exists() and not (qp.ops_root / "locks").exists()


def test_low_disk_is_refused_before_anything_changes(qp: DeployEnv):
    write_inventory(
        qp.inventory,
        app=qp.app,
        sshd=qp.sshd,
        ops_root=qp.ops_root,
        origin=qp.origin,
        min_free_mb=10**9,
    )
    result = qp.fab("deploy", qp.app, "prod")
    assert result.returncode == 4
    assert "MB free under" in result.stderr and "1000000000 MB" in result.stderr
    assert not (qp.ops_root / "apps").exists()


def test_missing_secrets_file_is_refused(qp: DeployEnv):
    (qp.ops_root / "secrets" / qp.app / "prod.env").unlink()
    result = qp.fab("deploy", qp.app, "prod")
    assert result.returncode == 4
    assert "prod.env is missing" in result.stderr and "fab secrets.push" in result.stderr


def test_host_user_and_key_text_come_from_the_environment(qp: DeployEnv, tmp_path: Path):
    """The CD pipeline's way: TESTHOST_HOST/_USER/_SSH_KEY (CVM_* for host cvm)."""
    write_inventory(qp.inventory, app=qp.app, sshd=qp.sshd, ops_root=qp.ops_root, origin=qp.origin)
    text = qp.inventory.read_text().replace(f'address = "{qp.sshd.host}"', 'address = "127.0.0.2"')
    text = text.replace(f'key = "{qp.sshd.client_key}"', 'key = "/nonexistent/key"')
    qp.inventory.write_text(text)
    env = {
        "TESTHOST_HOST": qp.sshd.host,
        "TESTHOST_USER": qp.sshd.user,
        "TESTHOST_SSH_KEY": qp.sshd.client_key.read_text(),
    }
    result = qp.fab("health", qp.app, "prod", env=env)
    assert "does not exist" in result.stderr, result.stderr  # connected and asked docker
    assert "BEGIN" not in result.stdout + result.stderr


def test_ctrl_c_during_health_rolls_back_to_the_previous_version(qp: DeployEnv):
    import os
    import signal
    import subprocess
    import sys

    from tests.support.deployenv import REPO_ROOT

    deployed(qp)
    good = qp.origin.head()
    qp.origin.commit_unhealthy()
    env = {**os.environ, "OPSFAB_INVENTORY": str(qp.inventory)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "fabric", "deploy", qp.app, "prod"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen = []
    for text in proc.stdout:
        seen.append(text)
        if "] up " in text:
            proc.send_signal(signal.SIGINT)
            break
    out, err = proc.communicate(timeout=300)
    out = "".join(seen) + out
    assert proc.returncode == 7, out + err
    assert "interrupted" in err and "rolled back" in err
    assert qp.repo_head() == good and qp.health_body() == "ok v1"
    assert qp.log_records()[-1]["result"] == "rolled-back"


def test_failed_deploys_keep_the_rollback_point_for_fab_rollback(qp: DeployEnv):
    deployed(qp)
    v1 = qp.origin.head()
    qp.origin.commit_version("ok v2")
    deployed(qp)
    qp.origin.commit_build_failure()
    assert qp.fab("deploy", qp.app, "prod").returncode == 7
    qp.origin.commit_unhealthy()
    assert qp.fab("deploy", qp.app, "prod").returncode == 7
    assert qp.health_body() == "ok v2"

    result = qp.fab("rollback", qp.app, "prod")
    assert result.returncode == 0, result.stdout + result.stderr
    assert qp.repo_head() == v1 and qp.health_body() == "ok v1"


def test_a_service_without_a_health_check_deploys_on_running(qp: DeployEnv):
    text = qp.inventory.read_text()
    text = (
        "\n".join(
            t
            for t in text.splitlines()
            if not t.startswith("health =") and not t.startswith("start_period")
        )
        + "\n"
    )
    qp.inventory.write_text(text)
    result = qp.fab("deploy", qp.app, "dev")
    assert result.returncode == 0, result.stdout + result.stderr
    health = qp.fab("health", qp.app, "dev")
    assert health.returncode == 0 and "none" in health.stdout
