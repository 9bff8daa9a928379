"""The infrastructure on its host: ``fab infra.deploy``, and ``fab diff`` for any files.

infra.deploy pushes the whole infrastructure tree (the proxy's nginx tree with every
app's conf.d file, the monitoring configs, the backup script and its schedule) and
starts or updates the ``infra`` and ``monitoring`` stacks. nginx is reloaded only after
``nginx -t`` passes inside the proxy; when it fails, every file just pushed is put back
(so the running nginx keeps serving the previous config) and the error names the file
on the host and the line nginx rejected.
"""

from __future__ import annotations

import base64
import difflib
import hashlib
import re
import time
from dataclasses import dataclass
from pathlib import PurePosixPath

from . import configs, probe
from .errors import HealthError, OpsfabError, PreflightError, UsageError
from .inventory import Host, Infra, Inventory
from .output import Reporter
from .render import RenderedFile, is_bind
from .target import Target, line
from .tree import (
    STACKS,
    compose_command,
    infra_secret_files,
    project,
    proxy_service,
    render_infra,
    stack_dir,
    stack_services,
)

NGINX_AT = re.compile(r" in (?P<path>/[^\s:]+):(?P<line>\d+)")
SECRET_LINE = re.compile(r"(?i)^(\s*[\w.-]*(?:password|secret|token|key)[\w.-]*\s*[:=]\s*).+$")


class NginxRejected(OpsfabError):
    """nginx -t failed on the pushed files; the previous ones are back."""

    exit_code = 9


@dataclass
class InfraFacts:
    network: bool
    proxy_running: bool
    hashes: dict[str, str]
    missing_secrets: list[str]


def require_infra(inventory: Inventory) -> tuple[Infra, Host]:
    if inventory.infra is None:
        raise UsageError(
            f"{inventory.path} has no [infra] section",
            'add [infra] with host = "<host>" and [infra.services.nginx]'
            " (see README.md, Inventory)",
        )
    return inventory.infra, inventory.host(inventory.infra.host)


def deploy(
    inventory: Inventory,
    target: Target | None,
    reporter: Reporter | None = None,
    files: list[RenderedFile] | None = None,
    dry_run: bool = False,
) -> list[str]:
    """Push and start the infrastructure; return the host paths that changed."""
    infra, host = require_infra(inventory)
    out = reporter or Reporter()
    files = files if files is not None else render_infra(inventory, with_app_nginx=True)
    run = InfraDeploy(inventory, infra, host, target, out, files)
    if dry_run:
        run.show()
        return [str(f.path) for f in files]
    return run.execute()


