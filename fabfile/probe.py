"""Read everything a deploy needs to know about the host in one round trip.

The probe is one shell script made of labelled sections. Each section is a command
built from argument lists; its output and exit status come back under its label.
Nothing here changes the host, and no section prints a secret: container state is
read with explicit ``--format`` fields, never ``{{json .}}`` (that holds the env).
"""

from __future__ import annotations

import io
import re
import shlex
from dataclasses import dataclass, field

from dotenv import dotenv_values

from .inventory import Deployment, Host
from .target import Target, line

MARK = "@@opsfab"
CURRENT_REF = "refs/opsfab/current"  # the commit of the last successful deploy
ROLLBACK_REF = "refs/opsfab/rollback"  # the commit that ran before it
STATE_FORMAT = (
    "{{.Name}}|{{.Id}}|{{.Image}}|{{.State.Status}}|"
    '{{if index .State "Health"}}{{.State.Health.Status}}{{else}}none{{end}}|'
    "{{.RestartCount}}|{{.State.ExitCode}}|{{.State.StartedAt}}"
)


@dataclass(frozen=True)
class ContainerState:
    name: str
    id: str
    image: str
    status: str
    health: str
    restarts: int
    exit_code: int
    started_at: str

    @property
    def healthy(self) -> bool:
        return self.status == "running" and self.health in ("healthy", "none")


@dataclass
class Facts:
    docker_version: str | None = None
    docker_error: str = ""
    compose_version: str | None = None
    compose_error: str = ""
    docker_root: str = ""
    free_mb: int | None = None
    shared_network: bool = False
    env_file_present: bool = False
    secret_keys: list[str] = field(default_factory=list)
    lock_holder: str | None = None
    repo_head: str | None = None
    current_commit: str | None = None
    rollback_commit: str | None = None
    ops_free_mb: int | None = None
    env_text: str | None = field(default=None, repr=False)
    secret_values: list[str] = field(default_factory=list, repr=False)
    images: dict[str, str | None] = field(default_factory=dict)
    rollback_images: dict[str, str | None] = field(default_factory=dict)
    containers: dict[str, ContainerState] = field(default_factory=dict)
    volumes: set[str] = field(default_factory=set)
    file_hashes: dict[str, str] = field(default_factory=dict)
    proxy_running: bool = False


def sections(deployment: Deployment, files: list[str]) -> list[tuple[str, str]]:
    """(label, shell line) for every fact the deploy reads."""
    d = deployment
    host = d.host
    items = [
        ("docker", line(["docker", "version", "--format", "{{.Server.Version}}"])),
        ("compose", line([*host.compose, "version", "--short"])),
        (
            "disk",
            'root=$(docker info --format "{{.DockerRootDir}}" 2>/dev/null) || root=/; '
            'echo "$root"; df -Pk "$root"',
        ),
        *host_sections(host),
        ("lock", line(["cat", str(d.lock_dir / "holder")])),
        ("repo", line(["git", "-C", str(d.repo_dir), "rev-parse", "--verify", "HEAD"])),
        ("current", line(["git", "-C", str(d.repo_dir), "rev-parse", "--verify", CURRENT_REF])),
        (
            "rollbackref",
            line(["git", "-C", str(d.repo_dir), "rev-parse", "--verify", ROLLBACK_REF]),
        ),
        (
            "opsdisk",
            f"d={shlex.quote(str(d.ops_root))}; "
            'while [ ! -e "$d" ]; do d=$(dirname "$d"); done; df -Pk "$d"',
        ),
    ]
    items += secret_sections(d)
    for service in d.built_services:
        items.append((f"image {service.image}", _image_id(service.image)))
        items.append((f"rollback {service.image}", _image_id(service.rollback_image)))
    for service in d.services:
        items.append(
            (
                f"container {service.container}",
                line(
                    ["docker", "container", "inspect", "--format", STATE_FORMAT, service.container]
                ),
            )
        )
    for volume in d.backup_volumes:
        items.append(
            (
                f"volume {volume}",
                line(["docker", "volume", "inspect", "--format", "{{.Name}}", volume]),
            )
        )
    if files:
        items.append(("hashes", line(["sha256sum", "--", *files])))
    return items


def secret_sections(d: Deployment) -> list[tuple[str, str]]:
    """The env file and Docker secret files, read for their key names, to mask their
    values in any output and to check the env file's syntax; nothing of them is printed."""
    items = []
    if any(s.env_file for s in d.services):
        items.append(("envfile", line(["cat", "--", str(d.env_file)])))
    for name, path in sorted(d.secret_files.items()):
        items.append((f"secretfile {name}", line(["cat", "--", str(path)])))
    return items


def secret_texts(raw: dict[str, tuple[int, str]]) -> tuple[str | None, list[str]]:
    """(the env file's text or None, the secret files' contents) from ``secret_sections``."""
    rc, env_text = raw.get("envfile", (1, ""))
    files = [
        out
        for label, (rc_, out) in raw.items()
        if label.startswith("secretfile ") and rc_ == 0 and out
    ]
    return (env_text if rc == 0 else None), files


