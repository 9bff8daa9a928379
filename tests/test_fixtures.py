"""The integration fixtures do what the deploy tests rely on."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import fabric
import paramiko
import pytest

from tests.support.docker import (
    build_image,
    docker,
    remove_docker_resources,
    unique_name,
)
from tests.support.gitrepo import OriginRepo, git
from tests.support.images import ensure_busybox_image
from tests.support.sshd import SshServer

pytestmark = pytest.mark.integration


def connect(server: SshServer, known_hosts: Path) -> paramiko.SSHClient:
    """Log in as the library must: with the key, checking the host key."""
    client = paramiko.SSHClient()
    client.load_host_keys(str(known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(
        server.host,
        port=server.port,
        username=server.user,
        key_filename=str(server.client_key),
        look_for_keys=False,
        allow_agent=False,
        timeout=10,
    )
    return client


class TestSshd:
    def test_known_hosts_pins_the_host_key(self, sshd: SshServer) -> None:
        assert sshd.host_public_key.startswith("ssh-ed25519 AAAA")
        assert sshd.known_hosts.read_text() == (
            f"[127.0.0.1]:{sshd.port} {sshd.host_public_key}\n"
        )

    def test_runs_a_command_with_host_key_checking_on(self, sshd: SshServer) -> None:
        with connect(sshd, sshd.known_hosts) as client:
            _, stdout, _ = client.exec_command("echo hi")
            assert stdout.read() == b"hi\n"
            assert stdout.channel.recv_exit_status() == 0

    def test_sftp_put_and_get(self, sshd: SshServer, tmp_path: Path) -> None:
        sent, remote, back = tmp_path / "sent", tmp_path / "remote", tmp_path / "back"
        sent.write_bytes(b"payload \x00\xff\n")
        with connect(sshd, sshd.known_hosts) as client, client.open_sftp() as sftp:
            sftp.put(str(sent), str(remote))
            sftp.get(str(remote), str(back))
        assert back.read_bytes() == remote.read_bytes() == sent.read_bytes()

    def test_changed_host_key_is_rejected(self, sshd: SshServer, wrong_known_hosts: Path) -> None:
        assert wrong_known_hosts.read_text().startswith(f"[127.0.0.1]:{sshd.port} ")
        with pytest.raises(paramiko.BadHostKeyException):
            connect(sshd, wrong_known_hosts)

    def test_unknown_host_is_rejected(self, sshd: SshServer, tmp_path: Path) -> None:
        empty = tmp_path / "known_hosts"
        empty.write_text("")
        with pytest.raises(paramiko.SSHException, match="not found in known_hosts"):
            connect(sshd, empty)

    def test_fabric_runs_and_uploads(self, sshd: SshServer, tmp_path: Path) -> None:
        # Fabric's Connection adds unknown hosts by default; checking must be forced.
        conn = fabric.Connection(
            sshd.host,
            user=sshd.user,
            port=sshd.port,
            connect_kwargs={"key_filename": str(sshd.client_key)},
        )
        conn.client.load_host_keys(str(sshd.known_hosts))
        conn.client.set_missing_host_key_policy(paramiko.RejectPolicy())
        local = tmp_path / "local.txt"
        local.write_text("uploaded\n")
        with conn:
            conn.put(str(local), str(tmp_path / "remote.txt"))
            # in_stream=False: Invoke reads stdin otherwise, which pytest refuses.
            command = f"cat {tmp_path / 'remote.txt'}"
            result = conn.run(command, hide=True, in_stream=False)
        assert result.stdout == "uploaded\n"

    def test_openssh_client_logs_in_with_the_ssh_config(self, sshd: SshServer) -> None:
        result = subprocess.run(
            ["ssh", "-F", str(sshd.ssh_config), "opsfab-test", "echo", "hi"],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=30,
        )
        assert (result.returncode, result.stdout) == (0, "hi\n"), result.stderr


class TestDocker:
    def test_compose_is_v2_or_later(self, docker_engine: str) -> None:
        assert int(re.match(r"v?(\d+)", docker_engine).group(1)) >= 2

    def test_base_image_runs_busybox_httpd(self, base_image: str, docker_prefix: str) -> None:
        script = (
            "echo served > /tmp/index.html"
            " && httpd -p 127.0.0.1:8000 -h /tmp"
            " && wget -q -O - http://127.0.0.1:8000/index.html"
            " && grep ^root: /etc/passwd"
        )
        name = f"{docker_prefix}-httpd"
        result = docker("run", "--rm", "--name", name, base_image, "sh", "-c", script)
        assert result.stdout.splitlines() == ["served", "root:x:0:0:root:/root:/bin/sh"]

    def test_image_builder_imports_a_fresh_image(
        self, docker_engine: str, docker_prefix: str
    ) -> None:
        name = ensure_busybox_image(f"{docker_prefix}-busybox:test")
        config = docker("image", "inspect", name, "--format", "{{json .Config.Env}}")
        assert config.stdout.strip() == '["PATH=/bin"]'
        assert docker("run", "--rm", name, "busybox", "true").returncode == 0

    def test_cleanup_removes_by_prefix_and_spares_the_base_image(self, base_image: str) -> None:
        prefix = unique_name("opsfab-t")
        docker("tag", base_image, f"{prefix}-tagged:latest")
        docker("tag", base_image, f"opsfab/{prefix}-prod:latest")
        docker("volume", "create", f"{prefix}_data")
        docker("network", "create", f"{prefix}_default")
        docker("create", "--name", f"{prefix}-web-1", base_image)
        removed = remove_docker_resources(prefixes=[prefix])
        assert sorted(removed) == sorted(
            [
                f"container {prefix}-web-1",
                f"image opsfab/{prefix}-prod:latest",
                f"image {prefix}-tagged:latest",
                f"network {prefix}_default",
                f"volume {prefix}_data",
            ]
        )
        assert docker("image", "inspect", base_image, check=False).returncode == 0


class TestOriginRepo:
    def test_main_and_develop_are_pushed(self, origin_repo: OriginRepo) -> None:
        assert re.fullmatch(r"[0-9a-f]{40}", origin_repo.head("main"))
        assert origin_repo.head("develop") == origin_repo.head("main")

    def test_commits_land_on_their_branch(self, origin_repo: OriginRepo, tmp_path: Path) -> None:
        main = origin_repo.head("main")
        sha = origin_repo.commit_version("ok v2", branch="develop")
        assert origin_repo.head("develop") == sha
        assert origin_repo.head("main") == main
        checkout = origin_repo.clone(tmp_path / "co", branch="develop")
        assert (checkout / "www" / "health").read_text() == "ok v2\n"
        assert git("-C", str(checkout), "rev-parse", "HEAD") == sha

    def test_bad_commits_then_a_good_one(self, origin_repo: OriginRepo) -> None:
        origin_repo.commit_unhealthy()
        assert not (origin_repo.work / "www" / "health").exists()
        origin_repo.commit_crash()
        assert "exit 1" in (origin_repo.work / "Dockerfile").read_text()
        origin_repo.commit_build_failure()
        assert "false" in (origin_repo.work / "Dockerfile").read_text()
        sha = origin_repo.commit_version("ok v3")
        assert origin_repo.head() == sha
        assert (origin_repo.work / "www" / "health").read_text() == "ok v3\n"
        assert "RUN" not in (origin_repo.work / "Dockerfile").read_text()


class App:
    """Builds and runs checkouts of the origin under one test's docker prefix."""

    def __init__(self, origin: OriginRepo, prefix: str, tmp_path: Path) -> None:
        self.origin, self.tmp_path = origin, tmp_path
        self.tag, self.container = f"{prefix}-app:test", f"{prefix}-app"

    def build(self) -> subprocess.CompletedProcess[str]:
        checkout = self.origin.clone(self.tmp_path / "checkout")
        return build_image(str(checkout), self.tag)

    def start(self) -> None:
        docker("run", "-d", "--name", self.container, self.tag)

    def get_health(self) -> subprocess.CompletedProcess[str]:
        """GET /health from inside the container, once httpd listens."""
        url = "http://127.0.0.1:8000/health"
        deadline = time.monotonic() + 10
        while True:
            get = ["exec", self.container, "wget", "-q", "-O", "-", url]
            result = docker(*get, check=False)
            if "refused" not in result.stderr or time.monotonic() > deadline:
                return result
            time.sleep(0.1)


