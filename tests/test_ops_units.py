"""Unit tests of the operator tasks' pure parts: no host, no Docker."""

from __future__ import annotations

from pathlib import Path

import pytest

from fabfile import backup, status
from fabfile import secretsync as secrets
from fabfile.inventory import load
from tests.support.deployenv import CANARY

PEM = "-----BEGIN KEY-----\nMIIE\nAbc==\n-----END KEY-----"


@pytest.fixture
def deployment(tmp_path: Path):
    inv = tmp_path / "hosts.toml"
    inv.write_text("""
[hosts.h]
address = "127.0.0.1"
memory = "1g"
ops_root = "/srv/ops"

[apps.a]
host = "h"
repo = "/r"
required_secrets = ["NEEDED"]
[apps.a.envs.prod]
branch = "main"
[apps.a.backup]
volumes = ["a-{env}-data"]
databases = ["db"]
sqlite = { web = "/app/data/x.db" }
[apps.a.services.web]
container = "a-{env}"
image = "img:1"
memory = "64m"
volumes = { "a-{env}-data" = "/app/data" }
[apps.a.services.db]
container = "a-db-{env}"
image = "pg:16"
memory = "64m"
environment = { POSTGRES_USER = "jw", POSTGRES_DB = "jwdb" }
""")
    return load(inv).deployment("a", "prod")


class TestEnvFiles:
    def test_export_prefix_is_dropped(self, tmp_path):
        f = tmp_path / "x.env"
        f.write_text("export A=1\nexport  B='two words'\n")
        assert secrets.read_env_file(f) == {"A": "1", "B": "two words"}

    def test_quoted_multiline_pem_is_read_whole(self, tmp_path):
        f = tmp_path / "x.env"
        f.write_text(f'KEY="{PEM}"\n')
        assert secrets.read_env_file(f) == {"KEY": PEM}

    @pytest.mark.parametrize("text", [f"KEY={PEM}\n", "KEY=-----BEGIN KEY-----\nAbc==\n"])
    def test_unquoted_multiline_is_refused_without_its_value(self, tmp_path, text):
        f = tmp_path / "x.env"
        f.write_text(text)
        with pytest.raises(secrets.SecretsError) as err:
            secrets.read_env_file(f)
        assert "MIIE" not in str(err.value) and "Abc" not in str(err.value)

    def test_dollar_is_literal(self, tmp_path):
        f = tmp_path / "x.env"
        f.write_text("A=x${HOME}y\n")
        assert secrets.read_env_file(f) == {"A": "x${HOME}y"}

    def test_host_file_round_trips(self):
        values = {"A": 'q"uo\\te $x\nnext\tline', "B": PEM, "C": "", "D": CANARY}
        rendered = secrets.render_env(values)
        assert secrets.parse_host_env(rendered.decode()) == values
        assert rendered.count(b"\n") == 1 + len(values)  # one line per key

    def test_secret_file_loses_one_trailing_newline_only(self):
        assert secrets.secret_bytes(b"pw\n") == b"pw"
        assert secrets.secret_bytes(b"pw\r\n") == b"pw"
        assert secrets.secret_bytes(b"pw\n\n") == b"pw\n"
        assert secrets.secret_bytes(b" pw ") == b" pw "

    def test_change_lines_hold_names_only(self):
        change = secrets.Change(added=["A"], changed=["B"], files={"pg.txt": "changed"})
        assert change.lines() == ["  + A (added)", "  ~ B (changed)", "  pg.txt: changed"]


