"""Backups: each app's own recipe, verified before it counts, pruned by retention.

A recipe (``apps.<app>.backup`` in hosts.toml) names what holds the app's data:

- ``volumes``: an archive of each Docker volume, made by a throwaway container of the
  image of a service that mounts it, streamed to the host (``tar -czf -``);
- ``databases``: ``pg_dump`` run through ``docker exec`` in each PostgreSQL service, of
  its ``POSTGRES_DB`` as its ``POSTGRES_USER``;
- ``sqlite``: a consistent copy made by SQLite's own ``.backup`` inside the container.

One backup is a *set*: files named ``<app>-<env>-<stamp>.<item>`` in
``<ops root>/backups/<kind>/`` (mode 700, files 600). Everything of a set is dumped and
checked in one round trip; a second one keeps it (or removes it) and prunes old sets.
A dump that is empty, incomplete, or lists fewer tables than the database holds fails
the backup, and nothing of that set is kept.
"""

from __future__ import annotations

import posixpath
import re
import secrets
import shlex
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import PurePosixPath

from . import probe
from .errors import InventoryError, OpsfabError, UsageError
from .inventory import BackupSchedule, Deployment, Inventory
from .target import Target, line

KINDS = ("manual", "deploy", "daily", "weekly")
STAMP = r"\d{8}T\d{6}Z(?:-[0-9a-f]{6})?"
# A container of the app's own image that only touches the mounted data: no network, no
# pull (a missing image must fail, not come from a registry), root to read every file.
THROWAWAY = ["docker", "run", "--rm", "--pull", "never", "--network", "none", "--user", "0:0"]
PG_COMPLETE = "PostgreSQL database dump complete"
PG_TABLES = (
    "SELECT count(*) FROM pg_catalog.pg_tables"
    " WHERE schemaname NOT IN ('pg_catalog', 'information_schema')"
)
SQLITE_TABLES = "SELECT count(*) FROM sqlite_master WHERE type = 'table'"


class BackupError(OpsfabError):
    """A backup could not be made or did not pass its verification."""

    exit_code = 8


@dataclass(frozen=True)
class Item:
    """One thing a recipe saves: a volume, a PostgreSQL database or a SQLite file."""

    kind: str  # "volume", "postgres" or "sqlite"
    name: str  # the volume, or the service
    container: str = ""
    image: str = ""
    user: str = ""
    database: str = ""
    path: str = ""

    @property
    def label(self) -> str:
        return f"{self.kind}-{self.name}"

    @property
    def suffix(self) -> str:
        return {"volume": "tar.gz", "postgres": "sql.gz", "sqlite": "db.gz"}[self.kind]

    def file(self, set_id: str) -> str:
        return f"{set_id}.{self.label}.{self.suffix}"


@dataclass
class Job:
    """One backup set of one deployment: what to save and where."""

    deployment: Deployment
    kind: str
    set_id: str
    items: list[Item]

    @property
    def folder(self) -> PurePosixPath:
        return backup_folder(self.deployment, self.kind)

    def path(self, item: Item) -> str:
        return str(self.folder / item.file(self.set_id))

    def partial(self, item: Item) -> str:
        return str(self.folder / f".partial-{item.file(self.set_id)}")


@dataclass
class Verified:
    item: Item
    ok: bool
    detail: str


@dataclass
class Result:
    job: Job
    files: list[str] = field(default_factory=list)
    details: list[str] = field(default_factory=list)
    pruned: list[str] = field(default_factory=list)


# -- the recipe ---------------------------------------------------------------------


def recipe(d: Deployment) -> list[Item]:
    """The items of the deployment's backup recipe, in a stable order."""
    by_name = {s.name: s for s in d.services}
    spec = d.app.backup
    items = []
    for volume in d.backup_volumes:
        items.append(Item("volume", volume, image=_image_for(d, volume)))
    for name in spec.databases:
        service = _service(d, by_name, name, "databases")
        env = service.environment
        user = env.get("POSTGRES_USER", "postgres")
        items.append(
            Item(
                "postgres",
                name,
                container=service.container,
                user=user,
                database=env.get("POSTGRES_DB", user),
            )
        )
    for name, path in sorted(spec.sqlite.items()):
        service = _service(d, by_name, name, "sqlite")
        items.append(
            Item("sqlite", name, container=service.container, image=service.image, path=path)
        )
    return items


