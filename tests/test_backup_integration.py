"""`fab backup` and `fab restore` against the real sshd and Docker: a volume archive,
a pg_dump through docker exec and a SQLite .backup copy, each verified; the deploy's
pre-deploy backup uses the same code and stops the deploy when a dump comes out empty."""

from __future__ import annotations

import gzip
import stat

from tests.support.deployenv import CANARY
from tests.support.docker import docker
from tests.support.opsfixtures import OpsEnv, deploy


def seed(ops: OpsEnv) -> None:
    assert "INSERT 0 2" in ops.psql(
        "CREATE TABLE orders (id int, item text); CREATE TABLE users (id int);"
        "INSERT INTO orders VALUES (1, 'pump'), (2, 'filter')"
    )
    assert (
        ops.sqlite(
            "CREATE TABLE notes (t text); INSERT INTO notes VALUES ('keep me');"
            "SELECT count(*) FROM notes"
        )
        == "1"
    )
    docker("exec", ops.container(), "sh", "-c", "echo report-1 > /app/data/report.txt")


def test_backup_verifies_each_item_and_restore_needs_confirm(ops: OpsEnv):
    deploy(ops)
    seed(ops)

    result = ops.fab("backup", ops.app, "prod")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "postgres-db: 2 tables" in result.stdout
    assert "sqlite-app: 1 tables" in result.stdout
    assert f"volume-{ops.app}-prod-data:" in result.stdout
    files = ops.backups("manual")
    assert len(files) == 3 and not [f for f in files if f.name.startswith(".")]
    folder = ops.ops_root / "backups" / "manual"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)
    dump = gzip.decompress(next(f for f in files if f.name.endswith(".sql.gz")).read_bytes())
    assert b"CREATE TABLE public.orders" in dump and b"pump" in dump
    set_id = files[0].name.split(".", 1)[0]

    # The data changes after the backup ...
    ops.psql("DROP TABLE orders")
    ops.sqlite("DELETE FROM notes")
    docker("exec", ops.container(), "rm", "/app/data/report.txt")

    # ... a restore without --confirm shows its plan and changes nothing ...
    refused = ops.fab("restore", ops.app, "prod", set_id)
    assert refused.returncode == 2 and "--confirm" in refused.stderr
    assert "docker stop" in refused.stdout
    assert "does not exist" in ops.psql("SELECT count(*) FROM orders")

    # ... and with it, puts every item back.
    restored = ops.fab("restore", ops.app, "prod", set_id, "--confirm")
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert ops.psql("SELECT item FROM orders ORDER BY id") == "pump\nfilter"
    assert ops.sqlite("SELECT t FROM notes") == "keep me"
    report = docker("exec", ops.container(), "cat", "/app/data/report.txt", check=False)
    assert report.stdout == "report-1\n"
    assert ops.inspect(ops.container(), "{{.State.Running}}") == "true"
    assert ops.records()[-1]["action"] == "restore" and ops.records()[-1]["result"] == "ok"
    assert not (ops.ops_root / "locks" / f"{ops.app}-prod.lock").exists()
    for out in (result, refused, restored):
        assert CANARY not in out.stdout + out.stderr


def test_a_dump_missing_tables_fails_and_keeps_nothing(ops: OpsEnv):
    deploy(ops)
    seed(ops)
    # pg_dump that forgets a table: what a wrong --schema or a broken wrapper does.
    real = "/usr/lib/postgresql/15/bin/pg_dump"
    docker(
        "exec",
        ops.db(),
        "sh",
        "-c",
        f'mv {real} {real}.real && printf \'#!/bin/sh\\n{real}.real "$@" '
        f"--exclude-table=users\\n' > {real} && chmod 755 {real}",
    )
    result = ops.fab("backup", ops.app, "prod")
    assert result.returncode == 8, result.stdout + result.stderr
    assert "the dump lists 1 tables, the database holds 2" in result.stderr
    assert "nothing of it was kept" in result.stderr
    assert ops.backups("manual") == []


def test_empty_predeploy_dump_stops_the_deploy_before_the_source(ops: OpsEnv):
    deploy(ops)
    seed(ops)
    running = ops.inspect(ops.container(), "{{.Id}}")
    before = ops.repo_head()
    docker(
        "exec",
        ops.db(),
        "sh",
        "-c",
        "printf '#!/bin/sh\\nexit 0\\n' > /usr/lib/postgresql/15/bin/pg_dump",
    )
    ops.origin.commit_version("ok v2")

    result = ops.fab("deploy", ops.app, "prod")

    assert result.returncode == 7, result.stdout + result.stderr
    assert "failed at backup" in result.stderr and "the dump is empty" in result.stderr
    assert "source" not in result.stdout.split("backup", 1)[1]
    assert ops.repo_head() == before  # git reset never ran
    assert ops.inspect(ops.container(), "{{.Id}}") == running
    assert ops.health_body() == "ok v1"
    assert ops.backups("deploy") == []  # no partial file is left behind
    record = ops.records()[-1]
    # The deploy puts the pushed configs back (the containers were never touched).
    assert record["result"] in ("failed", "rolled-back") and record["failed_step"] == "backup"
    assert record["to"]["commit"] is None


def test_predeploy_backup_and_backup_all_apply_retention(ops: OpsEnv):
    deploy(ops)
    seed(ops)
    ops.origin.commit_version("ok v2")
    second = deploy(ops, "prod", "--json")
    assert "backup" in second.stderr and "postgres-db: 2 tables" in second.stderr
    deploy_files = ops.backups("deploy")
    assert {f.name.split(".", 1)[1] for f in deploy_files} == {
        "postgres-db.sql.gz",
        "sqlite-app.db.gz",
        f"volume-{ops.app}-prod-data.tar.gz",
    }

    for _ in range(2):
        daily = ops.fab("backup.all", "--kind", "daily")
        assert daily.returncode == 0, daily.stdout + daily.stderr
    assert f"{ops.app}-prod:" in daily.stdout and f"{ops.app}-dev" not in daily.stdout
    sets = {f.name.split(".", 1)[0] for f in ops.backups("daily")}
    assert len(sets) == 2

    listed = ops.fab("backup.list", ops.app, "prod")
    assert listed.returncode == 0 and len(listed.stdout.splitlines()) == 3
