"""The canary secret value planted by the fixtures never reaches output, logs or errors.

Every test is also watched by the hook in tests/support/opsfixtures.py, which fails
any test whose captured stdout, stderr, log or error report contains the canary.
"""

from __future__ import annotations

import logging

import pytest

from fabfile import operate
from fabfile.errors import OpsfabError
from fabfile.inventory import load
from tests.support.deployenv import CANARY
from tests.support.opsfixtures import OpsEnv


def test_no_task_shows_the_canary(ops: OpsEnv, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    inv = load(ops.inventory)
    messages = []
    calls = [
        lambda: operate.secrets_check(ops.app, "prod", inventory=inv),
        lambda: operate.secrets_push(ops.app, "prod", inventory=inv),
        lambda: operate.status(inventory=inv),
        lambda: operate.doctor(ops.app, "prod", inventory=inv),
        lambda: operate.backup(ops.app, "prod", inventory=inv),
        lambda: operate.bootstrap("testhost", dry_run=True, inventory=inv),
    ]
    for call in calls:
        try:
            messages.append(repr(call()))
        except OpsfabError as exc:
            messages.append(exc.render())
    # A refused push names the missing key, never the values around it.
    env_file = ops.inventory.parent / "secrets" / ops.app / "prod.env"
    env_file.write_text(f"KINGDEE_ACCT_ID={CANARY}\n")
    with pytest.raises(OpsfabError) as refused:
        operate.secrets_push(ops.app, "prod", inventory=inv)
    messages.append(refused.value.render())
    captured = capsys.readouterr()
    everything = "\n".join([*messages, caplog.text, captured.out, captured.err])
    assert CANARY not in everything
    assert (ops.ops_root / "secrets" / ops.app / "prod.env").read_text().count(CANARY) == 1
