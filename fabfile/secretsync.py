"""Secrets: local, git-ignored files pushed to the host; values never leave memory.

The local folder ``secrets/<app>/`` (beside hosts.toml) holds ``<env>.env``, read with
python-dotenv, and the Docker secret files the services name (``pg_prod_password.txt``).
On the host they go to ``<ops root>/secrets/<app>/``: the folder is mode 700, each file
is created empty with mode 600 before any byte is written into it, then renamed over
the old one, so no reader ever sees a partial or world-readable file.

Only key names, file names and counts are ever printed. The host's env file is written
in one quoting that Docker Compose reads back exactly: ``KEY="value"`` with ``\\``,
``"``, ``$`` and newlines escaped, so ``$`` is never interpolated and a multi-line
value (a PEM key) is carried whole.
"""

from __future__ import annotations

import hashlib
import io
import re
import secrets as token
from dataclasses import dataclass, field
from pathlib import Path

from dotenv import dotenv_values
from dotenv.parser import parse_stream

from . import probe
from .errors import OpsfabError, UsageError
from .inventory import Deployment, Inventory
from .target import Target, line

HEADER = "# written by opsfab secrets.push; edit the local file and push again\n"
KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
FORBIDDEN = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # control characters but \t, \n


class SecretsError(OpsfabError):
    exit_code = 2


@dataclass
class Change:
    """What a push changes; names only, never values."""

    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)  # secret file -> outcome
    modes: dict[str, str] = field(default_factory=dict)  # host path -> mode found, if wrong

    @property
    def any(self) -> bool:
        return bool(
            self.added
            or self.removed
            or self.changed
            or self.modes
            or any(v != "unchanged" for v in self.files.values())
        )

    def lines(self) -> list[str]:
        rows = [f"  + {k} (added)" for k in self.added]
        rows += [f"  - {k} (removed)" for k in self.removed]
        rows += [f"  ~ {k} (changed)" for k in self.changed]
        rows += [f"  {name}: {outcome}" for name, outcome in sorted(self.files.items())]
        rows += [
            f"  {path}: mode {mode} -> {'700' if path.endswith('/') else '600'}"
            for path, mode in sorted(self.modes.items())
        ]
        return rows

    def as_dict(self) -> dict:
        return {
            "added": self.added,
            "removed": self.removed,
            "changed": self.changed,
            "unchanged": self.unchanged,
            "files": self.files,
            "modes": self.modes,
        }


@dataclass
class Local:
    """The local secrets of one deployment, read and checked."""

    env_path: Path | None
    values: dict[str, str] | None
    files: dict[str, bytes]  # host file name -> exact bytes


def local_folder(inventory: Inventory, app: str) -> Path:
    return inventory.path.parent / "secrets" / app


# -- reading the local side -----------------------------------------------------------


