"""Fixtures for integration tests against a real sshd, Docker engine and git origin.

Without sshd or a working docker the integration fixtures skip, naming what is
missing; with CI set (``CI=true``) they fail instead, so CI never passes by
skipping. The helpers behind them live in ``tests/support``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.ci import unavailable
from tests.support.docker import (
    DockerUnavailable,
    check_docker_engine,
    remove_docker_resources,
    unique_name,
)
from tests.support.gitrepo import OriginRepo
from tests.support.images import BusyboxMissing, ensure_busybox_image
from tests.support.sshd import (
    SshdError,
    SshServer,
    missing_tools,
    start_sshd,
    write_wrong_known_hosts,
)

# The operator tasks' fixtures (issue 4) and the canary check over every test.
pytest_plugins = ["tests.support.opsfixtures"]

# A test that uses one of these is an integration test even if it forgot the mark.
_INTEGRATION_FIXTURES = {"sshd", "docker_engine", "base_image", "docker_prefix"}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "integration: needs a real sshd, Docker engine or git origin "
        "(skipped when missing, failing instead when CI is set)",
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _INTEGRATION_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    """A real OpenSSH server on 127.0.0.1 that root logs in to with ``client_key``."""
    reasons = missing_tools()
    if reasons:
        unavailable("cannot start sshd: " + "; ".join(reasons))
    try:
        with start_sshd(tmp_path_factory.mktemp("sshd")) as server:
            yield server
    except SshdError as error:
        unavailable(f"cannot start sshd: {error}")


@pytest.fixture
def wrong_known_hosts(sshd: SshServer, tmp_path: Path) -> Path:
    """A known_hosts pinning a different key for the sshd's host and port."""
    return write_wrong_known_hosts(sshd, tmp_path / "wrong_known_hosts")


@pytest.fixture(scope="session")
def docker_engine() -> str:
    """The Compose version string, once docker and Compose v2+ answer."""
    try:
        return check_docker_engine()
    except DockerUnavailable as error:
        unavailable(str(error))


@pytest.fixture(scope="session")
def base_image(docker_engine: str) -> str:
    """``opsfab-test/busybox:latest``, imported from Debian's busybox if missing.

    Kept after the tests: later runs reuse it.
    """
    try:
        return ensure_busybox_image()
    except BusyboxMissing as error:
        unavailable(str(error))


@pytest.fixture
def docker_prefix(docker_engine: str) -> Iterator[str]:
    """A unique ``opsfab-t-XXXXXX`` prefix for a test's docker names.

    Every container, network, volume and image whose name starts with it is
    removed when the test ends (compose project names included).
    """
    prefix = unique_name("opsfab-t")
    yield prefix
    remove_docker_resources(prefixes=[prefix])


@pytest.fixture
def origin_repo(tmp_path: Path) -> OriginRepo:
    """A bare git origin of a tiny busybox httpd app, on branches main and develop."""
    return OriginRepo(tmp_path / "origin")
