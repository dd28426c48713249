"""What a change to a related row does to a view that follows relations.

A group's view (its read guard and filter) may follow relations: ``Message.read = {"room":
{"members": {"some": {"userId": {"eq": "$sub"}}}}}`` reads ``Room`` and ``Membership``. A
change to a ``Membership`` row can then move messages into or out of a member's view without
any message changing. ``Paths`` knows, per collection the view reads, the relation paths
that lead there from the view's own collection; ``affected`` walks such a path back from
the changed row (as it was and as it is) to the records whose view it can change, one
SELECT per step for all the rows of that step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from tidings.filters import (
    MATCH_ALL,
    And,
    Filter,
    Predicate,
    Quantifier,
    Related,
    compile_predicate,
    related_nodes,
    relations_in,
)
from tidings.model.collection import Collection
from tidings.store import Reader
from tidings.store.relations import Overlay, by_ids, children
from tidings.types import Record

__all__ = ["Path", "Paths", "affected", "shape"]

Path = tuple[Related, ...]  # relation nodes from the view's collection outwards


class Paths:
    """Every relation path of one filter, by the collection each ends at."""

    def __init__(self, f: Filter) -> None:
        found: dict[str, list[Path]] = {}
        stack: list[Path] = [(node,) for node in related_nodes(f)]
        while stack:
            path = stack.pop()
            node = path[-1]
            found.setdefault(node.target, []).append(path)
            nested = [*related_nodes(node.guard), *related_nodes(node.item)]
            stack.extend((*path, inner) for inner in nested if len(path) < _MAX_DEPTH)
        self.by_target: dict[str, tuple[Path, ...]] = {k: tuple(dict.fromkeys(v)) for k, v in found.items()}
        # id(node) -> whether a row counts for it (read guard and filter), where that reads no relation
        self._counts: dict[int, Predicate] = {
            id(path[-1]): compile_predicate(And((path[-1].guard, path[-1].item)))
            for paths in self.by_target.values()
            for path in paths
            if not relations_in(path[-1].guard) and not relations_in(path[-1].item)
        }

    def moved(self, collection: str, before: Record | None, after: Record | None) -> tuple[Path, ...]:
        """The paths ending at ``collection`` along which a row of it changing from ``before`` to
        ``after`` may move a record into or out of the view (the others: ``unmoved``)."""
        return tuple(p for p in self.ending_at(collection) if not self.unmoved(p[-1], before, after))

    def unmoved(self, node: Related, before: Record | None, after: Record | None) -> bool:
        """Whether a change of one row from ``before`` to ``after`` leaves ``node``'s answer the
        same for every record, so nothing on the path through it can move: the row counts for it
        (or not) alike before and after, under the same parent; or, to many, it never counts for
        a quantifier that only its counting rows decide (SOME, NONE), or always counts for one
        that only its other rows decide (EVERY)."""
        counts = self._counts.get(id(node))
        if counts is None:
            return False  # its filter follows relations further: decided by reading
        was = before is not None and counts(before)
        now = after is not None and counts(after)
        if node.quantifier is Quantifier.SOME or node.quantifier is Quantifier.NONE:
            if not was and not now:
                return True
        elif node.quantifier is Quantifier.EVERY and was and now and before is not None and after is not None:
            return True
        if before is None or after is None or was != now:
            return False
        return bool(before.get(node.target_column) == after.get(node.target_column))

    @property
    def collections(self) -> frozenset[str]:
        return frozenset(self.by_target)

    def ending_at(self, collection: str) -> tuple[Path, ...]:
        return self.by_target.get(collection, ())


_MAX_DEPTH = 8  # filters are bounded by the query depth limit long before this


def shape(path: Path) -> tuple[tuple[str, str, str, str], ...]:
    """What ``affected`` reads of a path: its relations, not the filters on them."""
    return tuple((n.relation, n.local_column, n.target, n.target_column) for n in path)


async def affected(
    reader: Reader,
    collections: Mapping[str, Collection],
    root: Collection,
    path: Path,
    rows: Sequence[Record],
    overlay: Overlay | None = None,
) -> list[Record]:
    """The stored records of ``root`` that reach one of ``rows`` (of the path's last collection)
    through ``path``: one SELECT per step, for all the rows of the step together."""
    current: list[Record] = list(rows)
    for i in range(len(path) - 1, -1, -1):
        node = path[i]
        parent = root if i == 0 else collections[path[i - 1].target]
        keys = sorted({str(k) for r in current if (k := r.get(node.target_column)) is not None})
        if not keys:
            return []
        if node.target_column == "id":  # a reference: the parents point at these rows
            lists = await children(reader, parent, node.local_column, keys, MATCH_ALL, overlay=overlay)
            current = [r for records in lists.values() for r in records]
        else:  # a back reference: these rows point at their parents
            current = list((await by_ids(reader, parent, keys, overlay=overlay)).values())
    return current
