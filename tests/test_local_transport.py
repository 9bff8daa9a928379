"""The same tasks on the server itself: TESTHOST_TRANSPORT=local, no SSH at all."""

from __future__ import annotations

from tests.support.opsfixtures import OpsEnv, deploy
from tests.support.sshd import free_port


def test_status_secrets_and_backup_without_ssh(ops: OpsEnv):
    deploy(ops)
    # Point the host at a port where nothing listens: only a local run can work.
    text = ops.inventory.read_text().replace(f"port = {ops.sshd.port}", f"port = {free_port()}")
    ops.inventory.write_text(text)
    assert ops.fab("status").returncode == 3  # over SSH: cannot connect

    local = {"TESTHOST_TRANSPORT": "local"}
    status = ops.fab("status", "--app", ops.app, "--env", "prod", env=local)
    assert status.returncode == 0, status.stderr
    assert ops.container() in status.stdout and "healthy" in status.stdout
    push = ops.fab("secrets.push", ops.app, "prod", env=local)
    assert push.returncode == 0, push.stderr
    backup = ops.fab("backup", ops.app, "prod", env=local)
    assert backup.returncode == 0, backup.stderr
    assert len(ops.backups("manual")) == 3
    doctor = ops.fab("doctor", ops.app, "prod", env=local)
    assert doctor.returncode == 0, doctor.stdout
