"""The playground page and its static files (built by playground/build, shipped in the package).

Neither holds data, so both are served without a token even when auth is on; the
page's requests to /graphql carry whatever the user puts in the Headers editor.
"""

from __future__ import annotations

import gzip
import hashlib
import html
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from tidings.errors import ConfigurationError
from tidings.model.collection import Collection
from tidings.playground.chat import ChatModel, chat_html, chat_model
from tidings.playground.examples import example_tabs
from tidings.schema.validation import Introspection
from tidings.transports.common import header
from tidings.types import Scope

STATIC = Path(__file__).with_name("static")
CHAT_JS = Path(__file__).with_name("chat.js")  # not in static/: playground/build empties that
ASSETS_PATH = "/playground"
_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
# Asset URLs carry a hash of their content, so they can be cached for good.
_IMMUTABLE = "public, max-age=31536000, immutable"
# Everything from this origin (the WebSocket included); inline styles for CodeMirror and
# the fonts GraphiQL's CSS inlines as data: URLs. Nothing else loads.
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "font-src 'self' data:; connect-src 'self'; frame-ancestors 'self'; base-uri 'none'; form-action 'none'"
)


class _Asset:
    __slots__ = ("_gzipped", "body", "content_type", "etag")

    def __init__(self, path: Path) -> None:
        self.body = path.read_bytes()
        self.content_type = _TYPES[path.suffix]
        self.etag = hashlib.sha256(self.body).hexdigest()[:16]
        self._gzipped: bytes | None = None

    @property
    def gzipped(self) -> bytes:
        # Compressed on first request, once: 1.5 MB of JS is ~0.45 MB on the wire.
        if self._gzipped is None:
            self._gzipped = gzip.compress(self.body, compresslevel=6, mtime=0)
        return self._gzipped


class Playground:
    """GraphiQL for ``collections``: ``page`` answers a browser's GET /graphql, ``asset`` the files."""

    def __init__(
        self,
        collections: Sequence[Collection],
        *,
        auth_enabled: bool,
        introspection: Introspection = Introspection.ON,
    ) -> None:
        try:
            self.assets = {name: _Asset(STATIC / name) for name in ("playground.js", "playground.css")}
        except OSError as exc:
            raise ConfigurationError(f"The playground's assets are missing ({exc}); run playground/build") from exc
        # The chat demo (/playground/chat) when the demo's chat or the rooms example is served.
        self.chat = chat_model(collections)
        if self.chat is not None:
            self.assets["chat.js"] = _Asset(CHAT_JS)
        self.tabs = example_tabs(collections)
        self.auth_enabled = auth_enabled
        self.introspection = introspection
        self.storage_key = hashlib.sha256(json.dumps(self.tabs).encode()).hexdigest()[:8]

    @staticmethod
    def wants_page(scope: Scope) -> bool:
        """A browser navigating to /graphql (as Strawberry decides, plus text/html with ``?query=``)."""
        if scope["method"] not in ("GET", "HEAD"):
            return False
        accept = header(scope, b"accept") or ""
        if "text/html" in accept:
            return True
        return "*/*" in accept and b"query=" not in scope.get("query_string", b"")

    def page(self, scope: Scope) -> Response:
        root = scope.get("root_path", "")
        config = {
            "endpoint": f"{root}/graphql",
            "auth": self.auth_enabled,
            "introspection": self.introspection.value,  # on, off or authenticated
            "tabs": self.tabs,
            "storageKey": self.storage_key,
        }
        # JSON inside <script> must not contain "</": escape "<" as \u003c.
        data = json.dumps(config).replace("<", "\\u003c")
        js, css = (f"{root}{ASSETS_PATH}/{n}?v={self.assets[n].etag}" for n in ("playground.js", "playground.css"))
        body = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>tidings playground</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="{html.escape(css)}">
<script id="tidings-config" type="application/json">{data}</script>
<script defer src="{html.escape(js)}"></script>
</head>
<body>
{self._chat_link(root)}\
<div id="tidings-playground"><noscript>The tidings playground (GraphiQL) needs JavaScript.</noscript></div>
</body>
</html>
"""
        return Response(
            body,
            media_type="text/html; charset=utf-8",
            headers={"Cache-Control": "no-cache", "Content-Security-Policy": _CSP, "X-Content-Type-Options": "nosniff"},
        )

    def _chat_link(self, root: str) -> str:
        if self.chat is None:
            return ""
        # Beside the bundle's bar (its right end kept clear for it), so the bundle needs no rebuild.
        return (
            "<style>.tidings-bar{padding-right:130px!important}#tidings-chat-link{position:fixed;top:7px;"
            "right:12px;z-index:10;font:13px Roboto,system-ui,sans-serif;color:hsl(243,100%,65%)}</style>\n"
            f'<a id="tidings-chat-link" href="{html.escape(root)}{ASSETS_PATH}/chat">Chat demo &rarr;</a>\n'
        )

    def chat_page(self, scope: Mapping[str, Any], model: ChatModel) -> Response:
        """The chat demo: a static page and chat.js, talking graphql-transport-ws to /graphql."""
        root = scope.get("root_path", "")
        config = {"endpoint": f"{root}/graphql", "auth": self.auth_enabled, "model": model.value}
        js = f"{root}{ASSETS_PATH}/chat.js?v={self.assets['chat.js'].etag}"
        body = chat_html(json.dumps(config).replace("<", "\\u003c"), html.escape(js), html.escape(f"{root}/graphql"))
        return Response(
            body,
            media_type="text/html; charset=utf-8",
            headers={"Cache-Control": "no-cache", "Content-Security-Policy": _CSP, "X-Content-Type-Options": "nosniff"},
        )

    async def asset(self, request: Request) -> Response:
        if request.path_params["name"] == "chat" and self.chat is not None:
            return self.chat_page(request.scope, self.chat)
        asset = self.assets.get(request.path_params["name"])
        if asset is None:
            return PlainTextResponse("Not found", status_code=404)
        headers = {
            "Cache-Control": _IMMUTABLE,
            "ETag": f'"{asset.etag}"',
            "Vary": "Accept-Encoding",
            "X-Content-Type-Options": "nosniff",
        }
        if request.headers.get("if-none-match") == headers["ETag"]:
            return Response(status_code=304, headers=headers)
        body = asset.body
        if "gzip" in request.headers.get("accept-encoding", ""):
            body = asset.gzipped
            headers["Content-Encoding"] = "gzip"
        return Response(body, media_type=asset.content_type, headers=headers)