def read_local(inventory: Inventory, d: Deployment) -> Local:
    folder = local_folder(inventory, d.app_name)
    env_path = folder / f"{d.env}.env"
    needs_env = any(s.env_file for s in d.services) or bool(d.app.required_secrets)
    values = None
    if env_path.exists():
        values = read_env_file(env_path)
    elif needs_env:
        raise SecretsError(
            f"{env_path} does not exist",
            f"create it (KEY=value lines; see README, Secrets) with the keys "
            f"{', '.join(d.app.required_secrets) or 'the app needs'}",
        )
    if values is not None:
        missing = [k for k in d.app.required_secrets if not values.get(k)]
        if missing:
            raise SecretsError(
                f"{env_path} lacks required keys (or they are empty): {', '.join(missing)}",
                f"add them; apps.{d.app_name}.required_secrets in hosts.toml lists them",
            )
    files = {}
    for name, host_path in sorted(d.secret_files.items()):
        source = folder / host_path.name
        if not source.exists():
            raise SecretsError(
                f"{source} does not exist (Docker secret {name!r})",
                "write the secret alone in that file, mode 600",
            )
        files[host_path.name] = secret_bytes(source.read_bytes())
    return Local(env_path if values is not None else None, values, files)


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=value pairs by python-dotenv, literal (no ${VAR} expansion), refused if unsure.

    ``export KEY=value`` is read as KEY. A line python-dotenv cannot read (the second
    line of an unquoted multi-line value, for instance) is refused by its number, so
    a value is never silently cut to its first line.
    """
    text = path.read_text(encoding="utf-8")
    problems = []
    for binding in parse_stream(io.StringIO(text)):
        if binding.error:
            problems.append(f"line {binding.original.line}: not KEY=value")
        elif binding.key is not None and binding.value is None:
            problems.append(f"line {binding.original.line}: no '=' after a name")
    if problems:
        raise SecretsError(
            f"{path} cannot be read safely: " + "; ".join(problems),
            "write one KEY=value per line; put a multi-line value (a PEM key) in double "
            'quotes, e.g. KEY="-----BEGIN ...\\n..." or with real line breaks inside quotes',
        )
    values = {k: v for k, v in dotenv_values(path, interpolate=False).items() if v is not None}
    for key, value in values.items():
        if not KEY.match(key):
            raise SecretsError(
                f"{path}: {key!r} is not a valid variable name",
                "use letters, digits and '_', not starting with a digit",
            )
        if value.startswith("-----BEGIN ") and "-----END " not in value:
            raise SecretsError(
                f"{path}: the value of {key} starts a PEM block that does not end in it",
                "put the whole key in double quotes, line breaks included",
            )
        if FORBIDDEN.search(value):
            raise SecretsError(
                f"{path}: the value of {key} holds a control character",
                "remove it (a carriage return from a Windows editor?)",
            )
    return values


def secret_bytes(data: bytes) -> bytes:
    """A Docker secret file holds the secret alone: one trailing line break is dropped."""
    if data.endswith(b"\r\n"):
        return data[:-2]
    if data.endswith(b"\n"):
        return data[:-1]
    return data


def render_env(values: dict[str, str]) -> bytes:
    """The host env file: every value double-quoted, escaped so Compose reads it back."""
    rows = [HEADER]
    for key, value in values.items():
        escaped = (
            value.replace("\\", "\\\\")
            .replace('"', '\\"')
            .replace("$", "\\$")
            .replace("\n", "\\n")
        )
        rows.append(f'{key}="{escaped}"\n')
    return "".join(rows).encode()


def parse_host_env(text: str) -> dict[str, str]:
    """Read back a host env file: ours exactly, a hand-written one by python-dotenv."""
    if not text.startswith(HEADER):
        return {
            k: v or ""
            for k, v in dotenv_values(stream=io.StringIO(text), interpolate=False).items()
        }
    values = {}
    # Only "\n" ends a row: str.splitlines() would also split a value at U+2028 or U+0085.
    for row in text[len(HEADER) :].split("\n"):
        if not row:
            continue
        key, _, quoted = row.partition("=")
        values[key] = re.sub(
            r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), quoted[1:-1]
        )
    return values


# -- comparing with the host ----------------------------------------------------------


def compare(target: Target, d: Deployment, local: Local) -> Change:
    """One round trip: the host's env file and the hashes of its secret files."""
    items = [("env", line(["cat", str(d.env_file)]))]
    for name in local.files:
        items.append((f"file {name}", line(["sha256sum", str(d.secrets_dir / name)])))
    paths = [str(d.secrets_dir), str(d.env_file), *(str(d.secrets_dir / n) for n in local.files)]
    items.append(("modes", line(["stat", "-c", "%a %n", "--", *paths]) + " 2>/dev/null"))
    raw = probe.parse(target.run(probe.script(items), check=False).stdout)
    change = Change()
    for row in raw.get("modes", (1, ""))[1].splitlines():
        mode, _, path = row.partition(" ")
        want = 0o700 if path == str(d.secrets_dir) else 0o600
        if mode.isdigit() and int(mode, 8) & 0o777 != want:
            change.modes[path + ("/" if want == 0o700 else "")] = mode
    if local.values is not None:
        rc, text = raw.get("env", (1, ""))
        current = parse_host_env(text + "\n") if rc == 0 else {}
        change.added = [k for k in local.values if k not in current]
        change.removed = [k for k in current if k not in local.values]
        change.changed = [
            k for k in local.values if k in current and current[k] != local.values[k]
        ]
        change.unchanged = [k for k in local.values if current.get(k) == local.values[k]]
        if rc == 0 and not text.startswith(HEADER.strip()) and not change.any:
            change.files[d.env_file.name] = "rewritten in opsfab's quoting"
    for name, data in local.files.items():
        rc, text = raw.get(f"file {name}", (1, ""))
        digest = hashlib.sha256(data).hexdigest()
        if rc != 0:
            change.files[name] = "added"
        else:
            change.files[name] = "unchanged" if text.split()[:1] == [digest] else "changed"
    return change