def _service(d: Deployment, by_name: dict, name: str, key: str):
    if name not in by_name:
        raise InventoryError(
            str(d.app_name),
            [
                (
                    f"apps.{d.app_name}.backup.{key}",
                    f"no service {name!r}; use one of: {', '.join(sorted(by_name))}",
                )
            ],
        )
    return by_name[name]


def _image_for(d: Deployment, volume: str) -> str:
    """The image of a service that mounts the volume (it has tar), else any of the app."""
    for service in d.services:
        if volume in service.volumes:
            return service.image
    if not d.services:
        raise InventoryError(d.app_name, [(f"apps.{d.app_name}.services", "no services")])
    return d.services[0].image


def backup_folder(d: Deployment, kind: str) -> PurePosixPath:
    return d.ops_root / "backups" / kind


def new_job(d: Deployment, kind: str, set_id: str | None = None) -> Job:
    if kind not in KINDS:
        raise UsageError(f"unknown backup kind {kind!r}", f"use one of: {', '.join(KINDS)}")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)
    return Job(d, kind, set_id or f"{d.name}-{stamp}", recipe(d))


def retention(inventory: Inventory, kind: str) -> int | None:
    """How many sets of a kind to keep per deployment; None keeps them all (manual)."""
    schedule = inventory.infra.backup if inventory.infra else BackupSchedule()
    return {
        "daily": schedule.keep_daily,
        "weekly": schedule.keep_weekly,
        "deploy": schedule.keep_deploy,
    }.get(kind)


# -- the commands -------------------------------------------------------------------


def dump_script(job: Job) -> str:
    """Dump every item to a partial file and print what verifies it: one round trip."""
    return probe.script(dump_sections(job))


def dump_sections(job: Job) -> list[tuple[str, str]]:
    folder = str(job.folder)
    # umask first: every file of the set is created mode 600, in a mode 700 folder.
    items = [
        ("prepare", "umask 077 && " + line(["mkdir", "-p", folder], ["chmod", "700", folder]))
    ]
    for item in job.items:
        items += [
            (f"{item.label} {label}", command) for label, command in _item_sections(job, item)
        ]
    items.append(("list", line(["ls", "-1A", folder])))
    return items


def _item_sections(job: Job, item: Item) -> list[tuple[str, str]]:
    partial = job.partial(item)
    out = " > " + shlex.quote(partial)
    size = ("size", line(["stat", "-c", "%s", partial]))
    if item.kind == "volume":
        tar = [
            *THROWAWAY,
            "--entrypoint",
            "tar",
            "-v",
            f"{item.name}:/data:ro",
            item.image,
            "-czf",
            "-",
            "-C",
            "/data",
            ".",
        ]
        # `docker run -v` would create a missing volume (and archive it empty), and a
        # missing image would be pulled: check the one, forbid the other.
        exists = line(["docker", "volume", "inspect", "--format", "{{.Name}}", item.name])
        return [
            ("dump", f"{exists} >/dev/null && " + line(tar) + out),
            size,
            ("gzip", line(["gzip", "-t", partial])),
            ("entries", line(["tar", "-tzf", partial]) + " | wc -l"),
        ]
    if item.kind == "postgres":
        exec_ = ["docker", "exec", item.container]
        dump = [
            *exec_,
            "pg_dump",
            "-U",
            item.user,
            "-d",
            item.database,
            "--clean",
            "--if-exists",
            "--no-owner",
        ]
        return [
            ("dump", line(dump) + out),
            size,
            (
                "complete",
                line(["tail", "-n", "5", partial]) + " | " + line(["grep", "-c", PG_COMPLETE]),
            ),
            ("dumped", line(["grep", "-cE", "^CREATE (UNLOGGED )?TABLE ", partial])),
            (
                "tables",
                line(
                    [*exec_, "psql", "-U", item.user, "-d", item.database, "-AtX", "-c", PG_TABLES]
                ),
            ),
        ]
    inside = f"/tmp/opsfab-{job.set_id}.db"
    sqlite = ["docker", "exec", item.container, "sqlite3"]
    return [
        ("copy", line([*sqlite, item.path, f".backup '{inside}'"])),
        ("integrity", line([*sqlite, inside, "PRAGMA integrity_check"])),
        ("tables", line([*sqlite, item.path, SQLITE_TABLES])),
        ("copied", line([*sqlite, inside, SQLITE_TABLES])),
        ("fetch", line(["docker", "exec", item.container, "cat", inside]) + out),
        ("cleanup", line(["docker", "exec", item.container, "rm", "-f", inside])),
        size,
    ]


