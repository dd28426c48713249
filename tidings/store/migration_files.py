"""Migration files: the changes that need a person (drops, renames, type changes, data moves), as
Python files in a folder the user commits, each run once per database, in name order.

A file is what Alembic writes for a revision, without the revision chain: ``upgrade()`` calls
Alembic's ``op`` (batch mode, so one file runs on SQLite and PostgreSQL alike). Which files a
database has run is kept in ``tidings_meta`` (``migration:<file name>``), beside its epoch.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib.util
import re
from pathlib import Path
from types import ModuleType

from tidings.errors import ConfigurationError

PREFIX = "migration:"  # tidings_meta keys of the files a database has run
_NAME = re.compile(r"[^a-z0-9]+")

_TEMPLATE = '''"""{name}: written by `tidings migrate new` on {date}.

Review it, edit it (a rename is a drop and an add until you make it an alter_column with
new_column_name; move data with op.execute), and commit it. `tidings migrate apply`, or
`tidings serve` with --migrate auto, runs it once per database, in file name order, before the
additive changes left; `op` is Alembic's (https://alembic.sqlalchemy.org/en/latest/ops.html).
{notes}"""

import sqlalchemy as sa
from alembic import op

import tidings.store.tables


def upgrade() -> None:
{body}
'''


@dataclasses.dataclass(frozen=True, slots=True)
class MigrationFile:
    """One file of the migrations folder."""

    path: Path

    @property
    def name(self) -> str:
        return self.path.stem

    def load(self) -> ModuleType:
        """The file as a module with an ``upgrade()``; a file that is not one is refused, by name."""
        spec = importlib.util.spec_from_file_location(f"tidings_migrations.{self.name}", self.path)
        if spec is None or spec.loader is None:
            raise ConfigurationError(f"migration {self.path}: not a Python file")
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            raise ConfigurationError(f"migration {self.path}: cannot load it: {exc}") from exc
        if not callable(getattr(module, "upgrade", None)):
            raise ConfigurationError(f"migration {self.path}: expected a function upgrade(), found none")
        return module


def find(directory: Path | None) -> list[MigrationFile]:
    """The migration files of ``directory`` in the order they run (none if it does not exist)."""
    if directory is None or not directory.is_dir():
        return []
    paths = sorted(p for p in directory.glob("*.py") if not p.name.startswith(("_", ".")))
    return [MigrationFile(p) for p in paths]


def write(directory: Path, name: str, body: str, notes: list[str], *, now: dt.datetime | None = None) -> Path:
    """A new file ``<UTC timestamp>_<name>.py`` in ``directory`` (made if missing) running ``body``."""
    slug = _NAME.sub("_", name.lower()).strip("_")
    if not slug:
        raise ConfigurationError(f"tidings migrate new {name!r}: expected a name of letters or digits")
    now = now or dt.datetime.now(dt.UTC)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{now:%Y%m%d%H%M%S}_{slug}.py"
    if path.exists():
        raise ConfigurationError(f"tidings migrate new: {path} exists already")
    text = "\n".join(f"- {line}" for line in notes)
    notes_text = f"\nWhat differed when it was written:\n{text}\n" if notes else ""
    path.write_text(_TEMPLATE.format(name=slug, date=f"{now:%Y-%m-%d %H:%M} UTC", notes=notes_text, body=body))
    return path


__all__ = ["PREFIX", "MigrationFile", "find", "write"]
