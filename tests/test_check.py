"""`fab check`: one failing inventory per lint, each problem naming key and fix."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fabfile import check
from fabfile import inventory as inventory_mod
from fabfile.errors import InventoryError

ROOT = Path(__file__).resolve().parent.parent

BASE = """
[hosts.h]
address = "127.0.0.1"
port = 9
memory = "2g"

[apps.shop]
host = "h"
repo = "/nonexistent/shop.git"
nginx_order = 10

[apps.shop.envs.prod]
branch = "main"

[apps.shop.envs.dev]
branch = "develop"

[apps.shop.services.web]
container = "shop-{env}"
build = "."
port = 3000
memory = { prod = "256m", dev = "128m" }
publish = { prod = 8001, dev = 8002 }
volumes = { "shop-{env}-data" = "/data" }
networks = ["shop-{env}-net", "ops-infra"]
health = { http = "/health", interval = 10, retries = 3, start_period = 20 }

[apps.blog]
host = "h"
repo = "/nonexistent/blog.git"
nginx_order = 20

[apps.blog.envs.prod]
branch = "main"

[apps.blog.services.web]
container = "blog-{env}"
build = "."
port = 8000
memory = "128m"
publish = { prod = 8003 }
networks = ["blog-{env}-net", "ops-infra"]
health = { http = "/health" }

[infra]
host = "h"

[infra.nginx]
rate_limits.general = { rate = "10r/s" }

[infra.services.nginx]
stack = "infra"
image = "nginx:1.25-alpine"
memory = "32m"
volumes = { "./nginx" = "/etc/nginx:ro" }
networks = ["ops-infra"]
health = { http = "/health" }

[infra.services.grafana]
stack = "monitoring"
image = "grafana/grafana-oss:10.4.5"
port = 3000
publish = 3100
memory = "96m"
networks = ["ops-monitoring", "ops-infra"]
health = { http = "/api/health" }
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "hosts.toml"
    path.write_text(text)
    return path


def problems(tmp_path: Path, text: str) -> list[tuple[str, str]]:
    return check.run(write(tmp_path, text)).problems


def keys(found: list[tuple[str, str]]) -> list[str]:
    return [key for key, _ in found]


def test_the_base_inventory_is_clean_and_prints_the_memory_sum(tmp_path):
    report = check.run(write(tmp_path, BASE))
    assert report.problems == []
    assert report.memory == [
        "memory on h: limits add up to 640 MB (apps 512 MB, infrastructure"
        " 128 MB) of the host's 2048 MB: fits"
    ]


def test_the_real_inventory_is_clean():
    report = check.run(ROOT / "hosts.toml")
    assert report.problems == []
    assert "limits add up to 3408 MB" in report.memory[0] and "7270 MB" in report.memory[0]


def test_two_deployments_on_one_port(tmp_path):
    found = problems(
        tmp_path, BASE.replace("publish = { prod = 8003 }", "publish = { prod = 8001 }")
    )
    assert keys(found) == ["apps.blog.services.web.publish.prod"]
    assert "port 8001 is already used by shop prod" in found[0][1] and "fab ports" in found[0][1]


def test_an_app_port_taken_by_the_infrastructure(tmp_path):
    found = problems(
        tmp_path, BASE.replace("publish = { prod = 8003 }", "publish = { prod = 3100 }")
    )
    assert keys(found) == ["apps.blog.services.web.publish.prod"]
    assert "infra.services.grafana.publish" in found[0][1]


def test_two_containers_with_one_name(tmp_path):
    found = problems(
        tmp_path, BASE.replace('container = "blog-{env}"', 'container = "shop-{env}"')
    )
    assert keys(found) == ["apps.blog.services.web.container"]
    assert "'shop-prod' is also used by apps.shop.services.web (prod)" in found[0][1]


def test_an_infra_container_named_like_an_app_container(tmp_path):
    found = problems(
        tmp_path,
        BASE.replace(
            'image = "grafana/grafana-oss:10.4.5"',
            'image = "grafana/grafana-oss:10.4.5"\ncontainer = "blog-prod"',
        ),
    )
    assert keys(found) == ["infra.services.grafana.container"]


