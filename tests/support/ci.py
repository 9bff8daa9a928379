"""The one rule for missing tools: skip on a developer's machine, fail in CI."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

_FALSE = {"", "0", "false", "no", "off"}


def in_ci() -> bool:
    """True when the CI environment variable is set to a true-ish value."""
    return os.environ.get("CI", "").strip().lower() not in _FALSE


def unavailable(reason: str) -> NoReturn:
    """Stop the current fixture: pytest.fail in CI, pytest.skip elsewhere."""
    if in_ci():
        pytest.fail(
            f"{reason}\nCI is set, so integration tests must run here, not skip: "
            "`bash .ci/run` installs what they need.",
            pytrace=False,
        )
    pytest.skip(reason)
