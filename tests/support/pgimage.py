"""A PostgreSQL image made without any registry, from Debian's postgresql packages.

``ensure_postgres_image`` copies the server and client binaries of the newest
``/usr/lib/postgresql/<major>`` (and ``sqlite3``), every shared library ``ldd`` names
for them, the share folder and UTC zone data into a root filesystem beside the
static busybox, and imports it. Its entrypoint behaves like the official image's in
what opsfab relies on: ``PGDATA`` is initialised on first start, the superuser
password comes from ``POSTGRES_PASSWORD_FILE`` (a Docker secret), ``POSTGRES_DB`` is
created, local socket logins are trusted and TCP logins need the password.
"""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

from .docker import docker
from .images import BUSYBOX, busybox_rootfs

POSTGRES_IMAGE = "opsfab-test/postgres:latest"
TOOLS_IMAGE = "opsfab-test/tools:latest"
PG_ROOT = Path("/usr/lib/postgresql")
BINARIES = ["postgres", "initdb", "pg_ctl", "pg_dump", "psql", "pg_isready"]
SQLITE = Path("/usr/bin/sqlite3")

ENTRYPOINT = r"""#!/bin/sh
# opsfab test image: first start initialises PGDATA, then postgres runs as postgres.
set -e
export PGDATA="${PGDATA:-/var/lib/postgresql/data}"
mkdir -p "$PGDATA" /var/run/postgresql
chown postgres:postgres "$PGDATA" /var/run/postgresql
chmod 700 "$PGDATA"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  user="${POSTGRES_USER:-postgres}"
  if [ -n "$POSTGRES_PASSWORD_FILE" ]; then
    cp "$POSTGRES_PASSWORD_FILE" /tmp/pwfile
    chown postgres /tmp/pwfile
    pw="--pwfile=/tmp/pwfile"; hostauth=scram-sha-256
  else
    pw=""; hostauth=trust
  fi
  su -s /bin/sh postgres -c "initdb -D '$PGDATA' -U '$user' --no-locale -E UTF8 \
      --auth-local=trust --auth-host=$hostauth $pw" >/dev/null
  rm -f /tmp/pwfile
  echo "host all all 0.0.0.0/0 $hostauth" >> "$PGDATA/pg_hba.conf"
  if [ -n "$POSTGRES_DB" ] && [ "$POSTGRES_DB" != postgres ]; then
    echo "CREATE DATABASE \"$POSTGRES_DB\" OWNER \"$user\";" |
      su -s /bin/sh postgres -c "postgres --single -D '$PGDATA' postgres" >/dev/null
  fi
fi
exec su -s /bin/sh postgres -c "exec postgres -D '$PGDATA' -c listen_addresses='*'"
"""

_PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    "postgres:x:999:999:postgres:/var/lib/postgresql:/bin/sh\n"
    "nobody:x:65534:65534:nobody:/:/bin/false\n"
)
_GROUP = "root:x:0:\npostgres:x:999:\nnogroup:x:65534:\n"


class PostgresMissing(RuntimeError):
    """Debian's postgresql packages are not installed."""


def ensure_postgres_image(name: str = POSTGRES_IMAGE) -> str:
    """Make sure the image ``name`` exists locally, building it if not; return name."""
    return _ensure(name, ['ENTRYPOINT ["/entrypoint.sh"]'])


def ensure_tools_image(name: str = TOOLS_IMAGE) -> str:
    """The same root filesystem as a base for apps: busybox, sqlite3, psql; no entrypoint."""
    return _ensure(name, ['CMD ["/bin/sh"]'])


def _ensure(name: str, changes: list[str]) -> str:
    if docker("image", "inspect", name, check=False, timeout=60).returncode == 0:
        return name
    rootfs = postgres_rootfs()
    options = [f"ENV PATH=/bin:/usr/bin:{pg_bin()}", "ENV TZ=UTC", "ENV LANG=C", *changes]
    result = subprocess.run(
        ["docker", "import", *[x for o in options for x in ("-c", o)], "-", name],
        input=rootfs,
        capture_output=True,
        timeout=600,
    )
    if result.returncode != 0:
        raise RuntimeError(f"docker import of {name} failed: {result.stderr.decode()}")
    return name


def pg_bin() -> Path:
    majors = sorted((p for p in PG_ROOT.glob("*/bin/postgres")), key=lambda p: int(p.parts[-3]))
    if not majors:
        raise PostgresMissing(
            f"no {PG_ROOT}/<major>/bin/postgres (Debian packages postgresql, sqlite3)"
        )
    return majors[-1].parent


def postgres_rootfs() -> bytes:
    """busybox's root filesystem plus PostgreSQL, sqlite3 and their libraries."""
    binaries = pg_bin()
    major = binaries.parts[-2]
    share = Path("/usr/share/postgresql") / major
    if not SQLITE.exists():
        raise PostgresMissing(f"{SQLITE} not found (Debian package sqlite3)")
    programs = [binaries / b for b in BINARIES] + [SQLITE]
    buffer = io.BytesIO(busybox_rootfs(BUSYBOX))
    out = io.BytesIO()
    with (
        tarfile.open(fileobj=buffer) as base,
        tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for member in base.getmembers():
            if member.name in ("etc/passwd", "etc/group"):
                continue
            tar.addfile(member, base.extractfile(member) if member.isfile() else None)
        _text(tar, "etc/passwd", _PASSWD)
        _text(tar, "etc/group", _GROUP)
        _text(tar, "entrypoint.sh", ENTRYPOINT, 0o755)
        # Debian's layout as is: postgres finds share/ and lib/ relative to its bin/.
        modules = [
            m for m in (binaries.parent / "lib").glob("*.so") if not m.name.startswith("llvmjit")
        ]
        for program in programs + modules:
            tar.add(str(program), str(program).lstrip("/"))
        for lib in sorted(_libraries(programs + modules)):
            tar.add(str(lib.resolve()), str(lib).lstrip("/"))
        tar.add(str(share), str(share).lstrip("/"))
        for zone in ("UTC", "Etc/UTC"):
            tar.add(f"/usr/share/zoneinfo/{zone}", f"usr/share/zoneinfo/{zone}")
        for folder in ("var/lib/postgresql", "var/run/postgresql", "usr/lib", "lib64"):
            info = tarfile.TarInfo(folder)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
    return out.getvalue()


def _libraries(programs: list[Path]) -> set[Path]:
    libs: set[Path] = set()
    for program in programs:
        out = subprocess.run(
            ["ldd", str(program)], capture_output=True, text=True, check=True
        ).stdout
        for row in out.splitlines():
            parts = row.split()
            if "=>" in parts and len(parts) >= 3 and parts[2].startswith("/"):
                libs.add(Path(parts[2]))
            elif parts and parts[0].startswith("/"):
                libs.add(Path(parts[0]))  # the dynamic loader
    return libs


def _text(tar: tarfile.TarFile, name: str, text: str, mode: int = 0o644) -> None:
    data = text.encode()
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    tar.addfile(info, io.BytesIO(data))