def test_an_nginx_upstream_that_is_not_a_container(tmp_path):
    conf = tmp_path / "tree" / "infra" / "nginx" / "conf.d" / "10-shop.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text(
        "server {\n    listen 8001;\n    location / {\n"
        "        set $u http://shop-prdo:3000;\n        proxy_pass $u;\n    }\n}\n"
    )
    report = check.run(write(tmp_path, BASE), tree=tmp_path / "tree")
    assert keys(report.problems) == [f"{conf}:4"]
    assert "upstream 'shop-prdo' is not a container name" in report.problems[0][1]
    assert "did you mean 'shop-prod'?" in report.problems[0][1]


def test_a_literal_proxy_pass_keeps_nginx_from_starting_when_the_app_is_down(tmp_path):
    conf = tmp_path / "tree" / "20-blog.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text(
        "server {\n    listen 8003;\n    location / { proxy_pass http://blog-prod:8000; }\n}\n"
    )
    report = check.run(write(tmp_path, BASE), tree=tmp_path / "tree")
    assert keys(report.problems) == [f"{conf}:3"]
    assert "nginx refuses to start while that container is down" in report.problems[0][1]


def test_the_rendered_nginx_tree_is_linted_too(tmp_path):
    assert check.lint_rendered_nginx(inventory_mod.load(write(tmp_path, BASE))) == []


def test_a_proxied_service_missing_from_the_shared_network(tmp_path):
    found = problems(
        tmp_path,
        BASE.replace(
            'networks = ["blog-{env}-net", "ops-infra"]',
            'networks = ["blog-{env}-net"]',
        ),
    )
    assert keys(found) == ["apps.blog.services.web.networks"]
    assert "only over 'ops-infra'; add it to networks" in found[0][1]


def test_a_proxied_infra_service_missing_from_the_shared_network(tmp_path):
    found = problems(
        tmp_path,
        BASE.replace(
            'networks = ["ops-monitoring", "ops-infra"]',
            'networks = ["ops-monitoring"]',
        ),
    )
    assert keys(found) == ["infra.services.grafana.networks"]


def test_a_container_publishing_a_host_port(tmp_path):
    found = problems(tmp_path, BASE.replace("publish = 3100\n", "ports = [3100]\n"))
    assert keys(found) == ["infra.services.grafana.ports"]
    assert "only the proxy ops-nginx may" in found[0][1] and "publish = <port>" in found[0][1]


def test_memory_limits_above_the_host(tmp_path):
    text = BASE.replace('memory = "2g"', 'memory = "600m"')
    report = check.run(write(tmp_path, text))
    assert keys(report.problems) == ["hosts.h.memory"]
    assert "add up to 640 MB, more than the host's 600 MB" in report.problems[0][1]
    assert report.memory[0].endswith("of the host's 600 MB: EXCEEDS the host")


def test_a_service_without_a_health_check(tmp_path):
    found = problems(
        tmp_path, BASE.replace('health = { http = "/health" }\n\n[infra]', "\n[infra]")
    )
    assert keys(found) == ["apps.blog.services.web.health"]
    assert "no health check" in found[0][1]


def test_a_health_check_the_deploy_cannot_wait_for(tmp_path):
    health = 'health = { http = "/health", interval = 10, retries = 3, start_period = 20 }'
    found = problems(tmp_path, BASE.replace(health, health.replace("10", "60")))
    assert keys(found) == ["apps.shop.services.web.health"]
    assert "20 + 3 x 60 = 200 s, but the deploy waits 5 x 30 = 150 s" in found[0][1]


