"""The local Docker engine: checking it, naming test resources, removing them."""

from __future__ import annotations

import re
import secrets
import subprocess
from collections.abc import Sequence

# Kept across runs: made once by images.ensure_busybox_image and never removed.
PROTECTED_IMAGES = frozenset({"opsfab-test/busybox:latest"})


class DockerUnavailable(RuntimeError):
    """docker or its Compose v2 plugin is missing or does not answer."""


class DockerCommandError(subprocess.CalledProcessError):
    """A docker command failed; unlike its base class, the message shows stderr."""

    def __str__(self) -> str:
        return f"{super().__str__()}\n{(self.stderr or '').strip()}"


def docker(
    *args: str, check: bool = True, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run ``docker ARGS`` and capture its output as text."""
    try:
        result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError as error:
        raise DockerUnavailable("the docker CLI is not installed") from error
    if check and result.returncode != 0:
        raise DockerCommandError(result.returncode, result.args, result.stdout, result.stderr)
    return result


def build_image(context: str, tag: str) -> subprocess.CompletedProcess[str]:
    """``docker build -t TAG CONTEXT``, leaving no intermediate images if it fails.

    The classic builder (the engine has no buildx here) keeps each finished step
    of a failed build as an untagged image; nothing would ever remove them.
    """
    result = docker("build", "--force-rm", "-t", tag, context, check=False)
    if result.returncode != 0:
        steps = re.findall(r"^ ---> ([0-9a-f]{12,64})$", result.stdout, re.MULTILINE)
        for image in reversed(steps):
            _remove_if_untagged(image)
    return result


def _remove_if_untagged(image: str) -> None:
    # Without -f, docker refuses an image that has children or a container.
    tags = docker("image", "inspect", "--format", "{{len .RepoTags}}", image, check=False)
    if tags.stdout.strip() == "0":
        docker("rmi", image, check=False, timeout=60)


def check_docker_engine() -> str:
    """Check that the engine answers and Compose is v2 or later; return its version."""
    info = docker("info", "--format", "{{.ServerVersion}}", check=False, timeout=60)
    if info.returncode != 0:
        raise DockerUnavailable(
            f"`docker info` failed (exit {info.returncode}): {info.stderr.strip()}"
        )
    compose = docker("compose", "version", "--short", check=False, timeout=60)
    version = compose.stdout.strip()
    match = re.match(r"v?(\d+)\.", version)
    if compose.returncode != 0 or not match:
        raise DockerUnavailable(
            "`docker compose version` failed: the Compose v2 CLI plugin is missing "
            f"({compose.stderr.strip() or version})"
        )
    if int(match.group(1)) < 2:
        raise DockerUnavailable(f"docker compose {version} found, 2.0 or later needed")
    return version


def unique_name(prefix: str) -> str:
    """``prefix-<6 hex>``: a name no other run of the tests will use."""
    if not re.fullmatch(r"[a-z0-9][a-z0-9_.-]*", prefix):
        raise ValueError(f"{prefix!r}: docker names need lowercase a-z, 0-9, _ . -")
    return f"{prefix}-{secrets.token_hex(3)}"


def remove_docker_resources(prefixes: Sequence[str] = (), labels: Sequence[str] = ()) -> list[str]:
    """Remove containers, networks, volumes and images named by a prefix or labelled.

    A name matches a prefix when it, or a part of it after a ``/``, is the prefix
    or continues it after ``-``, ``_``, ``.``, ``/`` or ``:``: compose's
    ``P-web-1``, ``P_default`` and ``P-web``, and an image ``opsfab/P-prod:latest``.
    A label is ``key`` or ``key=value``. Images are removed by reference, never by
    id, so a tag sharing an id with a protected image cannot take it along.
    Returns what was removed, for the test's log.
    """
    match = _name_matcher(prefixes)
    removed = []
    for kind, list_args, remove_args in _KINDS:
        names = _list(list_args, match, labels)
        if kind == "image":
            names = [name for name in names if name not in PROTECTED_IMAGES]
        if names:
            docker(*remove_args, *names, check=False, timeout=120)
            removed += [f"{kind} {name}" for name in names]
    return removed


# Containers first: networks, volumes and images in use cannot be removed.
_KINDS = [
    ("container", ["ps", "-a", "--format", "{{.Names}}"], ["rm", "-f", "-v"]),
    ("network", ["network", "ls", "--format", "{{.Name}}"], ["network", "rm"]),
    ("volume", ["volume", "ls", "--format", "{{.Name}}"], ["volume", "rm", "-f"]),
    (
        "image",
        ["images", "--format", "{{.Repository}}:{{.Tag}}"],
        ["rmi", "-f"],
    ),
]


def _name_matcher(prefixes: Sequence[str]) -> re.Pattern[str] | None:
    if not prefixes:
        return None
    alternatives = "|".join(re.escape(prefix) for prefix in prefixes)
    return re.compile(rf"(?:^|.*/)(?:{alternatives})(?:$|[-_./:])")


def _list(list_args: list[str], match: re.Pattern[str] | None, labels: Sequence[str]) -> list[str]:
    found: set[str] = set()
    if match is not None:
        lines = docker(*list_args, timeout=60).stdout.splitlines()
        found |= {line for line in lines if match.match(line)}
    for label in labels:
        lines = docker(*list_args, "--filter", f"label={label}", timeout=60)
        found |= set(lines.stdout.splitlines())
    # Untagged images have no reference to remove them by; `docker image prune`
    # takes care of those, and a test's own builds are tagged.
    return sorted(name for name in found if name and "<none>" not in name)
