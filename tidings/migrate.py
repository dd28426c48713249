"""``tidings migrate plan|apply|new <name>``: the schema changes the declared collections ask of
the database, shown, applied, or written to a migration file for a person to finish.

The work is tidings.store.migrations' (Alembic's comparison and operations); this module only
opens the store the settings name, prints, and maps what goes wrong to ``tidings: <why>``.
"""

from __future__ import annotations

import asyncio
import textwrap

from tidings.config import Settings
from tidings.launch import declared
from tidings.model.collection import Collection
from tidings.model.loading import load_collections
from tidings.startup import check_settings, mask_url, open_store
from tidings.store import migration_files
from tidings.store.migrations import Mode


def migrate(settings: Settings, action: str, name: str | None = None) -> list[str]:
    """Run ``action`` (plan, apply or new) against the settings' database; the lines to print."""
    check_settings(settings)
    collections = declared(settings)[1] if settings.app else load_collections(settings.collections)
    return asyncio.run(_migrate(settings, collections, action, name))


async def _migrate(settings: Settings, collections: list[Collection], action: str, name: str | None) -> list[str]:
    store = open_store(settings, collections)
    what = f"{mask_url(settings.db)} against {settings.app or settings.collections or 'the demo collections'}"
    try:
        if action == "plan":
            plan = await store.migrator.plan()
            if plan.empty:
                return [f"Nothing to do: {what} match."]
            return [f"Changes for {what}:", *plan.lines(), *_legend(plan.lines())]
        if action == "apply":
            done = await store.migrator.migrate(Mode.AUTO)
            return (
                [f"Applied to {mask_url(settings.db)}:", *(f"+ {line}" for line in done)]
                if done
                else [f"Nothing to do: {what} match."]
            )
        assert name is not None  # the parser requires it for `new`
        plan = await store.migrator.plan()
        body = await store.migrator.render()
        notes = [c.text for c in plan.changes if not c.additive]
        path = migration_files.write(settings.migrations_directory(), name, _indent(body), notes)
        return [
            f"Wrote {path}: review and edit it, then commit it.",
            "`tidings migrate apply` (or `tidings serve` with --migrate auto) runs it once per database.",
        ]
    finally:
        await store.close()


def _legend(lines: list[str]) -> list[str]:
    if any(line.startswith("!") for line in lines):
        return [
            "+ additive: `tidings migrate apply` (or --migrate auto) applies it",
            "! destructive or ambiguous: write it with `tidings migrate new <name>`, then apply",
        ]
    return ["+ additive: `tidings migrate apply` (or --migrate auto) applies it"]


def _indent(code: str) -> str:
    """Alembic's rendered body, indented once as the body of ``upgrade()``."""
    return textwrap.indent(textwrap.dedent("    " + code.strip()), "    ")


__all__ = ["migrate"]
