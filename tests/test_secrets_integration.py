"""`fab secrets.check` and `fab secrets.push`: names only, modes 600 in 700, exact bytes."""

from __future__ import annotations

import stat
from pathlib import Path

from tests.support.deployenv import CANARY
from tests.support.docker import docker
from tests.support.opsfixtures import PG_PASSWORD, OpsEnv, deploy

PEM = (
    "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\nAbCd+/==\n"
    "-----END PRIVATE KEY-----"
)


def local(ops: OpsEnv, env: str = "prod") -> Path:
    return ops.inventory.parent / "secrets" / ops.app / f"{env}.env"


def host_env(ops: OpsEnv, env: str = "prod") -> Path:
    return ops.ops_root / "secrets" / ops.app / f"{env}.env"


def test_push_reports_key_names_and_writes_600_in_700(ops: OpsEnv):
    folder = ops.ops_root / "secrets" / ops.app
    for path in folder.iterdir():
        path.unlink()
    folder.rmdir()
    (ops.ops_root / "secrets").rmdir()
    local(ops).write_text(
        f"export KINGDEE_APP_SECRET={CANARY}\n"
        "export KINGDEE_ACCT_ID='acct $HOME 1'\n"
        f'TLS_KEY="{PEM}"\n'
    )
    check = ops.fab("secrets.check", ops.app, "prod")
    assert check.returncode == 0, check.stderr
    assert "+ KINGDEE_APP_SECRET (added)" in check.stdout
    assert "+ TLS_KEY (added)" in check.stdout
    assert "pg_prod_password.txt: added" in check.stdout
    assert not folder.exists()

    push = ops.fab("secrets.push", ops.app, "prod")
    assert push.returncode == 0, push.stderr
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE((ops.ops_root / "secrets").stat().st_mode) == 0o700
    for path in folder.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert sorted(p.name for p in folder.iterdir()) == ["pg_prod_password.txt", "prod.env"]
    assert (folder / "pg_prod_password.txt").read_bytes() == PG_PASSWORD.encode()

    again = ops.fab("secrets.push", ops.app, "prod")
    assert "no changes" in again.stdout

    local(ops).write_text(f"KINGDEE_APP_SECRET={CANARY}-2\nKINGDEE_ACCT_ID='acct $HOME 1'\n")
    changed = ops.fab("secrets.push", ops.app, "prod")
    assert "~ KINGDEE_APP_SECRET (changed)" in changed.stdout
    assert "- TLS_KEY (removed)" in changed.stdout
    for out in (check, push, again, changed):
        assert CANARY not in out.stdout + out.stderr and "acct" not in out.stdout


def test_pushed_values_reach_the_container_exactly(ops: OpsEnv):
    local(ops).write_text(
        f"export KINGDEE_APP_SECRET={CANARY}\n"
        "KINGDEE_ACCT_ID='a $b \"c\" \\\\d'\n"
        f'TLS_KEY="{PEM}"\n'
    )
    push = ops.fab("secrets.push", ops.app, "prod")
    assert push.returncode == 0, push.stderr
    deploy(ops)
    env = docker(
        "exec",
        ops.container(),
        "sh",
        "-c",
        'printf "%s" "$TLS_KEY"; echo; echo "$KINGDEE_ACCT_ID"',
    ).stdout
    # python-dotenv reads '\\\\' in single quotes as one backslash; $b stays literal.
    assert env == PEM + "\n" + 'a $b "c" \\d' + "\n"

    # The PostgreSQL password: its local file ends with a newline, the host's does not,
    # and the database (initialised from the Docker secret) accepts it over TCP.
    secret = ops.ops_root / "secrets" / ops.app / "pg_prod_password.txt"
    assert secret.read_bytes() == PG_PASSWORD.encode()
    ok = docker(
        "exec",
        "-e",
        f"PGPASSWORD={PG_PASSWORD}",
        ops.db(),
        "psql",
        "-h",
        "127.0.0.1",
        "-U",
        "postgres",
        "-d",
        "appdb",
        "-Atc",
        "SELECT 42",
        check=False,
    )
    assert ok.stdout.strip() == "42", ok.stderr
    bad = docker(
        "exec",
        "-e",
        f"PGPASSWORD={PG_PASSWORD}\n",
        ops.db(),
        "psql",
        "-h",
        "127.0.0.1",
        "-U",
        "postgres",
        "-d",
        "appdb",
        "-Atc",
        "SELECT 42",
        check=False,
    )
    assert bad.returncode != 0


def test_refusals_name_keys_and_lines_never_values(ops: OpsEnv):
    local(ops).write_text(f"KINGDEE_ACCT_ID={CANARY}\n")
    missing = ops.fab("secrets.push", ops.app, "prod")
    assert missing.returncode == 2
    assert "lacks required keys (or they are empty): KINGDEE_APP_SECRET" in missing.stderr

    # An unquoted PEM: python-dotenv would keep only its first line.
    local(ops).write_text(f"KINGDEE_APP_SECRET={CANARY}\nTLS_KEY={PEM}\n")
    cut = ops.fab("secrets.push", ops.app, "prod")
    assert cut.returncode == 2, cut.stdout
    assert (
        "TLS_KEY starts a PEM block that does not end in it" in cut.stderr
        or "cannot be read safely" in cut.stderr
    )
    assert "MIIE" not in cut.stderr
    before = host_env(ops).read_text()
    assert CANARY in before  # the fixture's file is untouched
    for out in (missing, cut):
        assert CANARY not in out.stdout + out.stderr