class InfraDeploy:
    """The steps of infra.deploy, each planned as shell lines before it runs."""

    def __init__(
        self,
        inventory: Inventory,
        infra: Infra,
        host: Host,
        target: Target | None,
        out: Reporter,
        files: list[RenderedFile],
    ) -> None:
        self.inventory, self.infra, self.host = inventory, infra, host
        self.target, self.out, self.files = target, out, files
        self.root = PurePosixPath(host.ops_root)
        self.proxy = proxy_service(inventory)
        self.token = time.strftime("%Y%m%dT%H%M%S") + f"-{int(time.time() * 1000) % 1000:03d}"
        self.stacks = [s for s in STACKS if stack_services(infra, s)]

    # -- plans -------------------------------------------------------------------------

    def probe_sections(self) -> list[tuple[str, str]]:
        items = probe.host_sections(self.host)
        items.append(("hashes", line(["sha256sum", "--", *[str(f.path) for f in self.files]])))
        for name, path in sorted(infra_secret_files(self.inventory).items()):
            items.append((f"secret {name}", line(["test", "-f", str(path)])))
        return items

    def push_lines(self, changed: list[RenderedFile]) -> tuple[str, str, bytes, str]:
        tar_path, stage = configs.stage_paths(self.root, self.token)
        prepare = configs.prepare_line(self.root)
        return (
            prepare,
            tar_path,
            configs.bundle(changed),
            configs.install_line(changed, tar_path, stage),
        )

    def nginx_test_line(self, running: bool) -> str:
        if running:
            return line(["docker", "exec", self.host.proxy_container, "nginx", "-t"])
        # Not running yet: test the pushed tree in a throwaway container of the proxy.
        return line(
            [
                *compose_command(self.infra, self.host, self.proxy_stack),
                "run",
                "--rm",
                "--no-deps",
                "--entrypoint",
                "nginx",
                self.proxy[0],
                "-t",
            ]
        )

    def reload_line(self) -> str:
        return line(["docker", "exec", self.host.proxy_container, "nginx", "-s", "reload"])

    def up_line(self, stack: str) -> str:
        return line(
            [
                *compose_command(self.infra, self.host, stack),
                "up",
                "-d",
                "--remove-orphans",
            ]
        )

    def schedule_line(self) -> str | None:
        dest = self.infra.backup.cron_file
        if not dest:
            return None
        src = str(self.root / "backups/scripts/opsfab.cron")
        return line(["install", "-D", "-m", "644", src, dest])

    @property
    def proxy_stack(self) -> str:
        return self.proxy[1].stack if self.proxy else "infra"

    @property
    def containers(self) -> list[str]:
        return [s.container_name(n) for n, s in self.infra.services.items()]

    # -- dry run -----------------------------------------------------------------------

    def show(self) -> None:
        self.out.say(
            f"dry run: infra.deploy to {self.infra.host}"
            f" ({self.host.user}@{self.host.address}); nothing is sent to the host"
        )
        steps = [
            ("preflight", [probe.script(self.probe_sections())]),
            (
                "network",
                [
                    line(["docker", "network", "create", self.host.shared_network])
                    + "   (only when it does not exist)"
                ],
            ),
            ("configs", [*self.push_lines(self.files)[::3]]),
            (
                "nginx",
                [
                    self.nginx_test_line(True) + "   (or in a throwaway container)",
                    self.reload_line() + "   (only when nginx -t passed)",
                ],
            ),
            ("up", [self.up_line(s) for s in self.stacks]),
            (
                "health",
                [
                    line(
                        [
                            "docker",
                            "container",
                            "inspect",
                            "--format",
                            probe.STATE_FORMAT,
                            *self.containers,
                        ]
                    )
                ],
            ),
            ("schedule", [self.schedule_line() or "(infra.backup.cron_file is unset)"]),
        ]
        for number, (name, commands) in enumerate(steps, 1):
            self.out.say(f"[{number}/{len(steps)}] {name}")
            for command in commands:
                self.out.command(command)

    # -- the real thing ----------------------------------------------------------------

    def execute(self) -> list[str]:
        total = 7
        facts = self._step(1, total, "preflight", self.preflight)
        self._step(2, total, "network", lambda: self.network(facts))
        changed = self._step(3, total, "configs", lambda: self.push(facts))
        self._step(4, total, "nginx", lambda: self.nginx(facts, changed))
        self._step(5, total, "up", self.up)
        self._step(6, total, "health", self.health)
        self._step(7, total, "schedule", self.schedule)
        return [str(f.path) for f in changed]

    def _step(self, number: int, total: int, name: str, func):
        started = time.perf_counter()
        try:
            value, detail = func()
        except OpsfabError:
            self.out.step(number, total, name, "FAILED", time.perf_counter() - started)
            raise
        self.out.step(number, total, name, "ok", time.perf_counter() - started, detail)
        return value

    def preflight(self) -> tuple[InfraFacts, str]:
        raw = probe.parse(self.target.run(probe.script(self.probe_sections()), check=False).stdout)
        hashes = {}
        for row in raw.get("hashes", (1, ""))[1].splitlines():
            parts = row.split(None, 1)
            if len(parts) == 2 and re.fullmatch(r"[0-9a-f]{64}", parts[0]):
                hashes[parts[1]] = parts[0]
        missing = [
            str(p)
            for n, p in sorted(infra_secret_files(self.inventory).items())
            if raw.get(f"secret {n}", (1, ""))[0] != 0
        ]
        facts = InfraFacts(
            raw.get("network", (1, ""))[0] == 0,
            raw.get("proxy", (1, ""))[1].strip() == "true",
            hashes,
            missing,
        )
        if missing:
            raise PreflightError(
                [
                    (
                        f"secret file {path} is missing on {self.infra.host}",
                        "create it (mode 600) with fab secrets.push, then run infra.deploy again",
                    )
                    for path in missing
                ]
            )
        state = "running" if facts.proxy_running else "not running"
        return facts, f"{self.host.proxy_container} {state}"

    def network(self, facts: InfraFacts) -> tuple[None, str]:
        if facts.network:
            return None, f"{self.host.shared_network} exists"
        self.target.run(line(["docker", "network", "create", self.host.shared_network]))
        return None, f"created {self.host.shared_network}"

    def push(self, facts: InfraFacts) -> tuple[list[RenderedFile], str]:
        changed = [
            f
            for f in self.files
            if facts.hashes.get(str(f.path)) != hashlib.sha256(f.content).hexdigest()
        ]
        if not changed:
            return changed, "no changes"
        prepare, tar_path, data, install = self.push_lines(changed)
        self.target.run(prepare)
        self.target.put(tar_path, data)
        self.target.run(install)
        return changed, f"{len(changed)} of {len(self.files)} files changed"

    def nginx(self, facts: InfraFacts, changed: list[RenderedFile]) -> tuple[None, str]:
        nginx_dir = str(self.root / self.host.conf_dir).rsplit("/", 1)[0]
        if self.proxy is None or not any(str(f.path).startswith(nginx_dir + "/") for f in changed):
            return None, "no nginx change"
        result = self.target.run(self.nginx_test_line(facts.proxy_running), check=False)
        if not result.ok:
            self.target.run(configs.restore_line([str(f.path) for f in changed]))
            raise NginxRejected(
                "nginx rejected the new config; the previous files are back"
                + (" and nginx keeps serving them" if facts.proxy_running else "")
                + ":\n"
                + self.rejection(result.stdout + result.stderr),
                "fix the file and line named above (its template or hosts.toml),"
                " check with `fab render --all` and `fab check`, then run"
                " infra.deploy again",
            )
        if not facts.proxy_running:
            return None, "nginx -t passed (the proxy starts in the next step)"
        self.target.run(self.reload_line())
        return None, "nginx -t passed, reloaded"

    def rejection(self, output: str) -> str:
        """nginx's complaint, with the container path turned into the host path."""
        lines = [
            t
            for t in output.strip().splitlines()
            if "[emerg]" in t or "[alert]" in t or "failed" in t
        ] or output.strip().splitlines()[-3:]
        return "\n".join("    " + self.host_path_in(t) for t in lines[-5:])

    def host_path_in(self, text: str) -> str:
        match = NGINX_AT.search(text)
        if not match or self.proxy is None:
            return text
        inside = match.group("path")
        for source, target in self.proxy[1].volumes.items():
            mount = target.split(":", 1)[0].rstrip("/")
            if is_bind(source) and (inside == mount or inside.startswith(mount + "/")):
                base = stack_dir(self.host, self.proxy[1].stack)
                host_path = (
                    (base / source.removeprefix("./"))
                    if source.startswith("./")
                    else PurePosixPath(source)
                )
                where = f"{host_path}{inside[len(mount) :]}, line {match.group('line')}"
                return f"{where}: {text}"
        return text

    def up(self) -> tuple[None, str]:
        for stack in self.stacks:
            self.target.run(self.up_line(stack))
        return None, ", ".join(project(self.infra, s) for s in self.stacks)

    def health(self) -> tuple[None, str]:
        settings = self.infra.deploy
        deadline = time.monotonic() + settings.health_tries * settings.health_timeout
        while True:
            states = probe.container_states(self.target, self.containers)
            for name in self.containers:
                state = states.get(name)
                if (
                    state is None
                    or state.status in ("exited", "dead")
                    or state.health == "unhealthy"
                ):
                    why = (
                        "does not exist" if state is None else f"is {state.status}/{state.health}"
                    )
                    raise HealthError(
                        f"{name} {why}",
                        f"read `docker logs {name}` on {self.infra.host}",
                    )
            if all(states[c].healthy for c in self.containers):
                return None, f"{len(self.containers)} containers healthy"
            if time.monotonic() >= deadline:
                waiting = ", ".join(c for c in self.containers if not states[c].healthy)
                raise HealthError(
                    f"not healthy after {settings.health_tries} x"
                    f" {settings.health_timeout} s: {waiting}",
                    "read their logs; raise infra.deploy.health_timeout if they start slowly",
                )
            time.sleep(settings.health_poll)

    def schedule(self) -> tuple[None, str]:
        command = self.schedule_line()
        if command is None:
            return None, "not installed (infra.backup.cron_file is unset)"
        self.target.run(command)
        return None, str(self.infra.backup.cron_file)


# -- fab diff --------------------------------------------------------------------------


def diff(target: Target, files: list[RenderedFile]) -> list[str]:
    """A unified diff per file between the host and the rendered version; [] when equal.

    Files are read in one command. Lines that look like a secret assignment are masked
    on both sides, so a hand-edited file on the host never shows a secret here.
    """
    items = [(str(f.path), line(["base64", "--", str(f.path)])) for f in files]
    raw = probe.parse(target.run(probe.script(items), check=False).stdout)
    out = []
    for file in files:
        rc, text = raw.get(str(file.path), (1, ""))
        current = base64.b64decode(text) if rc == 0 else None
        if current == file.content:
            continue
        old = [] if current is None else _masked(current)
        label = f"{file.path} (missing on the host)" if current is None else str(file.path)
        out += difflib.unified_diff(
            old,
            _masked(file.content),
            fromfile=f"host:{label}",
            tofile=f"rendered:{file.path}",
            lineterm="",
        )
    return out


def _masked(content: bytes) -> list[str]:
    text = content.decode("utf-8", errors="replace").splitlines()
    return [SECRET_LINE.sub(r"\1<masked>", t) for t in text]
