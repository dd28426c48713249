"""The chat demo's page (/playground/chat): which of its two models the served collections hold,
and the static HTML that chat.js drives.

``demo``: the demo collections' ``Room(name)`` and ``ChatMessage(room, author, body)``, rooms
by name and open channels. ``rooms``: examples/rooms/collections.toml's ``Room(name, owner)``,
``Membership(userId, room -> Room)`` and ``Message(body, author, room -> Room)``, where relation
rules decide who reads, writes and joins a room's channel.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

from tidings.filters.ast import FieldKind
from tidings.model.collection import Collection

__all__ = ["ChatModel", "chat_model"]


class ChatModel(str, enum.Enum):
    """The collections the chat page talks to (its config's ``model``)."""

    DEMO = "demo"
    ROOMS = "rooms"


# Collection -> the String fields the page reads and writes, and the reference to Room it needs.
_ROOMS_SHAPE: dict[str, tuple[tuple[str, ...], bool]] = {
    "Room": (("name", "owner"), False),
    "Membership": (("userId",), True),
    "Message": (("body", "author"), True),
}


def _fits(collection: Collection, strings: tuple[str, ...], to_room: bool) -> bool:
    kinds = {f.graphql_name: f.kind for f in collection.fields}
    if any(kinds.get(name) is not FieldKind.STRING for name in strings):
        return False
    return not to_room or any(r.name == "room" and r.target == "Room" for r in collection.references)


def chat_model(collections: Sequence[Collection]) -> ChatModel | None:
    """The chat model ``collections`` hold (rooms with members first), or None: no chat page."""
    by_name = {c.name: c for c in collections}
    if all(name in by_name and _fits(by_name[name], *shape) for name, shape in _ROOMS_SHAPE.items()):
        return ChatModel.ROOMS
    if {"Room", "ChatMessage"} <= by_name.keys():
        return ChatModel.DEMO
    return None


def chat_html(config: str, js: str, playground: str) -> str:
    """The page, ``config`` (JSON, "<" escaped) and the URLs already HTML-escaped."""
    return _CHAT_PAGE.format(config=config, js=js, playground=playground)


_CHAT_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>tidings chat demo</title>
<link rel="icon" href="data:,">
<style>
body {{ margin: 0; font: 14px Roboto, system-ui, sans-serif; color: hsl(219, 28%, 22%); }}
header {{ display: flex; gap: 16px; align-items: baseline; padding: 8px 14px; border-bottom: 1px solid #ddd; }}
header a {{ color: hsl(243, 100%, 65%); }}
#chat-status.error {{ color: #b00020; }}
form {{ margin: 0; }}
#chat-join {{ padding: 24px 14px; display: grid; gap: 10px; max-width: 420px; }}
#chat-main {{ display: grid; grid-template-columns: 180px 1fr 200px; height: calc(100vh - 40px); }}
[hidden] {{ display: none !important; }}
aside {{ padding: 10px; border-right: 1px solid #eee; overflow: auto; }}
aside:last-child {{ border-right: 0; border-left: 1px solid #eee; }}
ul {{ list-style: none; margin: 0; padding: 0; }}
#chat-rooms button {{ width: 100%; text-align: left; border: 0; background: none; padding: 4px 6px; cursor: pointer; }}
#chat-rooms button[aria-pressed=true] {{ background: hsl(243, 100%, 94%); border-radius: 4px; }}
section {{ display: flex; flex-direction: column; min-height: 0; }}
section h3 {{ margin: 10px; }}
#chat-room-link {{ font-size: 12px; font-weight: normal; margin-left: 8px; }}
#chat-messages {{ flex: 1; overflow: auto; padding: 10px; }}
.chat-message {{ padding: 2px 0; white-space: pre-wrap; }}
#chat-typing {{ min-height: 18px; padding: 0 10px; font-style: italic; opacity: 0.7; }}
#chat-send {{ display: flex; gap: 8px; padding: 10px; border-top: 1px solid #eee; }}
#chat-input {{ flex: 1; }}
#chat-roster {{ margin-top: 16px; }}
.chat-remove {{ border: 0; background: none; color: #b00020; cursor: pointer; padding: 0 4px; }}
input, button {{ font: inherit; padding: 4px 8px; }}
</style>
<script id="tidings-chat-config" type="application/json">{config}</script>
<script defer src="{js}"></script>
</head>
<body>
<header><strong>tidings chat</strong><a href="{playground}">&larr; playground</a><span id="chat-status"></span></header>
<form id="chat-join">
<label>Your name <input id="chat-name" maxlength="40" required></label>
<label id="chat-token-row">Token (auth is on: <code>tidings token --sub alice</code>)
<input id="chat-token" autocomplete="off"></label>
<button id="chat-join-button" type="submit">Join the chat</button>
<noscript>The chat demo needs JavaScript.</noscript>
</form>
<div id="chat-main" hidden>
<aside><b>Rooms</b><ul id="chat-rooms"></ul>
<form id="chat-room-form"><input id="chat-new-room" placeholder="new room" size="12"></form></aside>
<section><h3 id="chat-room-title">#<span id="chat-room-name"></span><a id="chat-room-link" hidden>link</a></h3>
<ul id="chat-messages"></ul><div id="chat-typing"></div>
<form id="chat-send"><input id="chat-input" placeholder="Say something" autocomplete="off" maxlength="2000">
<button type="submit">Send</button></form></section>
<aside><b>Here (<span id="chat-count">0</span>)</b><ul id="chat-members"></ul>
<div id="chat-roster" hidden><b>Members</b><ul id="chat-roster-list"></ul>
<form id="chat-add-form" hidden><input id="chat-add-member" placeholder="add by userId" size="14"></form></div>
</aside>
</div>
</body>
</html>
"""
