"""What ``tidings serve`` checks and says before it listens: settings, database, broker, port; the banner.

A failure is one line on stderr, ``tidings: <setting>: <why>``, and an exit status:
2 when a setting is wrong (``ConfigurationError``: fix the flag, variable or file),
1 when what a setting names is unavailable now (``Unavailable``: a database or Redis
server refusing, the port taken): the same command may work once it is back.
"""

from __future__ import annotations

import asyncio
import errno
import importlib.metadata
import importlib.util
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from tidings.config import Settings, check_bounds
from tidings.errors import ConfigurationError
from tidings.model.collection import Collection
from tidings.pubsub import broker_from_url, resolve_broker_url
from tidings.redaction import redact
from tidings.store import Store
from tidings.store.migrations import LOCK_WAIT, Mode, SchemaRefused
from tidings.store.store import normalize_url

if TYPE_CHECKING:
    from starlette.applications import Starlette

__all__ = [
    "LOG_LEVELS",
    "Unavailable",
    "check_dependencies",
    "check_settings",
    "describe",
    "mask_url",
    "open_store",
    "version",
]

# uvicorn's levels; logging.basicConfig and uvicorn.Config raise a bare ValueError on others.
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
# asyncpg waits 60 s for a silent host by default; Redis has its own 2 s (RedisBroker).
OPEN_TIMEOUT = 10.0
_DATABASES = ("sqlite", "postgresql")
_MASK = "***"


class Unavailable(Exception):
    """A database, broker or address a setting names cannot be had right now (exit status 1)."""


def version() -> str:
    """The installed distribution's version (what ``pip`` installed, not a constant in the source)."""
    try:
        return importlib.metadata.version("tidings")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "(not installed)"


