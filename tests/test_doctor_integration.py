"""`fab doctor` finds the reference's troubleshooting cases on a real deployment."""

from __future__ import annotations

import json

from tests.support.docker import docker
from tests.support.opsfixtures import OpsEnv, deploy


def test_doctor_finds_and_fixes_a_container_off_the_shared_network(ops: OpsEnv):
    deploy(ops)
    clean = ops.fab("doctor", ops.app, "prod")
    assert clean.returncode == 0, clean.stdout + clean.stderr

    docker("network", "disconnect", ops.shared_network, ops.container())
    found = ops.fab("doctor", ops.app, "prod")
    assert found.returncode == 9
    assert f"{ops.container()} is not on {ops.shared_network}" in found.stdout
    assert "502" in found.stdout and "--fix" in found.stdout

    fixed = ops.fab("doctor", ops.app, "prod", "--fix")
    assert fixed.returncode == 0, fixed.stdout
    assert fixed.stdout.startswith("FIXED")
    networks = ops.inspect(ops.container(), "{{json .NetworkSettings.Networks}}")
    assert ops.shared_network in json.loads(networks)


def test_doctor_reports_unhealthy_container_and_wrong_upstream(ops: OpsEnv):
    deploy(ops)
    conf = ops.ops_root / "infra/nginx/conf.d" / f"20-{ops.app}.conf"
    conf.write_text(
        conf.read_text().replace(f"http://{ops.container()}:", "http://quickpulse-prd:")
    )
    docker("exec", ops.container(), "rm", "/www/health")
    for _ in range(60):
        if ops.inspect(ops.container(), "{{.State.Health.Status}}") == "unhealthy":
            break
        import time

        time.sleep(0.5)
    result = ops.fab("doctor", ops.app, "prod", "--json")
    assert result.returncode == 9
    findings = json.loads(result.stdout)
    messages = "\n".join(f["message"] for f in findings)
    assert f"{ops.container()} is unhealthy" in messages
    assert "last health probes" in messages and "404" in messages
    assert "nginx upstream quickpulse-prd:8000 matches no container" in messages
    assert all(f["fix"] for f in findings)
