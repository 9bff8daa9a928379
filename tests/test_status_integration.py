"""`fab status` and `fab logs` against the real sshd and Docker."""

from __future__ import annotations

import json
import time

from fabfile import inventory as inventory_mod
from fabfile import status as status_mod
from fabfile.target import connect
from tests.support.deployenv import CANARY
from tests.support.opsfixtures import OpsEnv, deploy


def test_status_of_six_containers_in_one_round_trip(ops: OpsEnv):
    deploy(ops, "prod")
    deploy(ops, "dev")

    started = time.perf_counter()
    result = ops.fab("status")
    wall = time.perf_counter() - started
    assert result.returncode == 0, result.stderr
    print(f"fab status, 6 containers: {wall:.2f} s wall")
    rows = [r for r in result.stdout.splitlines()[1:] if ops.app in r]
    assert len(rows) == 6 + 1  # six containers, and the proxy container (missing)
    prod = next(r for r in rows if r.split()[1] == ops.container("prod"))
    assert "running" in prod and "healthy" in prod and "/128 MB" in prod
    assert ops.origin.head()[:12] in prod
    assert CANARY not in result.stdout + result.stderr

    inv = inventory_mod.load(ops.inventory)
    deployments = status_mod.selected(inv, None, None)
    with connect("testhost", inv.host("testhost")) as target:
        rows = status_mod.status(target, inv, deployments)
        assert target.stats.commands == 1 and target.stats.connections == 1
    by_name = {r.container: r for r in rows}
    db = by_name[ops.db("dev")]
    assert db.state == "running" and db.limit_mb == 256 and db.memory_mb > 1
    assert db.deployed_at and db.commit == ops.origin.head("develop")
    assert by_name[f"{ops.app}-nginx"].state == "missing"

    as_json = ops.fab("status", "--app", ops.app, "--env", "prod", "--json")
    assert as_json.returncode == 0, as_json.stderr
    data = json.loads(as_json.stdout)["testhost"]
    assert sorted(r["container"] for r in data) == sorted(
        [ops.container("prod"), ops.db("prod"), f"{ops.app}-cache-prod"]
    )
    assert all(r["uptime_s"] >= 0 and r["health"] == "healthy" for r in data)


def test_logs_of_one_service_and_unknown_names(ops: OpsEnv):
    deploy(ops, "prod")
    result = ops.fab("logs", ops.app, "prod", "--service", "db", "--tail", "5")
    assert result.returncode == 0, result.stderr
    assert "database system is ready" in result.stdout or len(result.stdout.splitlines()) <= 5
    assert all(row.startswith(f"{ops.app}-db-prod") for row in result.stdout.splitlines())

    unknown = ops.fab("logs", ops.app, "prod", "--service", "nope")
    assert unknown.returncode == 2 and "use one of: app, db, cache" in unknown.stderr
    assert ops.fab("status", "--app", "nope").returncode == 2