class TestOriginRepoBuilds:
    @pytest.fixture
    def app(
        self,
        origin_repo: OriginRepo,
        base_image: str,
        docker_prefix: str,
        tmp_path: Path,
    ) -> App:
        return App(origin_repo, docker_prefix, tmp_path)

    def test_healthy_commit_builds_and_serves_its_version(self, app: App) -> None:
        app.origin.commit_version("ok v2")
        build = app.build()
        assert build.returncode == 0, build.stderr
        app.start()
        health = app.get_health()
        assert (health.returncode, health.stdout) == (0, "ok v2\n"), health.stderr

    def test_unhealthy_commit_runs_but_health_is_404(self, app: App) -> None:
        app.origin.commit_unhealthy()
        assert app.build().returncode == 0
        app.start()
        health = app.get_health()
        assert health.returncode != 0
        assert "404" in health.stderr

    def test_build_failure_commit_fails_to_build(self, app: App) -> None:
        app.origin.commit_build_failure()
        build = app.build()
        assert build.returncode != 0
        assert "fails on purpose" in build.stdout + build.stderr

    def test_crash_commit_exits_1(self, app: App) -> None:
        app.origin.commit_crash()
        assert app.build().returncode == 0
        run = docker("run", "--name", app.container, app.tag, check=False)
        assert run.returncode == 1
        assert "crashing on purpose" in run.stderr
