"""A throwaway OpenSSH server on 127.0.0.1, with host key checking kept on.

``start_sshd(workdir)`` makes an ed25519 host key and client key with ssh-keygen,
writes an sshd_config, a known_hosts and an ssh_config for the client, starts
``sshd -D -e`` on a free port and waits for its banner.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SSHD = "/usr/sbin/sshd"
HOST = "127.0.0.1"
PRIVSEP_DIR = Path("/run/sshd")


class SshdError(RuntimeError):
    """sshd could not be started; the message holds the tail of its log."""


@dataclass(frozen=True)
class SshServer:
    host: str
    port: int
    user: str
    client_key: Path
    known_hosts: Path
    host_public_key: str
    workdir: Path
    ssh_config: Path
    log: Path
    pid: int

    @property
    def known_hosts_name(self) -> str:
        """The host as known_hosts names it: ``[127.0.0.1]:PORT``."""
        return f"[{self.host}]:{self.port}"


def missing_tools() -> list[str]:
    """What start_sshd needs and this machine lacks, as readable reasons."""
    reasons = []
    if not os.access(SSHD, os.X_OK):
        reasons.append(f"{SSHD} not found (Debian package openssh-server)")
    if shutil.which("ssh-keygen") is None:
        reasons.append("ssh-keygen not found (Debian package openssh-client)")
    if os.geteuid() != 0:
        reasons.append("sshd tests log in as root and must run as root")
    elif _root_password_locked():
        # With UsePAM no, sshd refuses a locked account even for key logins.
        reasons.append(
            "root's password in /etc/shadow starts with '!' (locked), so sshd "
            "refuses key logins as root: unlock it with `usermod -p '*' root`"
        )
    return reasons


def _root_password_locked() -> bool:
    try:
        lines = Path("/etc/shadow").read_text().splitlines()
    except OSError:
        return False
    return any(line.startswith("root:!") for line in lines)


@contextlib.contextmanager
def start_sshd(workdir: Path, attempts: int = 5) -> Iterator[SshServer]:
    """Run sshd for the duration of the with-block; stop it afterwards."""
    workdir.mkdir(parents=True, exist_ok=True)
    host_key = generate_keypair(workdir / "ssh_host_ed25519_key", "opsfab-test-host")
    client_key = generate_keypair(workdir / "id_ed25519", "opsfab-test-client")
    authorized_keys = workdir / "authorized_keys"
    authorized_keys.write_text(public_key(client_key) + "\n")
    PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)

    # The port is picked before sshd binds it, so another process can take it in
    # between: sshd then exits at once and the next attempt picks another port.
    for attempt in range(1, attempts + 1):
        port = free_port()
        config = _write_sshd_config(workdir, port, host_key, authorized_keys)
        log = workdir / "sshd.log"
        proc = _spawn(config, log)
        try:
            _wait_for_banner(proc, port, log)
        except SshdError:
            _stop(proc)
            if attempt == attempts or "Bind to port" not in log.read_text():
                raise
            continue
        break

    known_hosts = workdir / "known_hosts"
    host_public_key = public_key(host_key)
    known_hosts.write_text(f"[{HOST}]:{port} {host_public_key}\n")
    server = SshServer(
        host=HOST,
        port=port,
        user="root",
        client_key=client_key,
        known_hosts=known_hosts,
        host_public_key=host_public_key,
        workdir=workdir,
        ssh_config=_write_ssh_config(workdir, port, client_key, known_hosts),
        log=log,
        pid=proc.pid,
    )
    try:
        yield server
    finally:
        _stop(proc)


def write_wrong_known_hosts(server: SshServer, path: Path) -> Path:
    """Write a known_hosts that pins a different ed25519 key for the same host:port.

    A client that checks host keys must refuse the server with it, as it would
    after the server's key changed.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    other = generate_keypair(path.parent / f"{path.name}.other_key", "opsfab-wrong")
    path.write_text(f"{server.known_hosts_name} {public_key(other)}\n")
    return path


def generate_keypair(path: Path, comment: str) -> Path:
    """Make an ed25519 key pair without a passphrase; returns the private key path."""
    for stale in (path, path.with_name(path.name + ".pub")):
        stale.unlink(missing_ok=True)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        stdin=subprocess.DEVNULL,
        capture_output=True,
    )
    return path


def public_key(private_key: Path) -> str:
    """The ``ssh-ed25519 AAAA...`` part of a key's .pub file, without the comment."""
    pub = private_key.with_name(private_key.name + ".pub")
    kind, blob, *_ = pub.read_text().split()
    return f"{kind} {blob}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _write_sshd_config(workdir: Path, port: int, host_key: Path, authorized_keys: Path) -> Path:
    config = workdir / "sshd_config"
    config.write_text(
        "\n".join(
            [
                f"ListenAddress {HOST}:{port}",
                f"HostKey {host_key}",
                f"PidFile {workdir / 'sshd.pid'}",
                f"AuthorizedKeysFile {authorized_keys} .ssh/authorized_keys",
                "PermitRootLogin yes",
                "PubkeyAuthentication yes",
                "PasswordAuthentication yes",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                # The keys live in pytest's tmp dirs, whose modes sshd would reject.
                "StrictModes no",
                "Subsystem sftp internal-sftp",
                "UseDNS no",
                "PrintMotd no",
                "PrintLastLog no",
                # Parallel test connections must not be dropped before they log in.
                "MaxStartups 100:30:200",
                "MaxSessions 100",
                "LogLevel VERBOSE",
                "",
            ]
        )
    )
    return config


def _write_ssh_config(workdir: Path, port: int, client_key: Path, known_hosts: Path) -> Path:
    """An ssh_config for OpenSSH's client: ``ssh -F FILE opsfab-test``."""
    config = workdir / "ssh_config"
    config.write_text(
        "\n".join(
            [
                "Host opsfab-test",
                f"    HostName {HOST}",
                f"    Port {port}",
                "    User root",
                f"    IdentityFile {client_key}",
                "    IdentitiesOnly yes",
                f"    UserKnownHostsFile {known_hosts}",
                "    GlobalKnownHostsFile /dev/null",
                "    StrictHostKeyChecking yes",
                "    BatchMode yes",
                "",
            ]
        )
    )
    return config


def _spawn(config: Path, log: Path) -> subprocess.Popen[bytes]:
    check = subprocess.run([SSHD, "-t", "-f", str(config)], capture_output=True, text=True)
    if check.returncode != 0:
        raise SshdError(f"sshd rejected {config}:\n{check.stderr.strip()}")
    with log.open("wb") as out:
        return subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _wait_for_banner(
    proc: subprocess.Popen[bytes], port: int, log: Path, timeout: float = 15.0
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SshdError(f"sshd exited with status {proc.returncode}:\n{_tail(log)}")
        try:
            with socket.create_connection((HOST, port), timeout=2) as sock:
                if sock.recv(256).startswith(b"SSH-2.0-"):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise SshdError(f"sshd sent no banner on {HOST}:{port} in {timeout} s:\n{_tail(log)}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _tail(log: Path, lines: int = 20) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