def check(target: Target, inventory: Inventory, d: Deployment) -> Change:
    return compare(target, d, read_local(inventory, d))


def push(target: Target, inventory: Inventory, d: Deployment) -> Change:
    """Write what changed: files created 600 inside a 700 folder, then renamed in place."""
    local = read_local(inventory, d)
    change = compare(target, d, local)
    if not change.any:
        return change
    uploads: dict[str, bytes] = {}
    if local.values is not None and (
        change.added or change.removed or change.changed or d.env_file.name in change.files
    ):
        uploads[d.env_file.name] = render_env(local.values)
    for name, outcome in change.files.items():
        if name in local.files and outcome != "unchanged":
            uploads[name] = local.files[name]
    if uploads:
        write_files(target, d, uploads)
    if change.modes:
        paths = [p.rstrip("/") for p in change.modes]
        files = [p for p in paths if p != str(d.secrets_dir)]
        target.run(
            line(["chmod", "700", str(d.secrets_dir)])
            + (" && " + line(["chmod", "600", "--", *files]) if files else "")
        )
    return change


def write_files(target: Target, d: Deployment, uploads: dict[str, bytes]) -> None:
    folder, root = str(d.secrets_dir), str(d.secrets_dir.parent)
    suffix = ".opsfab-" + token.token_hex(4)
    staged = {name: f"{folder}/.{name}{suffix}" for name in uploads}
    prepare = "umask 077 && " + line(["mkdir", "-p", folder], ["chmod", "700", root, folder])
    for path in staged.values():
        prepare += " && : > " + line([path]) + " && " + line(["chmod", "600", path])
    target.run(prepare, fix="check the ops root exists and is writable (fab bootstrap)")
    try:
        for name, data in uploads.items():
            target.put(staged[name], data)
        target.run(" && ".join(line(["mv", "-f", staged[n], f"{folder}/{n}"]) for n in uploads))
    except OpsfabError:
        target.run(line(["rm", "-f", "--", *staged.values()]), check=False)
        raise


def check_names(app: str, env: str, inventory: Inventory) -> Deployment:
    if app == "infra":
        raise UsageError(
            "secrets of the infrastructure are not pushed by opsfab yet",
            "copy them to <ops root>/secrets/infra/ with mode 600",
        )
    return inventory.deployment(app, env)


def mask_host_secrets(target: Target, d: Deployment) -> None:
    """Read the deployment's env file and secret files on the host (one round trip),
    only so that their values are masked in whatever the target returns from now on."""
    raw = probe.parse(target.run(probe.script(probe.secret_sections(d)), check=False).stdout)
    mask_values(target, *probe.secret_texts(raw))


def mask_values(target: Target, env_text: str | None, files: list[str]) -> None:
    """From now on these values never reach any output of ``target``."""
    if env_text is not None:
        target.add_secrets(parse_host_env(env_text).values())
    target.add_secrets(files)