def verify(job: Job, raw: dict[str, tuple[int, str]]) -> list[Verified]:
    """Judge each item from the dump script's output; never reads a dump's content."""
    return [
        _verify(
            item, {k.split(" ", 1)[1]: v for k, v in raw.items() if k.startswith(item.label + " ")}
        )
        for item in job.items
    ]


def _verify(item: Item, facts: dict[str, tuple[int, str]]) -> Verified:
    def out(key: str) -> str:
        return facts.get(key, (1, ""))[1].strip()

    def rc(key: str) -> int:
        return facts.get(key, (1, ""))[0]

    first = "dump" if item.kind != "sqlite" else "copy"
    if rc(first) != 0:
        return Verified(item, False, f"{first} failed (exit {rc(first)}): {_tail(out(first))}")
    size = int(out("size")) if out("size").isdigit() else 0
    if size == 0:
        return Verified(item, False, "the dump is empty (0 bytes)")
    if item.kind == "volume":
        entries = int(out("entries") or 0) if out("entries").isdigit() else 0
        if rc("gzip") != 0 or entries < 1:
            return Verified(item, False, "the archive does not read back")
        return Verified(item, True, f"{entries} entries, {_size(size)}")
    tables, dumped = (
        _int(out("tables")),
        _int(out("dumped" if item.kind == "postgres" else "copied")),
    )
    if item.kind == "postgres" and _int(out("complete")) < 1:
        return Verified(item, False, f"the dump is incomplete: no '{PG_COMPLETE}' at its end")
    if item.kind == "sqlite" and out("integrity") != "ok":
        return Verified(item, False, "the copy fails PRAGMA integrity_check")
    if tables < 0:
        return Verified(item, False, f"could not count the tables: {_tail(out('tables'))}")
    # A data row may itself start with "CREATE TABLE": only fewer is a missing table.
    if dumped < tables or (item.kind == "sqlite" and dumped != tables):
        return Verified(
            item, False, f"the dump lists {max(dumped, 0)} tables, the database holds {tables}"
        )
    return Verified(item, True, f"{tables} tables, {_size(size)}")


def _int(text: str) -> int:
    return int(text) if text.isdigit() else -1


def _tail(text: str) -> str:
    return " / ".join(text.splitlines()[-3:]) or "no output"


def _size(size: int) -> str:
    return f"{size / 1024:.1f} KiB" if size < 1024 * 1024 else f"{size / 1048576:.1f} MiB"


def keep_line(job: Job) -> str:
    """Move each verified partial file into place (compressing plain dumps)."""
    parts = []
    for item in job.items:
        partial, final = job.partial(item), job.path(item)
        if item.kind == "volume":
            parts.append(line(["mv", "-f", partial, final]))
        else:
            parts.append(line(["gzip", "-n", "-f", partial], ["mv", "-f", partial + ".gz", final]))
    return " && ".join(parts)


def discard_line(job: Job) -> str:
    return line(["rm", "-f", "--", *[job.partial(i) for i in job.items]])


