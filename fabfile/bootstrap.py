"""`fab bootstrap HOST`: from a bare Docker host to one ready for deploys.

It reads what exists in one round trip, then makes only what is missing: the ops root's
folders with their modes (secrets and backups 700), the shared network, each
deployment's networks and volumes, and each repository's clone. Networks and volumes
carry Docker Compose's project labels, so compose adopts them without a warning. A
second run finds everything in place and reports no changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

from . import probe
from .backup import KINDS, backup_folder
from .inventory import Deployment, Host, Inventory
from .render import is_bind
from .target import Target, line


@dataclass(frozen=True)
class Change:
    what: str
    command: str


def folders(host: Host, deployments: list[Deployment]) -> dict[str, str]:
    """Every folder the host needs -> its mode (octal text, as stat prints it)."""
    root = PurePosixPath(host.ops_root)
    wanted = {
        str(root): "755",
        str(root / "apps"): "755",
        str(root / "locks"): "755",
        str(root / host.conf_dir): "755",
        str(root / "secrets"): "700",
        str(root / "backups"): "700",
    }
    for d in deployments:
        wanted[str(d.deploy_dir.parent)] = "755"
        wanted[str(d.deploy_dir)] = "755"
        wanted[str(d.secrets_dir)] = "700"
        for kind in KINDS:
            wanted[str(backup_folder(d, kind))] = "700"
    return wanted


def sections(host: Host, deployments: list[Deployment]) -> list[tuple[str, str]]:
    paths = list(folders(host, deployments)) + [str(d.repo_dir / ".git") for d in deployments]
    return [
        ("docker", line(["docker", "version", "--format", "{{.Server.Version}}"])),
        ("stat", line(["stat", "-c", "%a %n", *paths]) + " 2>/dev/null"),
        ("networks", line(["docker", "network", "ls", "--format", "{{.Name}}"])),
        ("volumes", line(["docker", "volume", "ls", "--format", "{{.Name}}"])),
    ]


def plan(target: Target, inventory: Inventory, host_name: str) -> list[Change]:
    """What bootstrap would change on the host, read in one round trip."""
    host = inventory.host(host_name)
    deployments = [d for d in inventory.deployments() if d.host_name == host_name]
    raw = probe.parse(target.run(probe.script(sections(host, deployments)), check=False).stdout)
    if raw.get("docker", (1, ""))[0] != 0:
        from .errors import OpsfabError

        raise OpsfabError(
            f"docker does not answer on {host_name}: "
            f"{raw.get('docker', (1, ''))[1].strip()[:200]}",
            f"install Docker Engine and let {host.user} use it",
        )
    modes = {}
    for row in raw.get("stat", (1, ""))[1].splitlines():
        mode, _, path = row.partition(" ")
        modes[path] = mode
    changes = _folder_changes(folders(host, deployments), modes)
    changes += _docker_changes(host, deployments, raw)
    for d in deployments:
        if str(d.repo_dir / ".git") not in modes:
            changes.append(
                Change(
                    f"clone {d.app.repo} ({d.branch}) into {d.repo_dir}",
                    line(
                        [
                            "git",
                            "clone",
                            "--quiet",
                            "--branch",
                            d.branch,
                            "--",
                            d.app.repo,
                            str(d.repo_dir),
                        ]
                    ),
                )
            )
    return changes


def _folder_changes(wanted: dict[str, str], modes: dict[str, str]) -> list[Change]:
    changes = []
    for path, mode in wanted.items():
        if path not in modes:
            changes.append(
                Change(
                    f"create {path} (mode {mode})",
                    line(["mkdir", "-p", "-m", mode, path], ["chmod", mode, path]),
                )
            )
        else:
            # Only ever tighten: a folder the operator made stricter stays so, and the
            # special bits (setgid) are not ours to judge.
            found = int(modes[path], 8) & 0o777
            tightened = found & int(mode, 8)
            if tightened != found:
                new = f"{tightened:o}"
                changes.append(
                    Change(f"mode of {path}: {modes[path]} -> {new}", line(["chmod", new, path]))
                )
    return changes


def _docker_changes(host: Host, deployments: list[Deployment], raw: dict) -> list[Change]:
    networks = set(raw.get("networks", (1, ""))[1].split())
    volumes = set(raw.get("volumes", (1, ""))[1].split())
    changes = []
    if host.shared_network not in networks:
        changes.append(
            Change(
                f"create network {host.shared_network} (shared with nginx)",
                line(["docker", "network", "create", host.shared_network]),
            )
        )
        networks.add(host.shared_network)
    for d in deployments:
        project = ["--label", f"com.docker.compose.project={d.name}"]
        for network in d.networks:
            if network not in networks:
                networks.add(network)
                changes.append(
                    Change(
                        f"create network {network}",
                        line(
                            [
                                "docker",
                                "network",
                                "create",
                                *project,
                                "--label",
                                f"com.docker.compose.network={network}",
                                network,
                            ]
                        ),
                    )
                )
        for volume in sorted({v for s in d.services for v in s.volumes if not is_bind(v)}):
            if volume not in volumes:
                volumes.add(volume)
                changes.append(
                    Change(
                        f"create volume {volume}",
                        line(
                            [
                                "docker",
                                "volume",
                                "create",
                                *project,
                                "--label",
                                f"com.docker.compose.volume={volume}",
                                volume,
                            ]
                        ),
                    )
                )
    return changes


def apply(target: Target, changes: list[Change]) -> None:
    """Run the changes in order; folders first, since clones need them."""
    if changes:
        target.run(
            " && ".join(c.command for c in changes),
            fix="read the failing command above; bootstrap may be run again",
        )
