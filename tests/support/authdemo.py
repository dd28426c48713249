"""Collections with permission rules, for the auth tests."""

from __future__ import annotations

from tidings import Rules, collection


@collection(rules=Rules(read="authenticated", update="owner:owner", delete="role:admin,editor"))
class Note:
    title: str
    owner: str | None = None
    secret: bool = False


@collection(rules=Rules(read={"secret": {"eq": False}}, create="role:editor"))
class Doc:
    title: str
    secret: bool = False


COLLECTIONS = [Note, Doc]
