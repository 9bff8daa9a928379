"""Where commands run: a host over SSH (Fabric) or this machine (local transport).

Commands are argument lists. ``line()`` quotes them once, here and nowhere else, into
the shell line the host runs. Both transports run that same line through ``sh -c``, so
what a dry run prints is what runs.
"""

from __future__ import annotations

import base64
import io
import ipaddress
import logging
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import paramiko
from fabric import Config, Connection

from .errors import ConnectError, HostKeyError, RemoteCommandError
from .inventory import Host, local_env

log = logging.getLogger(__name__)
# paramiko logs its own tracebacks on connection errors; opsfab reports them itself.
logging.getLogger("paramiko").addHandler(logging.NullHandler())


class _Interrupts:
    """Ctrl-C and SIGTERM while a remote command runs are held until it returns.

    Invoke forwards a KeyboardInterrupt raised inside a running command to the remote
    side and then carries on, so the interrupt would be lost. With ``install()`` the
    signal is noted instead and raised as KeyboardInterrupt as soon as the command
    returns; between commands it is raised at once.
    """

    busy = 0
    pending = False

    @classmethod
    def install(cls) -> None:
        signal.signal(signal.SIGINT, cls._handle)
        signal.signal(signal.SIGTERM, cls._handle)

    @classmethod
    def _handle(cls, signum, frame) -> None:
        if cls.busy:
            cls.pending = True
        else:
            raise KeyboardInterrupt

    @classmethod
    def check(cls) -> None:
        if cls.pending and not cls.busy:
            cls.pending = False
            raise KeyboardInterrupt


hold_interrupts = _Interrupts.install


def line(*argvs: list[str], op: str = "&&") -> str:
    """Quote each argument list once and join them with a shell operator."""
    return f" {op} ".join(shlex.join(argv) for argv in argvs)


@dataclass
class Result:
    command: str
    stdout: str
    stderr: str
    exited: int

    @property
    def ok(self) -> bool:
        return self.exited == 0


@dataclass
class Stats:
    """What a target cost: connections opened, commands run, uploads, time waited."""

    connections: int = 0
    commands: int = 0
    uploads: int = 0
    remote_seconds: float = 0.0
    waited_seconds: float = 0.0  # sleeping between health polls: the app's time, not ours
    log: list[str] = field(default_factory=list)


class Target:
    """A host that runs shell lines and receives files."""

    name: str

    def __init__(self, name: str) -> None:
        self.name = name
        self.stats = Stats()
        self.secrets: set[str] = set()

    def add_secrets(self, values: Iterable[str]) -> None:
        """Values to mask in every output this target returns or reports."""
        for value in values:
            for piece in (value, *value.splitlines()):
                if len(piece.strip()) >= 4:
                    self.secrets.add(piece.strip())

    def redact(self, text: str) -> str:
        for secret in sorted(self.secrets, key=len, reverse=True):
            text = text.replace(secret, "[REDACTED]")
        return text

    def run(
        self,
        command: str,
        *,
        check: bool = True,
        timeout: float | None = None,
        stream: bool = False,
        fix: str | None = None,
    ) -> Result:
        started = time.perf_counter()
        _Interrupts.busy += 1
        try:
            result = self._run(command, timeout=timeout, stream=stream)
        finally:
            _Interrupts.busy -= 1
        if self.secrets:
            result.stdout, result.stderr = self.redact(result.stdout), self.redact(result.stderr)
        self.stats.commands += 1
        self.stats.remote_seconds += time.perf_counter() - started
        self.stats.log.append(command)
        log.debug("[%s] exit %s: %s", self.name, result.exited, command)
        if result.exited == -1:  # the channel closed without an exit status
            raise ConnectError(
                f"[{self.name}] lost the connection while running: {command[:200]}",
                "check the host and the network, then look at its state before retrying",
            )
        _Interrupts.check()
        if check and not result.ok:
            raise RemoteCommandError(
                self.name, command, result.exited, result.stdout + result.stderr, fix
            )
        return result

    def put(self, path: str, data: bytes) -> None:
        started = time.perf_counter()
        self._put(path, data)
        self.stats.uploads += 1
        self.stats.remote_seconds += time.perf_counter() - started
        self.stats.log.append(f"upload {len(data)} bytes -> {path}")

    def close(self) -> None:  # pragma: no cover - trivial
        pass

    def __enter__(self) -> Target:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, command: str, *, timeout: float | None, stream: bool) -> Result:
        raise NotImplementedError

    def _put(self, path: str, data: bytes) -> None:
        raise NotImplementedError