def sets_in(listing: str, d: Deployment) -> dict[str, list[str]]:
    """{set id: [file names]} of the deployment in a folder listing."""
    pattern = re.compile(rf"^({re.escape(d.name)}-{STAMP})\.[a-z]")
    found: dict[str, list[str]] = {}
    for name in listing.split():
        match = pattern.match(name)
        if match:
            found.setdefault(match.group(1), []).append(name)
    return found


def prune_line(job: Job, listing: str, keep: int | None) -> tuple[str, list[str]]:
    """(command removing sets beyond the newest ``keep``, the set ids removed)."""
    if keep is None:
        return "", []
    sets = sets_in(listing, job.deployment)
    sets.setdefault(job.set_id, [])
    others = sorted((s for s in sets if s != job.set_id), key=_stamp_of, reverse=True)
    old = others[max(keep - 1, 0) :]  # the set just made always counts as one kept
    files = [str(job.folder / f) for s in old for f in sets[s]]
    return (line(["rm", "-f", "--", *files]) if files else ""), old


def _stamp_of(set_id: str) -> str:
    return re.search(STAMP + "$", set_id).group(0)


# -- running ------------------------------------------------------------------------


def run(target: Target, job: Job, keep: int | None = None) -> Result:
    """Dump, verify, keep and prune: two round trips. Raises BackupError on a bad dump."""
    if not job.items:
        return Result(job)
    raw = probe.parse(target.run(dump_script(job), check=False).stdout)
    if raw.get("prepare", (1, ""))[0] != 0:
        raise BackupError(
            f"cannot create {job.folder} on {target.name}: "
            f"{_tail(raw.get('prepare', (1, ''))[1])}",
            "check the ops root's owner and free disk space",
        )
    checks = verify(job, raw)
    bad = [c for c in checks if not c.ok]
    if bad:
        target.run(discard_line(job), check=False)
        reasons = "; ".join(f"{c.item.label}: {c.detail}" for c in bad)
        raise BackupError(
            f"backup {job.set_id} failed verification, nothing of it was kept: {reasons}",
            f"check apps.{job.deployment.app_name}.backup in hosts.toml and the containers "
            f"(fab status {job.deployment.app_name} {job.deployment.env}), then retry",
        )
    prune, pruned = prune_line(job, raw.get("list", (0, ""))[1], keep)
    target.run(" && ".join(p for p in (keep_line(job), prune) if p))
    return Result(
        job,
        [i.file(job.set_id) for i in job.items],
        [f"{c.item.label}: {c.detail}" for c in checks],
        pruned,
    )


def backup(target: Target, inventory: Inventory, d: Deployment, kind: str = "manual") -> Result:
    job = new_job(d, kind)
    if not job.items:
        raise UsageError(
            f"{d.app_name} has no backup recipe",
            f"add volumes, databases or sqlite to [apps.{d.app_name}.backup]",
        )
    return run(target, job, retention(inventory, kind))


def backup_all(
    target_for, inventory: Inventory, kind: str, report=print
) -> tuple[list[Result], list[tuple[str, OpsfabError]]]:
    """Back up every deployment the schedule covers; one failure does not stop the rest."""
    if kind not in ("daily", "weekly"):
        raise UsageError(f"--kind {kind!r}: backup.all takes daily or weekly", "--kind daily")
    schedule = inventory.infra.backup if inventory.infra else BackupSchedule()
    done, failed = [], []
    for d in inventory.deployments():
        if d.env not in schedule.envs or not recipe(d):
            continue
        try:
            result = run(target_for(d.host_name), new_job(d, kind), retention(inventory, kind))
        except OpsfabError as exc:
            failed.append((d.name, exc))
            report(f"{d.name}: FAILED {exc.message}")
            continue
        done.append(result)
        report(describe(result))
    return done, failed


def describe(result: Result) -> str:
    job = result.job
    text = f"{job.deployment.name}: {job.set_id} in {job.folder}"
    text += "".join(f"\n  {d}" for d in result.details)
    if result.pruned:
        text += f"\n  removed {len(result.pruned)} old set(s): {', '.join(result.pruned)}"
    return text


# -- restore ------------------------------------------------------------------------


