"""The public surface, and the lint and type gates the project holds itself to."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import tidings

ROOT = Path(__file__).resolve().parent.parent


def test_public_api_is_what_the_readme_documents() -> None:
    # Changing this list is an API change: update README.md and CHANGELOG.md with it.
    assert sorted(tidings.__all__) == sorted(
        [
            "JSON",
            "App",
            "Conflict",
            "Context",
            "CreateInput",
            "Info",
            "NotFound",
            "Staged",
            "Transaction",
            "UpdateInput",
            "Where",
            "record",
            "records",
            "transaction",
            "BadUserInput",
            "ChangeEvent",
            "Channel",
            "Collection",
            "ConnectionInfo",
            "ErrorCode",
            "Field",
            "Forbidden",
            "Hooks",
            "Many",
            "OnDelete",
            "Operation",
            "OperationInfo",
            "Principal",
            "PublishInfo",
            "Ref",
            "Rules",
            "Settings",
            "Tidings",
            "TidingsError",
            "WriteInfo",
            "collection",
            "create_app",
            "export_schema",
            "load_toml",
            "many",
            "ref",
        ]
    )
    for name in tidings.__all__:
        assert getattr(tidings, name) is not None


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_ruff_is_clean() -> None:
    result = _run("ruff", "check", "tidings", "tests", "bench")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_is_clean() -> None:
    result = _run("mypy", "tidings")
    assert result.returncode == 0, result.stdout + result.stderr