class LocalTarget(Target):
    """Run on this machine, for an operator logged in on the server itself."""

    def _run(self, command: str, *, timeout: float | None, stream: bool) -> Result:
        try:
            proc = subprocess.run(
                ["/bin/sh", "-c", command],
                stdin=subprocess.DEVNULL,
                capture_output=not stream,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            return Result(command, "", f"timed out after {timeout} s", 124)
        return Result(command, proc.stdout or "", proc.stderr or "", proc.returncode)

    def _put(self, path: str, data: bytes) -> None:
        with open(path, "wb") as handle:
            handle.write(data)


class SSHTarget(Target):
    """One SSH connection (and its SFTP channel) for everything a task does."""

    def __init__(self, name: str, host: Host, env: dict[str, str]) -> None:
        super().__init__(name)
        self.host = host
        self.env_prefix = name.upper().replace("-", "_")
        self._conn = _connection(host, env, self.env_prefix)
        self._opened = False

    def _open(self) -> Connection:
        if not self._opened:
            refuse_placeholder(self.name, self.host, self.env_prefix)
            try:
                self._conn.open()
            except paramiko.BadHostKeyException as exc:
                raise HostKeyError(
                    f"[{self.name}] the host key of {self._where} has CHANGED"
                    f" (got {exc.key.get_name()} {exc.key.fingerprint}); refusing to connect",
                    "if the server was really reinstalled, remove its old line with "
                    f"`ssh-keygen -R {self._known_name}` and trust the new key (see README, "
                    "Trusting a host); otherwise someone may be in the middle",
                ) from None
            except paramiko.SSHException as exc:
                if "not found in known_hosts" in str(exc):
                    raise HostKeyError(
                        f"[{self.name}] {self._where} is not in {self.host.known_hosts}"
                        " and no host_key is pinned; refusing an unknown host key",
                        f"check the key out of band, then `ssh-keyscan -p {self.host.port} "
                        f"{self.host.address} >> {self.host.known_hosts}` or set "
                        f"hosts.{self.name}.host_key in hosts.toml",
                    ) from None
                key = self.host.key or ""
                missing = (
                    f" (the key file {key} does not exist; set {self.env_prefix}_SSH_KEY)"
                    if key
                    and not key.lstrip().startswith("-----")
                    and not Path(key).expanduser().exists()
                    else ""
                )
                raise ConnectError(
                    f"[{self.name}] SSH to {self._where} failed: {exc}{missing}",
                    "check the user, the key (or password) and sshd on the host",
                ) from None
            except (TimeoutError, OSError) as exc:
                raise ConnectError(
                    f"[{self.name}] cannot reach {self._where}: {exc}",
                    f"check hosts.{self.name}.address and port (or {self.env_prefix}_HOST)"
                    " and that sshd runs there",
                ) from None
            self._opened = True
            self.stats.connections += 1
        return self._conn

    @property
    def _where(self) -> str:
        return f"{self.host.user}@{self.host.address}:{self.host.port}"

    @property
    def _known_name(self) -> str:
        return known_hosts_name(self.host)

    def _run(self, command: str, *, timeout: float | None, stream: bool) -> Result:
        conn = self._open()
        try:
            result = conn.run(
                command, hide=not stream, warn=True, in_stream=False, timeout=timeout, pty=False
            )
        except Exception as exc:  # invoke's CommandTimedOut and transport errors
            if type(exc).__name__ == "CommandTimedOut":
                return Result(command, "", f"timed out after {timeout} s", 124)
            raise ConnectError(f"[{self.name}] lost the connection: {exc}", "retry") from None
        return Result(command, result.stdout, result.stderr, result.exited)

    def _put(self, path: str, data: bytes) -> None:
        conn = self._open()
        try:
            conn.sftp().putfo(io.BytesIO(data), path)
        except (paramiko.SSHException, OSError) as exc:
            raise ConnectError(
                f"[{self.name}] upload to {path} failed: {exc or type(exc).__name__}",
                "opsfab uploads over SFTP: enable it in the host's sshd_config "
                "(Subsystem sftp internal-sftp) and check the folder is writable",
            ) from None

    def close(self) -> None:
        if self._opened:
            self._conn.close()
            self._opened = False


# Documentation addresses (RFC 5737, RFC 3849) route nowhere: an inventory that still
# holds one was never pointed at a real server.
PLACEHOLDER_NETWORKS = [
    ipaddress.ip_network(n)
    for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")
]


def refuse_placeholder(name: str, host: Host, prefix: str) -> None:
    try:
        address = ipaddress.ip_address(host.address)
    except ValueError:
        return
    if any(address in network for network in PLACEHOLDER_NETWORKS):
        raise ConnectError(
            f"[{name}] {host.address} is a documentation placeholder, not a server; "
            "nothing was sent",
            f"set {prefix}_HOST (environment or .env) or hosts.{name}.address to the real "
            "address; `fab deploy APP ENV --dry-run` needs no host",
        )


def known_hosts_name(host: Host) -> str:
    return host.address if host.port == 22 else f"[{host.address}]:{host.port}"


def _connection(host: Host, env: dict[str, str], prefix: str) -> Connection:
    connect_kwargs: dict = {"look_for_keys": True, "allow_agent": True}
    key = host.key
    if key and key.lstrip().startswith("-----BEGIN"):
        connect_kwargs.update(pkey=_key_from_text(key), look_for_keys=False)
    elif key:
        path = Path(key).expanduser()
        if path.exists():
            connect_kwargs.update(key_filename=str(path), look_for_keys=False)
        else:
            log.debug("key %s does not exist; trying the agent and default keys", path)
    password = env.get(f"{prefix}_PASSWORD")
    if password:
        connect_kwargs["password"] = password
    config = Config(overrides={"load_ssh_configs": False})
    conn = Connection(
        host.address,
        user=host.user,
        port=host.port,
        config=config,
        connect_timeout=host.connect_timeout,
        connect_kwargs=connect_kwargs,
    )
    # Fabric trusts unknown keys by default; opsfab never does.
    conn.client.set_missing_host_key_policy(paramiko.RejectPolicy())
    known = Path(host.known_hosts).expanduser()
    if known.exists():
        conn.client.load_host_keys(str(known))
    if host.host_key:
        kind, blob = host.host_key.split()
        pinned = paramiko.PKey.from_type_string(kind, _b64(blob))
        conn.client.get_host_keys().add(known_hosts_name(host), kind, pinned)
    return conn


def _b64(text: str) -> bytes:
    return base64.b64decode(text)


def _key_from_text(text: str) -> paramiko.PKey:
    for kind in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return kind.from_private_key(io.StringIO(text.strip() + "\n"))
        except paramiko.SSHException:
            continue
    raise ConnectError(
        "the SSH key given as text could not be read",
        "give an unencrypted OpenSSH private key or a path to one",
    )


def connect(host_name: str, host: Host, folder: Path | None = None) -> Target:
    """The target for a host of the inventory (no connection is made until used)."""
    if host.transport == "local":
        return LocalTarget(host_name)
    env = local_env(folder) if folder else dict(os.environ)
    return SSHTarget(host_name, host, env)
