"""Wait for a deployment's containers to be healthy, failing fast when one cannot be.

State is read with ``docker container inspect`` (one command for all containers).
A container that exits, restarts or that Docker marks unhealthy fails the wait at once;
otherwise the wait lasts at most ``health_tries x health_timeout`` seconds.
"""

from __future__ import annotations

import time

from .errors import HealthError
from .inventory import Deployment
from .probe import ContainerState, container_states
from .target import Target, line

HEALTH_LOG_FORMAT = (
    '{{if index .State "Health"}}{{range .State.Health.Log}}'
    "{{.ExitCode}}: {{.Output}}{{end}}{{end}}"
)


def wait(
    target: Target,
    deployment: Deployment,
    before: dict[str, ContainerState] | None = None,
) -> dict[str, ContainerState]:
    """Poll until every container is healthy and stays so for ``health_settle`` seconds.

    ``before`` holds the states read before the deploy: a container that was not
    recreated keeps its restart count, and only restarts beyond it count as failures.
    """
    settings = deployment.app.deploy
    containers = [s.container for s in deployment.services]
    baseline = {s.id: s.restarts for s in (before or {}).values()}
    deadline = time.monotonic() + settings.health_tries * settings.health_timeout
    settled_at: float | None = None
    while True:
        states = container_states(target, containers)
        problem = failure(states, deployment, baseline)
        if problem:
            raise HealthError(
                problem + diagnostics(target, states, containers),
                "read the container's health probes and logs above; fix and redeploy",
            )
        if all(states[c].healthy for c in containers):
            settled_at = settled_at or time.monotonic()
            if time.monotonic() - settled_at >= settings.health_settle:
                return states
            baseline.update({s.id: s.restarts for s in states.values()})
        else:
            settled_at = None
            if time.monotonic() >= deadline:
                waiting = ", ".join(
                    f"{c} {states[c].health}" for c in containers if not states[c].healthy
                )
                raise HealthError(
                    f"not healthy after {settings.health_tries} x {settings.health_timeout} s: "
                    f"{waiting}" + diagnostics(target, states, containers),
                    "if it starts slowly, raise health.start_period or "
                    f"apps.{deployment.app_name}.deploy.health_timeout in hosts.toml",
                )
        pause = settings.health_poll
        if settled_at is not None:
            pause = min(pause, max(0.0, settings.health_settle - (time.monotonic() - settled_at)))
        time.sleep(pause)
        target.stats.waited_seconds += pause


def check_now(states: dict[str, ContainerState], deployment: Deployment) -> None:
    """Raise unless every container runs and is healthy right now (past restarts are
    history, not a failure)."""
    baseline = {s.id: s.restarts for s in states.values()}
    problem = failure(states, deployment, baseline)
    unhealthy = [
        c
        for c in (s.container for s in deployment.services)
        if c in states and not states[c].healthy
    ]
    if problem or unhealthy:
        name = f"{deployment.app_name} {deployment.env}"
        fix = (
            f"deploy it: fab deploy {name}"
            if problem and problem.endswith("does not exist")
            else f"read its logs: fab logs {name}; then fab doctor {name}"
        )
        raise HealthError(problem or f"not healthy: {', '.join(unhealthy)}", fix)


def failure(
    states: dict[str, ContainerState],
    deployment: Deployment,
    baseline: dict[str, int] | None = None,
) -> str | None:
    """Why the wait cannot succeed, or None while it still may. ``baseline`` maps a
    container id to the restart count it may have without failing."""
    baseline = baseline or {}
    for service in deployment.services:
        state = states.get(service.container)
        if state is None:
            return f"container {service.container} does not exist"
        if state.status in ("exited", "dead"):
            return f"container {service.container} {state.status} with code {state.exit_code}"
        if state.status == "restarting" or state.restarts > baseline.get(state.id, 0):
            return f"container {service.container} is restarting ({state.restarts} restarts)"
        if state.health == "unhealthy":
            return f"container {service.container} is unhealthy"
    return None


def diagnostics(target: Target, states: dict[str, ContainerState], containers: list[str]) -> str:
    """The last health probe output and log lines of each container that is not healthy."""
    parts = []
    for name in containers:
        state = states.get(name)
        if state is None or state.healthy:
            continue
        probe = target.run(
            line(
                [
                    "docker",
                    "container",
                    "inspect",
                    "--format",
                    HEALTH_LOG_FORMAT,
                    name,
                ]
            ),
            check=False,
        )
        logs = target.run(line(["docker", "logs", "--tail", "15", name]) + " 2>&1", check=False)
        text = [
            f"\n--- {name}: last health probes ---",
            *probe.stdout.strip().splitlines()[-3:],
            f"--- {name}: last log lines ---",
            *logs.stdout.strip().splitlines()[-15:],
        ]
        parts.append("\n".join("    " + t if not t.startswith("\n") else t for t in text))
    return "".join(parts)
