"""An nginx image made without any registry: this machine's nginx in a busybox root fs.

``ensure_nginx_image`` imports ``opsfab-test/nginx:latest`` from a tar built in memory:
the busybox root filesystem of ``images.busybox_rootfs`` (wget for the health check),
/usr/sbin/nginx with the shared libraries ``ldd`` names, the folders Debian's nginx
opens at start, and users nginx, www-data and nobody. /etc/nginx stays empty: the
proxy mounts the rendered tree there, as it does on a real host.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import tarfile
from pathlib import Path

from .docker import docker
from .images import busybox_rootfs

NGINX_IMAGE = "opsfab-test/nginx:latest"
NGINX = Path("/usr/sbin/nginx")

_PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    "nginx:x:101:101:nginx:/nonexistent:/bin/false\n"
    "www-data:x:33:33:www-data:/var/www:/bin/false\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
)
_GROUP = "root:x:0:\nnginx:x:101:\nwww-data:x:33:\nnogroup:x:65534:\n"
_FOLDERS = [
    "etc/nginx",
    "usr/sbin",
    "var/lib/nginx",
    "var/log/nginx",
    "var/cache/nginx",
    "var/run",
    "run",
    "usr/share/nginx",
]
_LABEL = "org.opsfab.test.nginx-sha256"


class NginxMissing(RuntimeError):
    """No nginx binary on this machine to put in the image."""


def ensure_nginx_image(name: str = NGINX_IMAGE, nginx: Path = NGINX) -> str:
    """Make sure ``name`` exists and holds this machine's nginx; import it if not."""
    if not nginx.is_file():
        raise NginxMissing(f"{nginx} not found (Debian package nginx-light)")
    digest = hashlib.sha256(nginx.read_bytes()).hexdigest()
    found = docker(
        "image",
        "inspect",
        "--format",
        f'{{{{index .Config.Labels "{_LABEL}"}}}}',
        name,
        check=False,
        timeout=60,
    )
    if found.returncode == 0 and found.stdout.strip() == digest:
        return name
    result = subprocess.run(
        ["docker", "import",
         "-c", "ENV PATH=/usr/sbin:/bin",
         "-c", f"LABEL {_LABEL}={digest}",
         "-c", 'CMD ["nginx", "-g", "daemon off;"]',
         "-", name],
        input=nginx_rootfs(nginx), capture_output=True, timeout=300,
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"docker import of {name} failed: {result.stderr.decode().strip()}")
    return name


def nginx_rootfs(nginx: Path = NGINX) -> bytes:
    """busybox's root fs plus nginx and its libraries, as one uncompressed tar."""
    buffer = io.BytesIO(busybox_rootfs())
    out = io.BytesIO()
    with (
        tarfile.open(fileobj=buffer) as base,
        tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for member in base.getmembers():
            if member.name in ("etc/passwd", "etc/group"):
                continue
            tar.addfile(member, base.extractfile(member) if member.isfile() else None)
        folders = set()
        for folder in _FOLDERS + [str(Path(p).parent).lstrip("/") for p in _libraries(nginx)]:
            parts = Path(folder).parts
            for i in range(1, len(parts) + 1):
                folders.add("/".join(parts[:i]))
        for folder in sorted(folders - {"bin", "etc", "tmp", "root"}):
            _add(tar, folder, tarfile.DIRTYPE, 0o755)
        _add(tar, "usr/sbin/nginx", tarfile.REGTYPE, 0o755, nginx.read_bytes())
        for library in _libraries(nginx):
            _add(
                tar,
                library.lstrip("/"),
                tarfile.REGTYPE,
                0o755,
                Path(library).resolve().read_bytes(),
            )
        _add(tar, "etc/passwd", tarfile.REGTYPE, 0o644, _PASSWD.encode())
        _add(tar, "etc/group", tarfile.REGTYPE, 0o644, _GROUP.encode())
    return out.getvalue()


def _libraries(binary: Path) -> list[str]:
    """Absolute paths of the shared libraries and loader the binary needs (from ldd)."""
    text = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=True).stdout
    paths = []
    for row in text.splitlines():
        for word in row.split():
            if word.startswith("/"):
                paths.append(word)
                break
    return sorted(set(paths))


def _add(tar: tarfile.TarFile, name: str, kind: bytes, mode: int, data: bytes = b"") -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data) if data else None)
