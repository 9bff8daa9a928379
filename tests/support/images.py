"""A base image made without any registry: Debian's static busybox in a root fs.

The machines that run these tests cannot pull images, so ``ensure_busybox_image``
imports one from a tar it builds in memory: /bin/busybox, a symlink per applet,
/etc/passwd and /etc/group with root, and /tmp.
"""

from __future__ import annotations

import io
import struct
import subprocess
import tarfile
from pathlib import Path

from .docker import docker

BUSYBOX_IMAGE = "opsfab-test/busybox:latest"
BUSYBOX = Path("/bin/busybox")

_PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"
_GROUP = "root:x:0:\nnogroup:x:65534:\n"


class BusyboxMissing(RuntimeError):
    """No static busybox to put in the image."""


def ensure_busybox_image(name: str = BUSYBOX_IMAGE, busybox: Path = BUSYBOX) -> str:
    """Make sure the image ``name`` exists locally, importing it if not; return name."""
    if docker("image", "inspect", name, check=False, timeout=60).returncode == 0:
        return name
    rootfs = busybox_rootfs(busybox)
    result = subprocess.run(
        [
            "docker", "import",
            "-c", "ENV PATH=/bin",
            "-c", 'CMD ["/bin/sh"]',
            "-", name,
        ],
        input=rootfs,
        capture_output=True,
        timeout=300,
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"docker import of {name} failed: {result.stderr.decode().strip()}")
    return name


def busybox_rootfs(busybox: Path = BUSYBOX) -> bytes:
    """The image's root filesystem as an uncompressed tar, every entry owned by root."""
    if not busybox.is_file():
        raise BusyboxMissing(f"{busybox} not found (Debian package busybox-static)")
    binary = busybox.read_bytes()
    if _is_dynamic_elf(binary):
        raise BusyboxMissing(
            f"{busybox} is dynamically linked and would not run in an empty image: "
            "install Debian's busybox-static instead of busybox"
        )
    applets = subprocess.run(
        [str(busybox), "--list"], capture_output=True, text=True, check=True
    ).stdout.split()

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for folder, mode in [("bin", 0o755), ("etc", 0o755), ("root", 0o700)]:
            _add(tar, folder, tarfile.DIRTYPE, mode)
        _add(tar, "tmp", tarfile.DIRTYPE, 0o1777)
        _add(tar, "bin/busybox", tarfile.REGTYPE, 0o755, data=binary)
        for applet in sorted(set(applets) - {"busybox"}):
            _add(tar, f"bin/{applet}", tarfile.SYMTYPE, 0o777, link="busybox")
        _add(tar, "etc/passwd", tarfile.REGTYPE, 0o644, data=_PASSWD.encode())
        _add(tar, "etc/group", tarfile.REGTYPE, 0o644, data=_GROUP.encode())
    return buffer.getvalue()


def _add(
    tar: tarfile.TarFile,
    name: str,
    kind: bytes,
    mode: int,
    data: bytes = b"",
    link: str = "",
) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.linkname = link
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data) if data else None)


def _is_dynamic_elf(binary: bytes) -> bool:
    """True when a 64-bit little-endian ELF names a program interpreter (PT_INTERP)."""
    if binary[:4] != b"\x7fELF" or binary[4] != 2 or binary[5] != 1:
        return False
    phoff = struct.unpack_from("<Q", binary, 0x20)[0]
    phentsize, phnum = struct.unpack_from("<HH", binary, 0x36)
    return any(
        struct.unpack_from("<I", binary, phoff + i * phentsize)[0] == 3 for i in range(phnum)
    )
