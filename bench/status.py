"""Benchmark: `fab status` against a host running six containers of the test app.

Deploys prod and dev of a three-service test app over the real sshd, then times the
real command line (`python3 -m fabric status`, Python start-up included) and the
in-process call, and counts its remote commands.

    python3 bench/status.py [--runs N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fabfile import inventory as inventory_mod  # noqa: E402
from fabfile import status as status_mod  # noqa: E402
from fabfile.deploy import Options, deploy  # noqa: E402
from fabfile.output import Reporter  # noqa: E402
from fabfile.target import connect  # noqa: E402
from tests.support.benchhost import bench_host  # noqa: E402
from tests.support.deployenv import REPO_ROOT, write_secrets  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with bench_host() as host:
        app, path = host.app, host.inventory
        text = path.read_text()
        block = text[text.index(f"[apps.{app}.services.app]") :]
        for extra in ("web2", "web3"):  # two more services: three containers per env
            text += "\n" + block.replace(".services.app]", f".services.{extra}]").replace(
                f'container = "{app}-{{env}}"', f'container = "{app}-{{env}}-{extra}"'
            ).replace("publish = { prod = 18003, dev = 18004 }\n", "")
        path.write_text(text)
        inv = inventory_mod.load(path)
        for env in ("prod", "dev"):
            write_secrets(host.ops_root, app, env)
            with connect("testhost", inv.host("testhost")) as target:
                deploy(inv, app, env, target, Options(actor="bench"), Reporter(quiet=True))
        measure(inv, path, args.runs)


def measure(inv, path: Path, runs: int) -> None:
    env = {**os.environ, "OPSFAB_INVENTORY": str(path)}
    cli = []
    for _ in range(runs):
        started = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-m", "fabric", "status"],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
        cli.append(time.perf_counter() - started)
        assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if "running" in line]
    inproc, commands = [], 0
    deployments = status_mod.selected(inv, None, None)
    for _ in range(runs):
        with connect("testhost", inv.host("testhost")) as target:
            started = time.perf_counter()
            status_mod.status(target, inv, deployments, with_infra=True)
            inproc.append(time.perf_counter() - started)
            commands = target.stats.commands
    print(result.stdout)
    print(f"fab status, {len(rows)} running containers, {runs} runs (median; min-max):")
    print(
        f"  {statistics.median(cli):6.3f} s ({min(cli):.3f}-{max(cli):.3f})  "
        "the command line: python3 -m fabric status (start-up included)"
    )
    print(
        f"  {statistics.median(inproc):6.3f} s ({min(inproc):.3f}-{max(inproc):.3f})  "
        f"in process, connection included; {commands} remote command(s)"
    )


if __name__ == "__main__":
    main()
