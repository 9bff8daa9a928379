"""The proxy for real: infra.deploy over the fixtures' sshd, a real nginx container on a
real Docker network, a test app deployed behind it, requests on 127.0.0.1.

Covers issue 3: the shared network created on a bare host, the proxy reaching the app
by its container name, the proxy starting and serving while the app is down, a broken
conf.d refused with the old config still answering, and a misspelled upstream caught
by `fab check` while nginx still starts.
"""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from fabfile import inventory as inventory_mod
from fabfile.infra import NginxRejected
from fabfile.infra import deploy as deploy_infra
from fabfile.output import Reporter
from fabfile.target import connect
from fabfile.tree import render_infra
from tests.support.deployenv import DeployEnv, write_secrets
from tests.support.docker import docker, remove_docker_resources
from tests.support.gitrepo import APP_PORT
from tests.support.nginx_image import NginxMissing, ensure_nginx_image


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# No proxy from the environment: every request stays on 127.0.0.1.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def get(port: int, path: str = "/") -> tuple[int, str]:
    try:
        with _OPENER.open(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode().strip()
    except urllib.error.HTTPError as error:
        return error.code, ""


def wait_for(port: int, path: str, status: int, seconds: float = 20) -> tuple[int, str]:
    deadline = time.monotonic() + seconds
    while True:
        try:
            got = get(port, path)
        except OSError:
            got = (0, "")
        if got[0] == status or time.monotonic() > deadline:
            return got
        time.sleep(0.3)


@pytest.fixture(scope="session")
def nginx_image(docker_engine: str, base_image: str) -> str:
    try:
        return ensure_nginx_image()
    except NginxMissing as error:
        from tests.support.ci import unavailable

        unavailable(str(error))


@pytest.fixture
def proxied(sshd, nginx_image, docker_prefix, origin_repo, tmp_path):
    app = docker_prefix
    ops_root = tmp_path / "ops"
    ops_root.mkdir()
    status, prod, dev = free_port(), free_port(), free_port()
    inventory = tmp_path / "hosts.toml"
    inventory.write_text(
        INVENTORY.format(
            app=app,
            sshd=sshd,
            ops_root=ops_root,
            origin=origin_repo.url,
            port=APP_PORT,
            status=status,
            prod=prod,
            dev=dev,
            image=nginx_image,
            cron=tmp_path / "cron.d" / "opsfab",
        )
    )
    write_secrets(ops_root, app, "prod")
    env = DeployEnv(app, inventory, ops_root, origin_repo, sshd, f"{app}-infra")
    env.ports = {"status": status, "prod": prod, "dev": dev}
    yield env
    remove_docker_resources(prefixes=[app], labels=[f"org.opsfab.deployment={app}-prod"])
    docker(
        "rmi",
        "-f",
        f"opsfab/{app}-prod:latest",
        f"opsfab/{app}-prod:rollback",
        check=False,
    )


def test_proxy_routes_by_container_name_survives_a_stopped_app_and_refuses_bad_config(
    proxied,
):
    env, ports, proxy = proxied, proxied.ports, f"{proxied.app}-nginx"
    # A bare host: the shared network does not exist yet; infra.deploy creates it.
    assert docker("network", "inspect", env.shared_network, check=False).returncode != 0
    first = env.fab("infra.deploy")
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"created {env.shared_network}" in first.stdout
    assert env.inspect(proxy, "{{.State.Health.Status}}") == "healthy"
    assert get(ports["status"], "/health") == (200, "ok")
    assert (Path(env.ops_root).parent / "cron.d" / "opsfab").is_file()
    # The app is not deployed yet: its port answers 502 and nginx runs regardless.
    assert get(ports["prod"], "/health")[0] == 502

    again = env.fab("infra.deploy")
    assert again.returncode == 0 and "no changes" in again.stdout, again.stdout + again.stderr
    same = env.fab("infra.diff")
    assert same.returncode == 0 and same.stdout.startswith("no changes"), same.stderr
    before_deploy = env.fab("diff", env.app, "prod")
    assert "docker-compose.yml (missing on the host)" in before_deploy.stdout
    assert f"20-{env.app}.conf (missing" not in before_deploy.stdout

    # Deploying the app: the request to the proxy's port reaches it by container name.
    deployed = env.fab("deploy", env.app, "prod")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    assert wait_for(ports["prod"], "/health", 200) == (200, "ok v1")

    # A broken conf.d: refused by nginx -t, the previous file is back and still serves.
    inventory = inventory_mod.load(env.inventory)
    files = render_infra(inventory, with_app_nginx=True)
    conf = next(f for f in files if f.path.name == f"20-{env.app}.conf")
    before = Path(str(conf.path)).read_bytes()
    broken = conf.content.replace(b"server_name _;", b"server_name _;\n    proxy_bogus on;", 1)
    files = [f if f is not conf else type(f)(f.path, broken, f.mode, f.template) for f in files]
    host = inventory.host(inventory.infra.host)
    with (
        connect(inventory.infra.host, host, env.inventory.parent) as target,
        pytest.raises(NginxRejected) as refused,
    ):
        deploy_infra(inventory, target, Reporter(quiet=True), files=files)
    message = refused.value.message
    assert f"{conf.path}, line 9" in message and 'unknown directive "proxy_bogus"' in message
    assert Path(str(conf.path)).read_bytes() == before
    assert get(ports["prod"], "/health") == (200, "ok v1")

    # A misspelled upstream in a hand-made conf.d file: fab check names it; nginx,
    # resolving names per request, still starts and serves the others.
    typo = Path(str(conf.path)).parent / "25-typo.conf"
    typo.write_text(TYPO.format(port=ports["dev"], name=f"{env.app}-prdo", app_port=APP_PORT))
    checked = env.fab("check", "--tree", str(env.ops_root))
    assert checked.returncode != 0
    assert f"upstream '{env.app}-prdo' is not a container name" in checked.stdout
    assert f"did you mean '{env.app}-prod'?" in checked.stdout
    docker("restart", proxy)
    assert wait_for(ports["status"], "/health", 200) == (200, "ok")
    assert get(ports["prod"], "/health") == (200, "ok v1")
    typo.unlink()

    # The app stopped: the proxy still (re)starts and serves its own pages.
    docker("stop", env.container("prod"))
    docker("restart", proxy)
    assert wait_for(ports["status"], "/health", 200) == (200, "ok")
    assert env.inspect(proxy, "{{.State.Running}}") == "true"
    assert wait_for(ports["prod"], "/health", 502)[0] == 502


INVENTORY = """
[hosts.testhost]
address = "{sshd.host}"
port = {sshd.port}
user = "{sshd.user}"
key = "{sshd.client_key}"
known_hosts = "{sshd.known_hosts}"
ops_root = "{ops_root}"
memory = "4g"
min_free_mb = 100
shared_network = "{app}-infra"
proxy_container = "{app}-nginx"

[apps.{app}]
host = "testhost"
repo = "{origin}"
nginx_order = 20
required_secrets = ["KINGDEE_APP_SECRET"]

[apps.{app}.envs.prod]
branch = "main"

[apps.{app}.deploy]
health_tries = 3
health_timeout = 10
health_poll = 0.5

[apps.{app}.services.app]
container = "{app}-{{env}}"
build = "."
port = {port}
memory = "64m"
publish = {{ prod = {prod} }}
env_file = true
networks = ["{app}-{{env}}-net", "{app}-infra"]
health = {{ http = "/health", interval = 1, timeout = 1, retries = 2 }}

[infra]
host = "testhost"
project_prefix = "{app}"

[infra.nginx]
status_port = {status}
bind = "127.0.0.1"
limit_envs = {{ prod = "general" }}
rate_limits.general = {{ rate = "100r/s", burst = 100 }}

[infra.backup]
envs = []
cron_file = "{cron}"

[infra.deploy]
health_tries = 3
health_timeout = 10
health_poll = 0.5

[infra.services.nginx]
stack = "infra"
container = "{app}-nginx"
image = "{image}"
memory = "32m"
volumes = {{ "./nginx" = "/etc/nginx:ro" }}
networks = ["{app}-infra"]
health = {{ http = "/health", interval = 1, timeout = 1, retries = 3 }}
"""

TYPO = """server {{
    listen {port};
    location / {{
        resolver 127.0.0.11 valid=10s ipv6=off;
        set $upstream_typo http://{name}:{app_port};
        proxy_pass $upstream_typo;
    }}
}}
"""


def test_diff_masks_what_looks_like_a_secret_on_either_side():
    from fabfile.infra import _masked

    text = b"GF_ADMIN_PASSWORD=hunter2\nkeepalive_timeout 65;\napi_key: abc\n"
    assert _masked(text) == [
        "GF_ADMIN_PASSWORD=<masked>",
        "keepalive_timeout 65;",
        "api_key: <masked>",
    ]
