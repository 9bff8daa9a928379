"""Unit tests for defects a break-it review found in the operator tasks."""

from __future__ import annotations

from fabfile import backup, bootstrap, inventory, secretsync
from tests.support.deployenv import REPO_ROOT


def test_a_value_with_unicode_line_separators_reads_back_exactly():
    values = {"TOKEN": "canary\u2028second\u0085third", "OTHER": "x"}
    text = secretsync.render_env(values).decode()
    assert secretsync.parse_host_env(text) == values


def test_retention_never_prunes_the_set_just_made():
    inv = inventory.load(REPO_ROOT / "hosts.toml")
    d = inv.deployment("quickpulse", "prod")
    job = backup.new_job(d, "daily", "quickpulse-prod-20261203T120000Z-000000")
    newer = "quickpulse-prod-20261203T120000Z-ffffff"  # same second, a later-sorting suffix
    older = "quickpulse-prod-20261202T120000Z-aaaaaa"
    listing = "\n".join(f"{s}.volume-qp-prod-data.tar.gz" for s in (job.set_id, newer, older))
    _, removed = backup.prune_line(job, listing, keep=1)
    assert job.set_id not in removed and set(removed) == {newer, older}


def test_bootstrap_only_tightens_folder_modes():
    wanted = {"/opt/ops": "755", "/opt/ops/secrets": "700"}
    found = {"/opt/ops": "2750", "/opt/ops/secrets": "775"}
    changes = bootstrap._folder_changes(wanted, found)
    assert [c.command for c in changes] == ["chmod 700 /opt/ops/secrets"]
    assert (
        bootstrap._folder_changes(wanted, {"/opt/ops": "2755", "/opt/ops/secrets": "2700"}) == []
    )
