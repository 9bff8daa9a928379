"""An SSH password from TESTHOST_PASSWORD (CVM_PASSWORD for host cvm), for a host
without keys: login works, and the password shows in no output and no log."""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Iterator

import pytest

from fabfile import inventory as inventory_mod
from fabfile.target import SSHTarget
from tests.support.deployenv import write_inventory
from tests.support.sshd import SshServer

PASSWORD = "pa$$ w;rd!'\"x $HOME"
USER = "opsfabpw"


@pytest.fixture
def password_user(sshd: SshServer) -> Iterator[str]:
    """A throwaway unix user with PASSWORD, removed afterwards."""
    subprocess.run(["userdel", "-r", USER], capture_output=True)
    subprocess.run(["useradd", "-m", "-s", "/bin/sh", USER], check=True)
    subprocess.run(["chpasswd"], input=f"{USER}:{PASSWORD}\n", text=True, check=True)
    if subprocess.run(["getent", "group", "docker"], capture_output=True).returncode == 0:
        subprocess.run(["usermod", "-aG", "docker", USER], check=True)
    yield USER
    subprocess.run(["userdel", "-f", "-r", USER], capture_output=True)


def test_password_login_leaves_no_trace(sshd, password_user, origin_repo, tmp_path, caplog):
    inventory = write_inventory(
        tmp_path / "hosts.toml",
        app="pwapp",
        sshd=sshd,
        ops_root=tmp_path / "ops",
        origin=origin_repo,
    )
    text = inventory.read_text().replace(f'user = "{sshd.user}"', f'user = "{USER}"')
    text = text.replace(f'key = "{sshd.client_key}"', f'key = "{tmp_path}/no-such-key"')
    inventory.write_text(text)

    caplog.set_level(logging.DEBUG)
    env = {"TESTHOST_PASSWORD": PASSWORD}
    inv = inventory_mod.load(inventory)
    target = SSHTarget("testhost", inv.host("testhost"), env)
    with target:
        assert target.run("id -un").stdout.strip() == USER
    assert PASSWORD not in caplog.text

    result = subprocess.run(
        ["python3", "-m", "fabric", "status"],
        capture_output=True,
        text=True,
        env={**os.environ, "OPSFAB_INVENTORY": str(inventory), **env, "OPSFAB_DEBUG": "1"},
        cwd=inventory_mod.PROJECT_ROOT,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "pwapp-prod" in result.stdout
    assert PASSWORD not in result.stdout + result.stderr
    assert f"Accepted password for {USER}" in sshd.log.read_text()