def host_sections(host: Host) -> list[tuple[str, str]]:
    """Does the shared network exist; does the proxy run (labels "network", "proxy")."""
    inspect = ["docker", "container", "inspect", "--format", "{{.State.Running}}"]
    return [
        (
            "network",
            line(["docker", "network", "inspect", "--format", "{{.Name}}", host.shared_network]),
        ),
        ("proxy", line([*inspect, host.proxy_container])),
    ]


def _image_id(image: str) -> str:
    return line(["docker", "image", "inspect", "--format", "{{.Id}}", image])


def script(items: list[tuple[str, str]]) -> str:
    parts = []
    for label, command in items:
        parts.append(
            f'echo {shlex.quote(MARK + " " + label)}; {{ {command}; }} 2>&1; echo "{MARK}-rc $?"'
        )
    return "\n".join(parts)


def parse(output: str) -> dict[str, tuple[int, str]]:
    """{label: (exit status, output)} from the script's output."""
    results: dict[str, tuple[int, str]] = {}
    label, lines = None, []
    for text in output.splitlines():
        if text.startswith(MARK + "-rc "):
            if label is not None:
                results[label] = (int(text.split()[-1]), "\n".join(lines).strip())
            label, lines = None, []
        elif text.startswith(MARK + " "):
            label, lines = text[len(MARK) + 1 :], []
        else:
            lines.append(text)
    return results


def gather(target: Target, deployment: Deployment, files: list[str]) -> Facts:
    """One round trip: every fact of ``sections`` parsed into ``Facts``."""
    result = target.run(script(sections(deployment, files)), check=False)
    return interpret(parse(result.stdout), deployment)


def interpret(raw: dict[str, tuple[int, str]], deployment: Deployment) -> Facts:
    facts = Facts()

    def ok(label: str) -> str | None:
        rc, out = raw.get(label, (1, ""))
        return out if rc == 0 else None

    facts.docker_version = ok("docker") or None
    facts.docker_error = raw.get("docker", (1, ""))[1]
    facts.compose_version = ok("compose") or None
    facts.compose_error = raw.get("compose", (1, ""))[1]
    disk = ok("disk")
    if disk:
        rows = disk.splitlines()
        facts.docker_root = rows[0]
        fields = rows[-1].split()
        if len(fields) >= 4 and fields[3].isdigit():
            facts.free_mb = int(fields[3]) // 1024
    facts.shared_network = ok("network") is not None
    facts.lock_holder = ok("lock")
    head = ok("repo")
    facts.repo_head = _commit(head)
    facts.current_commit = _commit(ok("current"))
    facts.rollback_commit = _commit(ok("rollbackref"))
    facts.ops_free_mb = _free_mb(ok("opsdisk"))
    facts.env_text, facts.secret_values = secret_texts(raw)
    facts.proxy_running = (ok("proxy") or "") == "true"
    if facts.env_text is not None:
        facts.env_file_present = True
        parsed = dotenv_values(stream=io.StringIO(facts.env_text), interpolate=False)
        facts.secret_keys = sorted(parsed)
    for service in deployment.built_services:
        facts.images[service.image] = ok(f"image {service.image}")
        facts.rollback_images[service.image] = ok(f"rollback {service.image}")
    for service in deployment.services:
        state = ok(f"container {service.container}")
        if state:
            facts.containers[service.container] = parse_state(state)
    facts.volumes = {v for v in deployment.backup_volumes if ok(f"volume {v}")}
    for row in (ok("hashes") or raw.get("hashes", (1, ""))[1]).splitlines():
        parts = row.split(None, 1)
        if len(parts) == 2 and re.fullmatch(r"[0-9a-f]{64}", parts[0]):
            facts.file_hashes[parts[1]] = parts[0]
    return facts


def _commit(text: str | None) -> str | None:
    return text if text and re.fullmatch(r"[0-9a-f]{40,64}", text) else None


def _free_mb(df_output: str | None) -> int | None:
    fields = (df_output or "").splitlines()[-1:][0].split() if df_output else []
    return int(fields[3]) // 1024 if len(fields) >= 4 and fields[3].isdigit() else None


def parse_state(text: str) -> ContainerState:
    name, cid, image, status, health, restarts, code, started = text.strip().split("|")
    return ContainerState(
        name.lstrip("/"), cid, image, status, health, int(restarts), int(code), started
    )


def state_line(containers: list[str]) -> str:
    """Read the state of containers; missing ones are simply absent from the output."""
    return (
        line(["docker", "container", "inspect", "--format", STATE_FORMAT, *containers])
        + " 2>/dev/null"
    )


def container_states(target: Target, containers: list[str]) -> dict[str, ContainerState]:
    """State of the named containers that exist, in one command."""
    result = target.run(state_line(containers), check=False)
    states = {}
    for row in result.stdout.splitlines():
        if row.count("|") == 7:
            state = parse_state(row)
            states[state.name] = state
    return states
