"""`fab bootstrap HOST` on a bare ops root; a second run reports no changes."""

from __future__ import annotations

import stat

from tests.support.docker import docker
from tests.support.opsfixtures import OpsEnv


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_bootstrap_then_no_changes_then_deploy(ops: OpsEnv):
    for child in ("secrets",):
        import shutil

        shutil.rmtree(ops.ops_root / child)
    dry = ops.fab("bootstrap", "testhost", "--dry-run")
    assert dry.returncode == 0 and "would create network" in dry.stdout
    assert not (ops.ops_root / "apps").exists()

    first = ops.fab("bootstrap", "testhost")
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"create {ops.ops_root}/secrets (mode 700)" in first.stdout
    assert mode(ops.ops_root / "secrets") == 0o700
    assert mode(ops.ops_root / "secrets" / ops.app) == 0o700
    assert mode(ops.ops_root / "backups" / "daily") == 0o700
    assert (ops.ops_root / "apps" / ops.app / "dev" / "repo" / ".git").is_dir()
    assert ops.repo_head("dev") == ops.origin.head("develop")
    for name in (ops.shared_network, f"{ops.app}-prod-net", f"{ops.app}-dev-net"):
        assert docker("network", "inspect", name, check=False).returncode == 0
    label = docker(
        "volume",
        "inspect",
        "--format",
        '{{index .Labels "com.docker.compose.project"}}',
        f"{ops.app}-prod-pg",
    )
    assert label.stdout.strip() == f"{ops.app}-prod"

    (ops.ops_root / "backups").chmod(0o755)
    second = ops.fab("bootstrap", "testhost")
    assert second.stdout.strip() == f"mode of {ops.ops_root}/backups: 755 -> 700"
    third = ops.fab("bootstrap", "testhost")
    assert third.stdout.strip() == "testhost: no changes"
