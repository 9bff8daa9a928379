"""Host settings from the environment and the git-ignored .env (python-dotenv)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fabfile import inventory as inventory_mod
from fabfile.errors import InventoryError

MINIMAL = """
[hosts.cvm]
address = "203.0.113.10"
user = "root"
memory = "7.1g"
"""


@pytest.fixture
def folder(tmp_path: Path, monkeypatch) -> Path:
    for var in ("CVM_HOST", "CVM_USER", "CVM_SSH_KEY"):
        monkeypatch.delenv(var, raising=False)
    (tmp_path / "hosts.toml").write_text(MINIMAL)
    return tmp_path


def test_dotenv_beside_the_inventory_sets_host_user_and_key(folder: Path):
    (folder / ".env").write_text("export CVM_HOST=127.0.0.9\nCVM_USER=deploy\nCVM_SSH_KEY=/k/id\n")
    host = inventory_mod.load(folder / "hosts.toml").hosts["cvm"]
    assert (host.address, host.user, host.key) == ("127.0.0.9", "deploy", "/k/id")


def test_the_environment_wins_over_dotenv(folder: Path, monkeypatch):
    (folder / ".env").write_text("CVM_HOST=127.0.0.9\n")
    monkeypatch.setenv("CVM_HOST", "127.0.0.7")
    assert inventory_mod.load(folder / "hosts.toml").hosts["cvm"].address == "127.0.0.7"


def test_without_overrides_the_inventory_values_stand(folder: Path):
    assert inventory_mod.load(folder / "hosts.toml").hosts["cvm"].address == "203.0.113.10"


def test_unknown_key_is_named_with_its_path_and_the_fix(folder: Path):
    (folder / "hosts.toml").write_text(MINIMAL + 'adress = "x"\n')
    with pytest.raises(InventoryError) as err:
        inventory_mod.load(folder / "hosts.toml")
    assert "hosts.toml: hosts.cvm.adress: unknown key" in str(err.value)


def test_missing_file_names_the_fix(tmp_path: Path):
    with pytest.raises(InventoryError, match="no such file"):
        inventory_mod.load(tmp_path / "nope.toml")


def test_a_malformed_pinned_host_key_is_an_inventory_error(folder: Path):
    (folder / "hosts.toml").write_text(MINIMAL + 'host_key = "ssh-ed25519 not-base64!"\n')
    with pytest.raises(InventoryError) as err:
        inventory_mod.load(folder / "hosts.toml")
    assert "hosts.cvm.host_key: not a valid SSH public key" in str(err.value)


def test_an_app_on_an_unknown_host_is_reported_not_a_traceback(folder: Path):
    (folder / "hosts.toml").write_text(
        MINIMAL
        + """
[apps.web]
host = "cvn"
repo = "r"
envs.prod.branch = "main"
services.app = { container = "web-{env}", image = "x:1", memory = "64m" }
"""
    )
    with pytest.raises(InventoryError, match="apps.web.host: unknown host 'cvn'; use one of: cvm"):
        inventory_mod.load(folder / "hosts.toml")


def test_the_placeholder_address_is_never_contacted(folder: Path):
    from fabfile.errors import ConnectError
    from fabfile.target import connect

    inv = inventory_mod.load(folder / "hosts.toml")
    with pytest.raises(ConnectError, match="documentation placeholder") as err:
        connect("cvm", inv.hosts["cvm"]).run("true")
    assert "CVM_HOST" in err.value.fix