class TestBackupPlan:
    def test_recipe_reads_user_and_database_from_the_service(self, deployment):
        items = backup.recipe(deployment)
        assert [(i.kind, i.name) for i in items] == [
            ("volume", "a-prod-data"),
            ("postgres", "db"),
            ("sqlite", "web"),
        ]
        pg = items[1]
        assert (pg.container, pg.user, pg.database) == ("a-db-prod", "jw", "jwdb")
        assert items[0].image == "img:1"

    def test_dump_script_quotes_each_argument_once(self, deployment):
        job = backup.new_job(deployment, "daily", "a-prod-20260101T030000Z-abcdef")
        script = backup.dump_script(job)
        assert (
            "docker exec a-db-prod pg_dump -U jw -d jwdb --clean --if-exists --no-owner"
            " > /srv/ops/backups/daily/.partial-a-prod-20260101T030000Z-abcdef."
            "postgres-db.sql.gz"
        ) in script
        assert "umask 077" in script

    def raw(self, **facts):
        return {f"postgres-db {k}": v for k, v in facts.items()}

    def test_empty_dump_fails(self, deployment):
        job = backup.Job(deployment, "deploy", "s", [backup.recipe(deployment)[1]])
        [check] = backup.verify(
            job,
            self.raw(
                dump=(0, ""), size=(0, "0"), complete=(1, "0"), dumped=(1, "0"), tables=(0, "3")
            ),
        )
        assert not check.ok and "empty" in check.detail

    def test_dump_missing_tables_fails(self, deployment):
        job = backup.Job(deployment, "deploy", "s", [backup.recipe(deployment)[1]])
        [check] = backup.verify(
            job,
            self.raw(
                dump=(0, ""), size=(0, "900"), complete=(0, "1"), dumped=(0, "2"), tables=(0, "3")
            ),
        )
        assert not check.ok and "lists 2 tables, the database holds 3" in check.detail

    def test_complete_dump_passes(self, deployment):
        job = backup.Job(deployment, "deploy", "s", [backup.recipe(deployment)[1]])
        [check] = backup.verify(
            job,
            self.raw(
                dump=(0, ""), size=(0, "900"), complete=(0, "1"), dumped=(0, "3"), tables=(0, "3")
            ),
        )
        assert check.ok and check.detail.startswith("3 tables")

    def test_prune_keeps_the_newest_sets_of_this_deployment_only(self, deployment):
        job = backup.Job(deployment, "daily", "a-prod-20260105T030000Z-000005", [])
        listing = "\n".join(
            [
                "a-prod-20260101T030000Z-000001.volume-x.tar.gz",
                "a-prod-20260101T030000Z-000001.postgres-db.sql.gz",
                "a-prod-20260103T030000Z-000003.volume-x.tar.gz",
                "a-prod-20260104T030000Z-000004.volume-x.tar.gz",
                "a-prod-dev-20260101T030000Z-000001.volume-x.tar.gz",
            ]
        )
        command, removed = backup.prune_line(job, listing, keep=2)
        assert removed == ["a-prod-20260103T030000Z-000003", "a-prod-20260101T030000Z-000001"]
        assert "a-prod-dev" not in command and command.count("/srv/ops/backups/daily/") == 3
        assert backup.prune_line(job, listing, keep=None) == ("", [])


class TestStatusRows:
    def test_rows_from_one_script_output(self, deployment):
        raw = {
            "now": (0, "2026-01-01T01:00:00Z"),
            "inspect": (
                1,
                "/a-prod|running|healthy|0|0|2026-01-01T00:00:00.123456789Z|67108864|abc\n",
            ),
            "memory": (0, "abc 20971520 4194304\n"),
            "head a-prod": (0, "f" * 40),
            "log": (
                0,
                '{"action": "deploy", "app": "a", "env": "prod", "time": '
                '"2025-12-31T10:00:00Z", "result": "ok"}\nnot json\n',
            ),
        }
        rows = status.rows(raw, [deployment], [])
        web = rows[0]
        assert (web.state, web.health, web.uptime_s, web.memory_mb, web.limit_mb) == (
            "running",
            "healthy",
            3600,
            16.0,
            64,
        )
        assert web.deployed_at == "2025-12-31T10:00:00Z" and web.commit == "f" * 40
        assert rows[1].state == "missing"
        text = status.table(rows)
        assert "16/64 MB 25%" in text and "1h 0m" in text and "ffffffffffff" in text

    def test_status_is_one_script(self, deployment):
        script = status.status_script([deployment], ["ops-nginx"])
        assert script.count("docker container inspect") == 1
        assert "a-prod a-db-prod ops-nginx" in script
