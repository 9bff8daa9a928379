"""Benchmark: a redeploy of the test app with nothing changed, over the real sshd.

Prints the wall time, the time spent waiting on the host (remote docker and git
commands, uploads) and the rest, which is opsfab's own overhead; plus how many SSH
connections, remote commands and uploads one deploy costs.

    python3 bench/redeploy.py [--runs N]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fabfile import inventory as inventory_mod  # noqa: E402
from fabfile.deploy import Options, deploy  # noqa: E402
from fabfile.output import Reporter  # noqa: E402
from fabfile.target import connect  # noqa: E402
from tests.support.benchhost import bench_host  # noqa: E402
from tests.support.deployenv import write_secrets  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--env", default="dev", help="prod adds the backup step")
    args = parser.parse_args()
    with bench_host() as host:
        app = host.app
        write_secrets(host.ops_root, app, args.env)
        inv = inventory_mod.load(host.inventory)
        d = inv.deployment(app, args.env)
        once(inv, d, app, args.env)  # first deploy: clone, build, network
        rows = [once(inv, d, app, args.env) for _ in range(args.runs)]
    print(f"redeploy of {d.name} with nothing changed, {args.runs} runs (median; min-max)")
    labels = {
        "wall": "wall time",
        "remote": "waiting on remote commands and uploads",
        "health wait": "sleeping between health polls",
        "overhead": "opsfab's own overhead (the rest)",
    }
    for key, label in labels.items():
        values = [r[key] for r in rows]
        print(
            f"  {statistics.median(values):7.3f} s  ({min(values):.3f}-{max(values):.3f})  {label}"
        )
    last = rows[-1]
    rtt = statistics.median(r["rtt"] for r in rows)
    transport = rtt * last["commands"]
    print(
        f"  {rtt * 1000:7.1f} ms a round trip of `true` over the same connection; x "
        f"{last['commands']} commands = {transport:.3f} s of transport"
    )
    print(
        f"  => opsfab's overhead outside the remote docker and git work: "
        f"{statistics.median(r['overhead'] for r in rows) + transport:.3f} s"
    )
    print(
        f"  per deploy: {last['connections']} SSH connection(s), "
        f"{last['commands']} remote commands"
        f" ({last['health_polls']} of them health polls), {last['uploads']} upload(s)"
    )
    print(
        "  step times of the last run: "
        + ", ".join(f"{k} {v:.2f}" for k, v in last["steps"].items())
    )


def once(inv, d, app, env) -> dict:
    started = time.perf_counter()
    with connect(d.host_name, d.host) as target:
        outcome = deploy(inv, app, env, target, Options(actor="bench"), Reporter(quiet=True))
        wall = time.perf_counter() - started
        stats = copy.deepcopy(target.stats)
        rtt = _round_trip(target)
    polls = sum(
        1 for c in stats.log if c.startswith("docker container inspect --format '{{.Name}}")
    )
    return {
        "wall": wall,
        "remote": stats.remote_seconds,
        "health wait": stats.waited_seconds,
        "overhead": wall - stats.remote_seconds - stats.waited_seconds,
        "connections": stats.connections,
        "commands": stats.commands,
        "uploads": stats.uploads,
        "health_polls": polls,
        "steps": outcome.record["steps"],
        "rtt": rtt,
    }


def _round_trip(target, n: int = 20) -> float:
    """Median time of a no-op remote command on an open connection."""
    times = []
    for _ in range(n):
        started = time.perf_counter()
        target.run("true")
        times.append(time.perf_counter() - started)
    return statistics.median(times)


if __name__ == "__main__":
    main()
