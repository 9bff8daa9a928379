"""A local git origin for a tiny HTTP app, with helpers to push good and bad commits.

The app is busybox httpd serving ``www/`` on port 8000 from the base image, so
``GET /health`` answers 200 with the text of ``www/health`` (``ok v1`` at first).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from .images import BUSYBOX_IMAGE

APP_PORT = 8000

# git must work with no global or system config, and ignore one that exists.
_GIT_ENV = {
    "GIT_AUTHOR_NAME": "opsfab tests",
    "GIT_AUTHOR_EMAIL": "tests@opsfab.invalid",
    "GIT_COMMITTER_NAME": "opsfab tests",
    "GIT_COMMITTER_EMAIL": "tests@opsfab.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_TERMINAL_PROMPT": "0",
}

_KEEP = object()  # leave www/health as it is
_HEALTHY_CMD = f'CMD ["httpd", "-f", "-v", "-p", "{APP_PORT}", "-h", "/www"]'
_CRASHING_CMD = 'CMD ["sh", "-c", "echo opsfab test: crashing on purpose >&2; exit 1"]'


def dockerfile(base_image: str, *, build_fails: bool = False, crashes: bool = False) -> str:
    lines = [f"FROM {base_image}", "COPY www /www"]
    if build_fails:
        lines.append('RUN echo "opsfab test: this build fails on purpose" >&2; false')
    lines.append(f"EXPOSE {APP_PORT}")
    if crashes:
        lines.append(_CRASHING_CMD)
    else:
        lines.append(_HEALTHY_CMD)
    return "\n".join(lines) + "\n"


class OriginRepo:
    """A bare repository ``origin.git`` and a working clone that pushes to it.

    Every ``commit_*`` helper writes the whole app in one known state, commits it
    (even when nothing changed), pushes it and returns the new commit's sha.
    """

    def __init__(self, root: Path, base_image: str = BUSYBOX_IMAGE) -> None:
        self.root = root
        self.path = root / "origin.git"
        self.work = root / "work"
        self.base_image = base_image
        root.mkdir(parents=True, exist_ok=True)
        git("init", "--quiet", "--bare", "--initial-branch=main", str(self.path))
        git("init", "--quiet", "--initial-branch=main", str(self.work))
        self._git("remote", "add", "origin", str(self.path))
        self._git("config", "user.name", _GIT_ENV["GIT_AUTHOR_NAME"])
        self._git("config", "user.email", _GIT_ENV["GIT_AUTHOR_EMAIL"])
        (self.work / "www").mkdir()
        (self.work / "www" / "index.html").write_text("<h1>opsfab test app</h1>\n")
        self.commit_version("ok v1", message="first version")
        self._git("push", "--quiet", "origin", "main:develop")

    @property
    def url(self) -> str:
        """What ``git clone`` takes: the bare repository's absolute path."""
        return str(self.path)

    @property
    def file_url(self) -> str:
        return self.path.as_uri()

    def commit_version(self, text: str, branch: str = "main", message: str | None = None) -> str:
        """A healthy app whose /health body is ``text``."""
        return self._commit(branch, message or f"version {text}", health=text)

    def commit_unhealthy(self, branch: str = "main") -> str:
        """The container runs, but /health answers 404."""
        return self._commit(branch, "remove /health", health=None)

    def commit_build_failure(self, branch: str = "main") -> str:
        """``docker build`` fails at a ``RUN`` step."""
        return self._commit(branch, "break the build", build_fails=True)

    def commit_crash(self, branch: str = "main") -> str:
        """The image builds, but its command exits 1 at once."""
        return self._commit(branch, "crash at start", crashes=True)

    def head(self, branch: str = "main") -> str:
        """The sha the origin's branch points at."""
        return git("--git-dir", str(self.path), "rev-parse", "--verify", f"refs/heads/{branch}")

    def clone(self, dest: Path, branch: str = "main") -> Path:
        """Clone the origin's branch to ``dest`` (what a deploy checks out)."""
        git("clone", "--quiet", "--branch", branch, self.url, str(dest))
        return dest

    def _commit(
        self,
        branch: str,
        message: str,
        health: str | None | object = _KEEP,
        build_fails: bool = False,
        crashes: bool = False,
    ) -> str:
        # Start from what the origin holds, in case a test pushed there directly.
        if self._origin_has(branch):
            self._git("fetch", "--quiet", "origin", branch)
            self._git("checkout", "--quiet", "--force", "-B", branch, f"origin/{branch}")
        health_file = self.work / "www" / "health"
        if health is None:
            health_file.unlink(missing_ok=True)
        elif isinstance(health, str):
            health_file.write_text(health + "\n")
        (self.work / "Dockerfile").write_text(
            dockerfile(self.base_image, build_fails=build_fails, crashes=crashes)
        )
        self._git("add", "--all")
        self._git("commit", "--quiet", "--allow-empty", "-m", message)
        self._git("push", "--quiet", "origin", f"HEAD:refs/heads/{branch}")
        return self._git("rev-parse", "HEAD")

    def _origin_has(self, branch: str) -> bool:
        refs = git("--git-dir", str(self.path), "branch", "--list", branch)
        return bool(refs)

    def _git(self, *args: str) -> str:
        return git("-C", str(self.work), *args)


def git(*args: str) -> str:
    """Run git with a fixed identity and no user config; return its stripped stdout."""
    result = subprocess.run(
        ["git", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **_GIT_ENV},
        stdin=subprocess.DEVNULL,
    )
    if result.returncode != 0:
        command = " ".join(["git", *args])
        raise RuntimeError(f"{command} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout.strip()
