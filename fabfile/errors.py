"""One exception tree. Every message ends with what the operator should do."""

from __future__ import annotations


class OpsfabError(Exception):
    """Base of every error opsfab reports to an operator.

    ``exit_code`` is what the command line exits with.
    """

    exit_code = 1

    def __init__(self, message: str, fix: str | None = None) -> None:
        self.message = message
        self.fix = fix
        super().__init__(self.render())

    def render(self) -> str:
        if self.fix:
            return f"{self.message}\n  fix: {self.fix}"
        return self.message


class InventoryError(OpsfabError):
    """hosts.toml is missing, malformed or inconsistent.

    ``problems`` holds one ``(key path, message)`` pair per finding.
    """

    exit_code = 2

    def __init__(self, path: str, problems: list[tuple[str, str]]) -> None:
        self.path = path
        self.problems = problems
        lines = [f"{path}: {key}: {msg}" if key else f"{path}: {msg}" for key, msg in problems]
        super().__init__("\n".join(lines))


class UsageError(OpsfabError):
    """A name or option given on the command line that the inventory does not know."""

    exit_code = 2


class TemplateError(OpsfabError):
    exit_code = 2


class ConnectError(OpsfabError):
    """The host could not be reached or its identity could not be verified."""

    exit_code = 3


class HostKeyError(ConnectError):
    pass


class RemoteCommandError(OpsfabError):
    """A command on the host exited non-zero."""

    def __init__(
        self,
        host: str,
        command: str,
        exit_status: int,
        output: str,
        fix: str | None = None,
    ) -> None:
        self.host = host
        self.command = command
        self.exit_status = exit_status
        self.output = output
        tail = "\n".join(output.strip().splitlines()[-15:])
        message = f"[{host}] command failed (exit {exit_status}): {command}"
        if tail:
            message += "\n" + "\n".join("    " + line for line in tail.splitlines())
        super().__init__(message, fix)


class PreflightError(OpsfabError):
    """Something found before any change that makes the deploy unsafe."""

    exit_code = 4

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        lines = ["preflight refused the deploy; nothing was changed on the host:"]
        lines += [f"  - {msg}\n    fix: {fix}" for msg, fix in problems]
        super().__init__("\n".join(lines))


class LockHeld(OpsfabError):
    exit_code = 5


class HealthError(OpsfabError):
    exit_code = 6


class DeployFailed(OpsfabError):
    """A deploy failed after it began changing the host (after rollback, if any)."""

    exit_code = 7
