"""A throwaway deploy target for the benchmarks: sshd, git origin, ops root, inventory."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .deployenv import write_inventory
from .docker import remove_docker_resources, unique_name
from .gitrepo import OriginRepo
from .images import ensure_busybox_image
from .sshd import SshServer, start_sshd


@dataclass
class BenchHost:
    app: str
    inventory: Path
    ops_root: Path
    sshd: SshServer


@contextmanager
def bench_host() -> Iterator[BenchHost]:
    """Everything a benchmark deploys to; its docker resources are removed at the end."""
    ensure_busybox_image()
    app = unique_name("opsfab-bench")
    with tempfile.TemporaryDirectory() as tmp, start_sshd(Path(tmp) / "sshd") as sshd:
        root = Path(tmp)
        ops = root / "ops"
        ops.mkdir()
        origin = OriginRepo(root / "origin")
        path = write_inventory(
            root / "hosts.toml", app=app, sshd=sshd, ops_root=ops, origin=origin
        )
        try:
            yield BenchHost(app, path, ops, sshd)
        finally:
            remove_docker_resources(
                prefixes=[app],
                labels=[f"org.opsfab.deployment={app}-{env}" for env in ("prod", "dev")],
            )
