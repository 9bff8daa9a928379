"""The whole ops tree rendered from hosts.toml: golden files, compose and nginx checks.

Golden files live in tests/golden/, laid out as /opt/ops. After an intended change of a
template or of hosts.toml, regenerate them and review the diff:

    OPSFAB_UPDATE_GOLDEN=1 python3 -m pytest tests/test_render_golden.py
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath

import pytest

from fabfile import inventory as inventory_mod
from fabfile.render import write_tree
from fabfile.tree import render_all

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden"
INVENTORY = ROOT / "hosts.toml"
OPS_ROOT = PurePosixPath("/opt/ops")


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rendered")
    write_tree(render_all(inventory_mod.load(INVENTORY)), out, OPS_ROOT)
    if os.environ.get("OPSFAB_UPDATE_GOLDEN"):
        shutil.rmtree(GOLDEN, ignore_errors=True)
        shutil.copytree(out, GOLDEN)
    return out


def _tree(folder: Path) -> dict[str, Path]:
    return {str(p.relative_to(folder)): p for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_tree_holds_every_file_of_the_reference(rendered: Path):
    files = set(_tree(rendered))
    for app in ("fluent-skills", "quickpulse", "jiejiawater"):
        for env in ("prod", "dev"):
            assert f"apps/{app}/{env}/docker-compose.yml" in files
    assert {
        "apps/jiejiawater/prod/nginx-admin.conf",
        "apps/jiejiawater/dev/nginx-admin.conf",
        "infra/docker-compose.yml",
        "infra/nginx/nginx.conf",
        "infra/nginx/conf.d/00-status.conf",
        "infra/nginx/conf.d/10-fluent-skills.conf",
        "infra/nginx/conf.d/20-quickpulse.conf",
        "infra/nginx/conf.d/30-jiejiawater.conf",
        "monitoring/docker-compose.yml",
        "monitoring/prometheus/prometheus.yml",
        "monitoring/prometheus/alert-rules.yml",
        "monitoring/grafana/provisioning/datasources/datasources.yml",
        "monitoring/loki/loki.yml",
        "monitoring/promtail/promtail.yml",
        "monitoring/alertmanager/alertmanager.yml",
        "backups/scripts/backup.sh",
        "backups/scripts/opsfab.cron",
    } <= files


@pytest.mark.parametrize(
    "name", sorted(_tree(GOLDEN)) if GOLDEN.is_dir() else ["(no golden files)"]
)
def test_rendered_file_matches_golden(rendered: Path, name: str):
    produced = rendered / name
    assert produced.is_file(), f"{name} is golden but no longer rendered"
    assert produced.read_bytes() == (GOLDEN / name).read_bytes(), (
        f"{name} differs from tests/golden/{name}; if intended, regenerate (module doc)"
    )


def test_no_file_is_rendered_without_a_golden_copy(rendered: Path):
    assert set(_tree(rendered)) == set(_tree(GOLDEN))


def test_rendering_is_deterministic(tmp_path: Path):
    inventory = inventory_mod.load(INVENTORY)
    first = [(f.path, f.content, f.mode) for f in render_all(inventory)]
    again = [(f.path, f.content, f.mode) for f in render_all(inventory_mod.load(INVENTORY))]
    assert first == again


def test_scripts_are_executable_and_pass_sh_n(rendered: Path):
    for name in (
        "backups/scripts/backup.sh",
        "monitoring/scripts/container-metrics.sh",
    ):
        script = rendered / name
        assert os.access(script, os.X_OK)
        subprocess.run(["sh", "-n", str(script)], check=True)


def test_inventory_facts_reach_the_files(rendered: Path):
    """Spot checks of the reference's numbers in what is rendered."""
    qp = (rendered / "apps/quickpulse/prod/docker-compose.yml").read_text()
    assert 'mem_limit: "128m"' in qp
    redis = (rendered / "apps/fluent-skills/prod/docker-compose.yml").read_text()
    assert '"--maxmemory", "100mb"' in redis and 'mem_limit: "128m"' in redis
    jw = (rendered / "apps/jiejiawater/dev/docker-compose.yml").read_text()
    assert '"/opt/ops/secrets/jiejiawater/pg_dev_password.txt"' in jw
    assert "POSTGRES_PASSWORD_FILE" in jw and "POSTGRES_PASSWORD:" not in jw
    monitoring = (rendered / "monitoring/docker-compose.yml").read_text()
    assert "--storage.tsdb.retention.time=7d" in monitoring
    infra = (rendered / "infra/docker-compose.yml").read_text()
    assert '"0.0.0.0:3100:3100"' in infra and '"0.0.0.0:8021:8021"' in infra
    assert "\n    ports:" not in monitoring + qp + redis + jw
    cron = (rendered / "backups/scripts/opsfab.cron").read_text()
    assert "0 3 * * * root" in cron and "0 4 * * 0 root" in cron
    jw_conf = (rendered / "infra/nginx/conf.d/30-jiejiawater.conf").read_text()
    assert "limit_req zone=api" in jw_conf


# -- real tools: docker compose config and nginx -t ------------------------------------


@pytest.fixture(scope="module")
def rendered_for_tools(tmp_path_factory) -> Path:
    """The tree rendered with the ops root in a temporary folder, secret files in place.

    Compose checks that env files and secret files exist; their content does not
    matter here, so they are empty.
    """
    folder = tmp_path_factory.mktemp("ops")
    text = INVENTORY.read_text().replace('ops_root = "/opt/ops"', f'ops_root = "{folder}"')
    path = folder / "hosts.toml"
    path.write_text(text)
    inventory = inventory_mod.load(path)
    write_tree(render_all(inventory), folder, PurePosixPath(str(folder)))
    for deployment in inventory.deployments():
        for file in [deployment.env_file, *deployment.secret_files.values()]:
            Path(str(file)).parent.mkdir(parents=True, exist_ok=True)
            Path(str(file)).touch()
    from fabfile.tree import infra_secret_files

    for file in infra_secret_files(inventory).values():
        Path(str(file)).parent.mkdir(parents=True, exist_ok=True)
        Path(str(file)).touch()
    return folder


def _compose_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("docker-compose.yml"))


def test_every_compose_file_passes_docker_compose_config(rendered_for_tools: Path):
    if shutil.which("docker") is None:
        pytest.fail("docker CLI missing: bash .ci/run installs what the tests need")
    files = _compose_files(rendered_for_tools)
    assert len(files) == 8
    for file in files:
        result = subprocess.run(
            [
                "docker",
                "compose",
                "--project-directory",
                str(file.parent),
                "-f",
                str(file),
                "config",
                "-q",
            ],
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, f"{file}: {result.stderr}"


def test_the_nginx_tree_passes_a_real_nginx_t(rendered_for_tools: Path):
    """Upstream containers do not exist here: nginx resolves them per request."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        pytest.fail("nginx missing: bash .ci/run installs nginx-light")
    conf = rendered_for_tools / "infra" / "nginx" / "nginx.conf"
    result = subprocess.run(
        [nginx, "-t", "-e", "stderr", "-p", str(conf.parent) + "/", "-c", str(conf)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


def test_fab_render_all_writes_the_tree(tmp_path: Path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "fabric",
            "render",
            "--all",
            "--out",
            str(tmp_path / "out"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "OPSFAB_INVENTORY": str(INVENTORY)},
    )
    assert result.returncode == 0, result.stderr
    assert _tree(tmp_path / "out").keys() == _tree(GOLDEN).keys()
