"""The ``tidings`` command line: serve, migrate, export-schema, token."""

from __future__ import annotations

import argparse
import dataclasses
import gc
import sys
from collections.abc import Sequence

from tidings.config import Settings, env_name
from tidings.declaration import load_app
from tidings.errors import ConfigurationError
from tidings.model.loading import load_collections


def _add_settings(parser: argparse.ArgumentParser) -> None:
    for f in dataclasses.fields(Settings):
        flag = "--" + f.name.replace("_", "-")
        bound = f.metadata["bound"]
        limits = f"; {bound.describe()}" if bound is not None else ""
        help_text = f"{f.metadata['help']} (env {env_name(f.name)}; default {f.default!r}{limits})"
        kind = str(f.type)
        if kind.startswith("bool"):
            parser.add_argument(flag, dest=f.name, default=None, action=argparse.BooleanOptionalAction, help=help_text)
        elif kind.startswith("int"):
            parser.add_argument(flag, dest=f.name, type=int, default=None, help=help_text)
        elif kind.startswith("float"):
            parser.add_argument(flag, dest=f.name, type=float, default=None, help=help_text)
        else:
            parser.add_argument(flag, dest=f.name, default=None, help=help_text)


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(Settings)}
    return Settings.from_env(**overrides)


def serve(settings: Settings) -> None:
    import uvicorn

    from tidings.launch import build_app
    from tidings.logs import configure_logging
    from tidings.redaction import install_redaction
    from tidings.server import run
    from tidings.serving import uvicorn_options
    from tidings.startup import check_dependencies, check_settings, describe

    # Settings first, then what they name: a failure is one line (main), before any banner.
    check_settings(settings)
    if settings.workers != 1:
        from tidings.workers import check_workers

        check_workers(settings)
    configure_logging(settings)
    app, collections = build_app(settings)
    check_dependencies(settings, collections)
    # The schema, types and tables live as long as the process: move them out of the
    # cyclic collector's view, so its passes under load walk only what requests made.
    gc.collect()
    gc.freeze()
    print("\n".join(describe(app)), flush=True)
    if settings.workers > 1:  # a supervisor here; each worker builds and serves its own app
        from tidings.workers import supervise

        if status := supervise(settings):
            raise SystemExit(status)
        return
    config = uvicorn.Config(app, **uvicorn_options(settings))
    install_redaction()  # after uvicorn.Config: building it configures uvicorn's loggers
    if not run(app, config):
        raise SystemExit(3)  # uvicorn's exit status for a failed startup


def main(argv: Sequence[str] | None = None) -> int:
    from tidings.startup import Unavailable, version

    parser = argparse.ArgumentParser(prog="tidings", description="Realtime GraphQL over declared collections.")
    parser.add_argument("--version", action="version", version=f"tidings {version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve_parser = sub.add_parser("serve", help="run the server")
    _add_settings(serve_parser)
    export = sub.add_parser("export-schema", help="print the GraphQL SDL")
    export.add_argument("--collections", default=None, help="module:attr or file.toml (default: the demo)")
    export.add_argument("--app", default=None, help="module:attr of a tidings.App (or a create_app app)")
    migrate = sub.add_parser("migrate", help="compare the declared collections with the database, and change it")
    actions = migrate.add_subparsers(dest="action", required=True)
    for action, what in (
        ("plan", "print what apply would do (changes nothing)"),
        ("apply", "run pending migration files, then apply the additive changes"),
        ("new", "write a migration file with the current differences, for a person to finish"),
    ):
        parser_ = actions.add_parser(action, help=what)
        if action == "new":
            parser_.add_argument("name", help="what the migration does, e.g. drop_notes (the file's name)")
        for flag in ("db", "collections", "app", "migrations"):
            field = next(f for f in dataclasses.fields(Settings) if f.name == flag)
            parser_.add_argument(f"--{flag}", default=None, help=f"{field.metadata['help']} (env {env_name(flag)})")
    token = sub.add_parser("token", help="mint a development JWT (needs TIDINGS_JWT_SECRET or --jwt-secret)")
    token.add_argument("--sub", required=True)
    token.add_argument("--account", default=None)
    token.add_argument("--role", default=None)
    token.add_argument("--ttl", type=float, default=3600.0, help="seconds until expiry")
    token.add_argument("--jwt-secret", default=None)
    args = parser.parse_args(argv)
    try:
        if args.command == "serve":
            serve(_settings(args))
        elif args.command == "migrate":
            from tidings.migrate import migrate as run_migrate

            settings = Settings.from_env(
                db=args.db, collections=args.collections, app=args.app, migrations=args.migrations
            )
            print("\n".join(run_migrate(settings, args.action, getattr(args, "name", None))))
        elif args.command == "export-schema":
            from tidings.app import export_schema

            if args.app is not None:
                if args.collections is not None:
                    raise ConfigurationError("--app and --collections: give one (an App declares its collections)")
                print(export_schema(app=load_app(args.app)))
            else:
                print(export_schema(load_collections(args.collections)))
        else:
            from tidings.auth.tokens import Authenticator

            settings = Settings.from_env(jwt_secret=args.jwt_secret)
            auth = Authenticator(secret=settings.jwt_secret, issuer=settings.jwt_issuer, audience=settings.jwt_audience)
            claims = {settings.claim_sub: args.sub}
            if args.account:
                claims[settings.claim_account] = args.account
            if args.role:
                claims[settings.claim_role] = args.role
            print(auth.mint(claims, ttl=args.ttl))
    except ConfigurationError as exc:  # a setting is wrong: exit 2, like a bad flag
        print(f"tidings: {exc.message}", file=sys.stderr)
        return 2
    except Unavailable as exc:  # what a setting names is down or taken: exit 1
        print(f"tidings: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C before uvicorn handles signals (imports, startup checks)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
