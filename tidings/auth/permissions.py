"""The one holder of the app's current ``Authorizer``: every part reads the rules through it,
so a rules reload swaps them in one place."""

from __future__ import annotations

from tidings.auth.rules import Authorizer


class Permissions:
    """The authorizer in force now; ``current`` is replaced whole, never mutated."""

    __slots__ = ("current",)

    def __init__(self, current: Authorizer) -> None:
        self.current = current
