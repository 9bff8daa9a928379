"""Push rendered files to the host atomically, keeping the previous copy of each.

All files travel in one tar over the SFTP channel and are moved into place with
``mv`` (an atomic rename on one filesystem). Before a file is replaced its current
copy is kept as ``<file>.prev``; a file that did not exist leaves no ``.prev``, so a
restore removes it again. nginx only includes ``*.conf``, so ``.prev`` files are inert.
"""

from __future__ import annotations

import io
import posixpath
import shlex
import tarfile
from pathlib import PurePosixPath

from .render import RenderedFile
from .target import line

STAGE = ".opsfab"


def bundle(files: list[RenderedFile]) -> bytes:
    """A tar of the files under their host paths (without the leading slash)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for file in files:
            info = tarfile.TarInfo(str(file.path).lstrip("/"))
            info.size = len(file.content)
            info.mode = file.mode
            info.mtime = 0
            tar.addfile(info, io.BytesIO(file.content))
    return buffer.getvalue()


def stage_paths(ops_root: PurePosixPath, token: str) -> tuple[str, str]:
    """(upload path of the tar, folder it is unpacked into), both under the ops root."""
    base = ops_root / STAGE
    return str(base / f"push-{token}.tar"), str(base / f"push-{token}")


def prepare_line(ops_root: PurePosixPath) -> str:
    """Make the private staging folder (mode 700) before the upload."""
    return line(
        ["mkdir", "-p", "-m", "700", str(ops_root / STAGE)],
        ["chmod", "700", str(ops_root / STAGE)],
    )


def install_line(files: list[RenderedFile], tar_path: str, stage: str) -> str:
    """Unpack, keep each current file as .prev, move each new one into place."""
    parts = [
        line(["mkdir", "-p", "-m", "700", stage]),
        line(["tar", "-xf", tar_path, "-C", stage, "--no-same-owner"]),
        line(["rm", "-f", tar_path]),
    ]
    for file in files:
        dest = str(file.path)
        staged = posixpath.join(stage, dest.lstrip("/"))
        q, qp = shlex.quote(dest), shlex.quote(dest + ".prev")
        parts.append(line(["mkdir", "-p", posixpath.dirname(dest)]))
        parts.append(f"{{ if [ -e {q} ]; then cp -p {q} {qp}; else rm -f {qp}; fi; }}")
        parts.append(line(["mv", "-f", staged, dest]))
    parts.append(line(["rm", "-rf", stage]))
    return " && ".join(parts)


def restore_line(paths: list[str]) -> str:
    """Put each file's .prev back; a file without one did not exist before: remove it."""
    parts = []
    for path in paths:
        q, qp = shlex.quote(path), shlex.quote(path + ".prev")
        qt = shlex.quote(path + ".restore")
        parts.append(
            f"{{ if [ -e {qp} ]; then cp -p {qp} {qt} && mv -f {qt} {q}; else rm -f {q}; fi; }}"
        )
    return " && ".join(parts)


def swap_line(paths: list[str]) -> str:
    """Exchange each file with its .prev (a manual rollback, undone by running it again)."""
    parts = []
    for path in paths:
        q, qp, qt = shlex.quote(path), shlex.quote(path + ".prev"), shlex.quote(path + ".swap")
        parts.append(
            f"{{ if [ -e {qp} ]; then mv -f {q} {qt} && mv -f {qp} {q} && mv -f {qt} {qp}; fi; }}"
        )
    return " && ".join(parts)