@pytest.mark.parametrize(
    "old, new, key",
    [
        (
            'networks = ["shop-{env}-net", "ops-infra"]',
            'networks = ["shop-net", "ops-infra"]',
            "apps.shop.services.web.networks",
        ),
        (
            'volumes = { "shop-{env}-data" = "/data" }',
            'volumes = { "shop-data" = "/data" }',
            "apps.shop.services.web.volumes",
        ),
        (
            'volumes = { "shop-{env}-data" = "/data" }',
            'volumes = { "shop-{env}-data" = "/data" }\n'
            'secrets = { db_password = "db_password.txt" }',
            "apps.shop.services.web.secrets",
        ),
    ],
)
def test_prod_and_dev_sharing_a_network_volume_or_secret(tmp_path, old, new, key):
    found = problems(tmp_path, BASE.replace(old, new))
    assert keys(found) == [key]
    assert "prod share the" in found[0][1] and "{env}" in found[0][1]


def test_an_undefined_rate_limit_zone(tmp_path):
    found = problems(
        tmp_path,
        BASE.replace(
            "publish = { prod = 8003 }",
            'publish = { prod = 8003 }\nrate_limit = { prod = { "/api/" = "api" } }',
        ),
    )
    assert keys(found) == ["apps.blog.services.web.rate_limit.prod"]
    assert "[infra.nginx.rate_limits.api]" in found[0][1]


def test_redis_maxmemory_must_stay_under_the_limit(tmp_path):
    redis = (
        BASE
        + """
[apps.blog.services.redis]
container = "redis-blog-{env}"
image = "redis:7-alpine"
memory = "64m"
maxmemory = "64mb"
command = ["redis-server"]
networks = ["blog-{env}-net"]
health = { cmd = ["redis-cli", "ping"] }
"""
    )
    found = problems(tmp_path, redis)
    assert keys(found) == ["apps.blog.services.redis.maxmemory"]


def test_every_problem_at_once_one_line_each(tmp_path):
    text = BASE.replace("publish = { prod = 8003 }", "publish = { prod = 8001 }").replace(
        'networks = ["shop-{env}-net", "ops-infra"]',
        'networks = ["shop-net", "ops-infra"]',
    )
    report = check.run(write(tmp_path, text))
    lines = report.lines()
    assert len(report.problems) == 2
    assert all(line.startswith(str(tmp_path / "hosts.toml") + ": ") for line in lines[:2])


# -- the command line ------------------------------------------------------------------


def fab(path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fabric", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "OPSFAB_INVENTORY": str(path)},
        timeout=120,
    )


def test_fab_check_exits_non_zero_with_a_line_per_problem(tmp_path):
    path = write(tmp_path, BASE.replace('container = "blog-{env}"', 'container = "shop-{env}"'))
    result = fab(path, "check")
    assert result.returncode == 2
    assert f"{path}: apps.blog.services.web.container: container name 'shop-prod'" in result.stdout
    assert "memory on h: limits add up to" in result.stdout


def test_fab_check_passes_on_a_clean_inventory(tmp_path):
    result = fab(write(tmp_path, BASE), "check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no problems" in result.stdout


def test_two_apps_with_one_container_name_are_refused_before_anything_runs(tmp_path):
    """A public report: two compose apps given one container_name; the second `up`
    silently replaced the first. Here the inventory is refused at load: no connection
    is attempted (the host's port 9 would refuse it) and no step starts."""
    path = write(tmp_path, BASE.replace('container = "blog-{env}"', 'container = "shop-{env}"'))
    with pytest.raises(InventoryError):
        inventory_mod.load(path)
    result = fab(path, "deploy", "blog", "prod")
    assert result.returncode == 2
    assert "container name 'shop-prod' is also used by" in result.stderr
    assert "[ 1/" not in result.stdout and "cannot reach" not in result.stderr


def test_fab_ports_prints_the_port_map(tmp_path):
    result = fab(write(tmp_path, BASE), "ports")
    assert result.returncode == 0, result.stderr
    rows = [row.split()[:2] for row in result.stdout.splitlines()[1:]]
    assert rows == [
        ["h", "80"],
        ["h", "3100"],
        ["h", "8001"],
        ["h", "8002"],
        ["h", "8003"],
    ]