def mask_url(url: str) -> str:
    """``url`` with its password, and any credential in its query, replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is not None:
        userinfo, _, hostport = parts.netloc.rpartition("@")
        user = userinfo.partition(":")[0]
        url = urlunsplit(parts._replace(netloc=f"{user}:{_MASK}@{hostport}"))  # a netloc: '//' stays
    return redact(url).replace("[REDACTED]", _MASK) if parts.query else url


def _scrub(text: str, url: str) -> str:
    """A foreign error's first line, without the URL's password should the library have quoted it."""
    line = text.strip().splitlines()[0] if text.strip() else text
    password = urlsplit(url).password
    if password:
        line = line.replace(f":{password}@", f":{_MASK}@")
        if len(password) >= 6:  # a short one would mask parts of words; it is not quoted bare anyway
            line = line.replace(password, _MASK)
    return line


# -- settings ------------------------------------------------------------------


def check_settings(settings: Settings) -> None:
    """Refuse what cannot work before anything is opened: numbers out of range, log level, database and broker URLs."""
    check_bounds(settings)
    settings.migrate_mode()  # one of auto, check, off
    if settings.log_level.lower() not in LOG_LEVELS:
        raise ConfigurationError(
            f"--log-level {settings.log_level!r}: unknown level; expected one of {', '.join(LOG_LEVELS)}"
        )
    _check_database_url(settings.db)
    _check_tracing(settings.tracing)
    resolve_broker_url(settings.broker, settings.db)  # "postgres" without a PostgreSQL --db: its own line
    try:
        broker_from_url(settings.broker, db=settings.db)
    except ConfigurationError:
        scheme = urlsplit(settings.broker).scheme or settings.broker
        raise ConfigurationError(
            f"--broker {mask_url(settings.broker) or repr(settings.broker)}: unsupported URL scheme {scheme!r}; "
            "expected auto, memory://, redis://host:6379/0, postgres or postgresql://user:pass@host/db"
        ) from None


def _check_tracing(value: str) -> None:
    if value not in ("on", "off"):
        raise ConfigurationError(f"--tracing {value!r}: expected on or off")
    if value == "on" and importlib.util.find_spec("opentelemetry") is None:
        raise ConfigurationError("--tracing on: opentelemetry-api is not installed (pip install 'tidings[tracing]')")


def _check_database_url(db: str) -> None:
    what = f"--db {mask_url(db) or repr(db)}"
    try:
        url = sa.make_url(normalize_url(db))
    except sa.exc.ArgumentError:
        raise ConfigurationError(
            f"{what}: not a database URL; expected sqlite:///file.db or postgresql://user:pass@host/db"
        ) from None
    if url.get_backend_name() not in _DATABASES:
        raise ConfigurationError(
            f"{what}: unsupported URL scheme {url.drivername!r}; "
            "expected sqlite:///file.db or postgresql://user:pass@host/db"
        )
    try:
        create_async_engine(url)  # loads the driver, as the store will; connects to nothing
    except (ImportError, sa.exc.ArgumentError, sa.exc.InvalidRequestError) as exc:
        raise ConfigurationError(f"{what}: cannot use driver {url.drivername!r}: {_scrub(str(exc), db)}") from None
    path = _sqlite_path(db)
    if path is not None:
        if not path.parent.is_dir():
            raise ConfigurationError(f"{what}: directory {path.parent} does not exist")
        if path.is_dir():
            raise ConfigurationError(f"{what}: {path} is a directory, not a database file")


def _sqlite_path(db: str) -> Path | None:
    """The absolute path of an SQLite database file; None for PostgreSQL or ``:memory:``."""
    url = sa.make_url(normalize_url(db))
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return Path(url.database).absolute()


# -- dependencies ----------------------------------------------------------------


def check_dependencies(settings: Settings, collections: Sequence[Collection]) -> None:
    """Open the database and the broker and bind the address once, on a loop of their own, then let go.

    uvicorn reports a failing lifespan startup with a traceback, after its first log
    lines, and a taken port after the application has started: both are checked here
    first. What fails between this check and uvicorn's own start (a few milliseconds)
    still takes uvicorn's path.
    """
    asyncio.run(_check_dependencies(settings, list(collections)))


async def _check_dependencies(settings: Settings, collections: list[Collection]) -> None:
    await _open_database(settings, collections)
    await _open_broker(resolve_broker_url(settings.broker, settings.db))
    await _bind(settings.host, settings.port)


def open_store(settings: Settings, collections: list[Collection]) -> Store:
    """The store ``settings`` name, migrating as ``--migrate`` says (``tidings migrate``, the checks here)."""
    return Store(
        settings.db, collections, migrate=Mode(settings.migrate_mode()), migrations=settings.migrations_directory()
    )


async def _open_database(settings: Settings, collections: list[Collection]) -> None:
    db = settings.db
    what = f"--db {mask_url(db)}"
    path = _sqlite_path(db)
    store = open_store(settings, collections)
    try:
        # Migrates as the server's start does (once, here, before any worker starts; within
        # the time another process's migration may hold the lock): a database that refuses
        # that (read-only, not a database, no privilege) is refused here.
        await asyncio.wait_for(_ping(store), OPEN_TIMEOUT)
        await asyncio.wait_for(store.start(), OPEN_TIMEOUT + LOCK_WAIT)
    except TimeoutError:
        raise Unavailable(f"{what}: no answer within {OPEN_TIMEOUT:g} s") from None
    except SchemaRefused:
        raise
    except Exception as exc:
        root = _root(exc)
        reason = _scrub(str(root) or type(root).__name__, db)
        if path is not None:  # a local file: whatever is wrong, the setting must change
            raise ConfigurationError(f"{what}: cannot open {path}: {reason}") from None
        if isinstance(root, OSError):  # refused, unreachable, unknown host: the server, not the URL
            raise Unavailable(f"{what}: cannot connect: {_network_reason(root)}") from None
        raise ConfigurationError(f"{what}: {reason}") from None  # refused login, no such database
    finally:
        await store.close()


async def _ping(store: Store) -> None:
    async with store.engine.connect() as conn:
        await conn.execute(sa.text("SELECT 1"))


async def _open_broker(url: str) -> None:
    what = f"--broker {mask_url(url)}"
    broker = broker_from_url(url)
    try:
        await asyncio.wait_for(broker.start(), OPEN_TIMEOUT)
    except TimeoutError:
        raise Unavailable(f"{what}: no answer within {OPEN_TIMEOUT:g} s") from None
    except Exception as exc:
        root = _root(exc)
        if isinstance(root, OSError):
            raise Unavailable(f"{what}: cannot connect: {_network_reason(root)}") from None
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeout

        reason = _scrub(str(root) or type(root).__name__, url)
        if isinstance(root, RedisTimeout) or (
            type(root) is RedisConnectionError  # its subclasses (AuthenticationError...) are configuration
        ):
            raise Unavailable(f"{what}: cannot connect: {reason}") from None
        raise ConfigurationError(f"{what}: {reason}") from None  # bad URL, refused password
    finally:
        await broker.close()


async def _bind(host: str, port: int) -> None:
    """Listen on the address as uvicorn will (asyncio's create_server, SO_REUSEADDR), then stop."""
    try:
        server = await asyncio.get_running_loop().create_server(asyncio.Protocol, host, port)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise Unavailable(f"--port {port}: address {host}:{port} is already in use") from None
        reason = exc.strerror or str(exc)
        raise ConfigurationError(f"--host {host} --port {port}: cannot listen there: {reason}") from None
    server.close()
    await server.wait_closed()


def _root(exc: BaseException) -> BaseException:
    """The innermost cause: SQLAlchemy and redis wrap the driver's or the socket's error."""
    seen = {id(exc)}
    while (inner := exc.__cause__ or exc.__context__) is not None and id(inner) not in seen:
        seen.add(id(inner))
        exc = inner
    return exc


def _network_reason(exc: OSError) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host name ({exc.strerror})"
    return exc.strerror or str(exc) or type(exc).__name__


# -- the banner --------------------------------------------------------------------


def describe(app: Starlette) -> list[str]:
    """The lines ``tidings serve`` prints before it listens: what it serves, from what, to whom."""
    tidings = app.state.tidings
    settings: Settings = tidings.settings
    path = _sqlite_path(settings.db)
    if path is not None:
        database = f"{mask_url(settings.db)} (file {path})"
    elif settings.db.startswith("sqlite"):
        database = f"{mask_url(settings.db)} (in memory: gone when the process exits)"
    else:
        database = mask_url(settings.db)
    broker = mask_url(resolve_broker_url(settings.broker, settings.db))
    if broker in ("memory", "memory://"):
        broker += " (this process only)"
    elif broker.startswith(("postgresql://", "postgres://", "postgresql+asyncpg://")):
        broker += " (LISTEN/NOTIFY)"
    if settings.workers > 1:
        broker += f"; {settings.workers} worker processes share it"
    names = ", ".join(c.name for c in tidings.collections)
    source = settings.app or settings.collections or "the demo"
    url = f"http://{settings.host}:{settings.port}/graphql"
    rows = [
        ("database", database),
        ("broker", broker),
        ("collections", f"{names} ({source})"),
        ("auth", _auth(settings, tidings.authenticator.algorithm)),
        ("origins", _origins(app)),
    ]
    width = max(len(label) for label, _ in rows) + 2
    return [
        f"tidings {version()}",
        *(f"  {label + ':':<{width}}{value}" for label, value in rows),
        f"  GraphQL{' and the playground' if tidings.playground is not None else ''} at {url}",
    ]


def _auth(settings: Settings, algorithm: str) -> str:
    if settings.jwt_secret:
        text = f"{algorithm} tokens required (--jwt-secret, {len(settings.jwt_secret.encode())} bytes)"
    elif settings.jwt_public_key:
        text = f"{algorithm} tokens required (--jwt-public-key {Path(settings.jwt_public_key).absolute()})"
    else:
        return "none: demo mode, the API is open to anyone (--jwt-secret or --jwt-public-key to require tokens)"
    for name, value in (("issuer", settings.jwt_issuer), ("audience", settings.jwt_audience)):
        if value:
            text += f", {name} {value!r}"
    return text


def _origins(app: Starlette) -> str:
    """Which browser pages may call: the policies app.py enforces, in their own words (``describe``)."""
    tidings = app.state.tidings
    cors, websocket = tidings.cors_origins.describe(), tidings.transport.origins.describe()
    if cors == websocket:
        return f"{cors} (HTTP, SSE and WebSocket)"
    return f"{cors} (HTTP and SSE); {websocket} (WebSocket)"