def find_set(target: Target, d: Deployment, set_id: str) -> tuple[str, list[str]]:
    """(kind, file names) of a set of this deployment, looked up in every kind's folder."""
    set_id = posixpath.basename(set_id.rstrip("/")).split(".", 1)[0]
    if not re.fullmatch(rf"{re.escape(d.name)}-{STAMP}", set_id):
        raise UsageError(
            f"{set_id!r} is not a backup of {d.name}",
            f"give a set id like {d.name}-20260101T030000Z (fab backup.list)",
        )
    folders = [str(backup_folder(d, k)) for k in KINDS]
    script = probe.script(
        [(k, line(["ls", "-1A", f])) for k, f in zip(KINDS, folders, strict=True)]
    )
    raw = probe.parse(target.run(script, check=False).stdout)
    for kind in KINDS:
        files = sets_in(raw.get(kind, (1, ""))[1], d).get(set_id)
        if files:
            return kind, sorted(files)
    raise UsageError(
        f"no backup {set_id} on {d.host_name}",
        f"fab backup.list {d.app_name} {d.env} shows the sets there",
    )


def list_sets(target: Target, d: Deployment) -> list[tuple[str, str, list[str]]]:
    """(kind, set id, files) of every backup of the deployment, newest first."""
    script = probe.script([(k, line(["ls", "-1A", str(backup_folder(d, k))])) for k in KINDS])
    raw = probe.parse(target.run(script, check=False).stdout)
    sets = [
        (k, s, sorted(f)) for k in KINDS for s, f in sets_in(raw.get(k, (1, ""))[1], d).items()
    ]
    return sorted(sets, key=lambda t: _stamp_of(t[1]), reverse=True)


def restore_plan(d: Deployment, kind: str, set_id: str, files: list[str]) -> list[str]:
    """The commands that put a set back, in order: stop the app, restore, start it."""
    job = Job(d, kind, set_id, recipe(d))
    present = [i for i in job.items if i.file(set_id) in files]
    if not present:
        raise UsageError(
            f"{set_id} holds nothing the recipe of {d.app_name} knows",
            "restore it by hand from " + str(job.folder),
        )
    databases = {i.container for i in present if i.kind == "postgres"}
    stop = [s.container for s in d.services if s.container not in databases]
    # Every file reads back before anything is stopped.
    commands = [" && ".join(line(["gzip", "-t", job.path(i)]) for i in present)]
    commands += [line(["docker", "stop", *stop])] if stop else []
    for item in present:
        commands.append(_restore_item(job, item))
    commands.append(line(["docker", "start", *[s.container for s in d.services]]))
    return commands


def _restore_item(job: Job, item: Item) -> str:
    path = job.path(item)
    check = line(["gzip", "-t", path])
    if item.kind == "volume":
        # The volume is emptied first, so files deleted since the backup do not stay.
        script = "find /data -mindepth 1 -maxdepth 1 -exec rm -rf {} + && tar -xzf - -C /data"
        restore = [
            *THROWAWAY,
            "-i",
            "--entrypoint",
            "sh",
            "-v",
            f"{item.name}:/data",
            item.image,
            "-c",
            script,
        ]
        return check + " && " + line(restore) + " < " + shlex.quote(path)
    if item.kind == "postgres":
        psql = [
            "docker",
            "exec",
            "-i",
            item.container,
            "psql",
            "-U",
            item.user,
            "-d",
            item.database,
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "--single-transaction",
        ]
        return check + " && " + line(["gunzip", "-c", path]) + " | " + line(psql) + " >/dev/null"
    # Through the stopped container's volumes; a stale -wal would be replayed over it.
    script = (
        'cat > "$1.opsfab-restore" && mv -f "$1.opsfab-restore" "$1" && rm -f "$1-wal" "$1-shm"'
    )
    restore = [
        *THROWAWAY,
        "-i",
        "--volumes-from",
        item.container,
        "--entrypoint",
        "sh",
        item.image,
        "-c",
        script,
        "sh",
        item.path,
    ]
    return check + " && " + line(["gunzip", "-c", path]) + " | " + line(restore)
