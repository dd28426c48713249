"""The operations the playground opens on, written from the server's collections."""

from __future__ import annotations

from collections.abc import Sequence

from tidings.filters.ast import FieldKind
from tidings.model.collection import Collection, Field

# A literal each kind accepts, for the required fields of the example mutation.
_SAMPLES: dict[FieldKind, str] = {
    FieldKind.ID: '"1"',
    FieldKind.STRING: '"hello"',
    FieldKind.INT: "1",
    FieldKind.FLOAT: "1.5",
    FieldKind.BOOLEAN: "true",
    FieldKind.DATETIME: '"2026-01-01T00:00:00Z"',
    FieldKind.JSON: '{hello: "world"}',
}
_SHOWN_FIELDS = 6


def _sample(field: Field) -> str:
    if field.kind is FieldKind.ENUM and field.enum is not None:
        return next(iter(field.enum)).name
    return _SAMPLES[field.kind]


def _selection(collection: Collection, indent: str) -> str:
    names = ["id", *(f.graphql_name for f in collection.fields[:_SHOWN_FIELDS])]
    return "\n".join(indent + name for name in names)


def _input(collection: Collection) -> str:
    fields = [f for f in collection.fields if f.required]
    if not fields:
        # Nothing is required: set the first field a literal is easy to write for.
        fields = [f for f in collection.fields if f.kind in (FieldKind.STRING, FieldKind.INT, FieldKind.BOOLEAN)][:1]
    return ", ".join(f"{f.graphql_name}: {_sample(f)}" for f in fields)


def example_tabs(collections: Sequence[Collection]) -> list[dict[str, str]]:
    """GraphiQL tabs: the first collection's events, a mutation that makes one, a query."""
    if not collections:
        return []
    c = collections[0]
    events = c.events_field[0].upper() + c.events_field[1:]
    subscription = f"""\
# Changes to {c.name} arrive here, over WebSocket
# (or over SSE: switch at the top of the page).
# 1. Run this subscription (the play button, Ctrl-Enter).
# 2. Open this page in another browser tab and run its
#    Create{c.name} tab: the event appears here.
#    (Changing tabs here stops the subscription.)
# where: {{...}} filters; after: resumes where you left.
subscription {events} {{
  {c.events_field} {{
    operation
    seq
    changedFields
    record {{
{_selection(c, "      ")}
    }}
  }}
}}
"""
    mutation = f"""\
# Run this while {events} runs in another browser tab.
mutation Create{c.name} {{
  create{c.name}(input: {{{_input(c)}}}) {{
{_selection(c, "    ")}
  }}
}}
"""
    plural = c.plural[0].upper() + c.plural[1:]
    query = f"""\
# The newest ten first (lists are in creation order unless
# orderBy says otherwise). The response's extensions say which
# event-log position it reflects: subscribe with after: it
# to miss nothing.
query {plural} {{
  {c.plural}(orderBy: [{{createdAt: DESC}}], limit: 10) {{
{_selection(c, "    ")}
  }}
}}
"""
    tabs = [{"query": subscription}, {"query": mutation}, {"query": query}]
    if {c.name for c in collections} >= {"Room", "ChatMessage"}:
        tabs.append({"query": CHAT_TAB})
    return tabs


# The chat demo's operations (also at /playground/chat, which runs them all at once).
CHAT_TAB = """\
# The chat demo: room "lobby" is channel room:lobby. Choose an
# operation with the play button's menu. Run one subscription
# here (changing tabs stops it) and the mutations in another
# browser tab; /playground/chat does all of it in one page.
subscription LobbyPresence {
  # Joins: SYNC (who is here) first, then JOIN, UPDATE, LEAVE.
  presence(channel: "room:lobby", meta: {name: "alice", typing: false}) {
    kind
    count
    members { sub connections meta }
    member { sub connection connections meta }
  }
}

subscription LobbyEvents {
  # Typing events, and each message written in the lobby
  # (chatMessage.created: ChatMessage fans out to its room).
  channelEvents(channels: ["room:lobby"]) {
    channel
    type
    data
    sender { sub }
    seq
  }
}

mutation Typing {
  # echo: false skips the publishing connection (over a WebSocket).
  publish(channel: "room:lobby", type: "typing", data: {name: "alice", typing: true}, echo: false)
}

mutation SendChatMessage {
  createChatMessage(input: {room: "lobby", author: "alice", body: "hello"}) {
    id
    author
    body
  }
}
"""
