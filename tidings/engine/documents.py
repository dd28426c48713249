"""GraphQL documents: parsed and validated once per text, within bounds, for every transport.

Bounds before cost: a text of more than ``max_tokens`` tokens is refused by the parser as it
reaches the limit (graphql-core's ``parse(max_tokens=...)``), and a parsed document with more
than ``max_directives`` directives at one location or a list literal of more than
``max_list_items`` values is refused before validation runs. Only valid documents are cached,
in an LRU bounded by entries and by bytes of text; a refused document keeps no text and no
syntax tree, only its light errors (no nodes, no source) in a small LRU keyed by a digest, so a
client repeating it is answered at once. Texts of ``offload_bytes`` or more are parsed and
validated in one worker thread (``prepare``): a burst of big documents queues there, costs at
most one core, and never stalls the event loop that delivers events.

Whether a caller may introspect depends on who asks (``--introspection authenticated``), so the
introspection refusal is not among the rules: each cached document keeps the errors it would
report, and ``get`` adds them for a caller the ``Introspection`` policy refuses. One cache entry
per text serves every caller.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import hashlib
import re
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any

from graphql import (
    ASTValidationRule,
    DocumentNode,
    GraphQLError,
    GraphQLSchema,
    ListValueNode,
    Node,
    parse,
    specified_rules,
    validate,
)
from graphql.validation import NoSchemaIntrospectionCustomRule
from strawberry.extensions import SchemaExtension

from tidings.auth.principal import ANONYMOUS, Principal
from tidings.errors import ErrorCode
from tidings.schema.validation import Introspection

__all__ = ["Documents", "DocumentsExtension", "Parsed"]


@dataclasses.dataclass(frozen=True, slots=True)
class Parsed:
    """A text's parse and validation: the document when it is valid, else the errors; and the
    errors the introspection refusal adds for a caller who may not introspect (none: it does not)."""

    document: DocumentNode | None
    errors: list[GraphQLError]
    introspection: tuple[GraphQLError, ...] = ()


class Documents:
    """The one parser and validator of GraphQL texts, with its bounded caches."""

    def __init__(
        self,
        rules: Sequence[type[ASTValidationRule]] = (),
        *,
        introspection: Introspection = Introspection.ON,
        max_tokens: int = 5_000,
        max_directives: int = 10,
        max_list_items: int = 1_000,
        cache_entries: int = 1_000,
        cache_bytes: int = 8 * 1024 * 1024,
        offload_bytes: int = 4_096,
        max_waiting: int = 64,
    ) -> None:
        self.rules = [*specified_rules, *rules]
        self.introspection = introspection
        self.max_tokens = max_tokens
        self.max_directives = max_directives
        self.max_list_items = max_list_items
        self.cache_entries = cache_entries
        self.cache_bytes = cache_bytes
        self.offload_bytes = offload_bytes
        self.max_waiting = max_waiting
        self._valid: OrderedDict[str, Parsed] = OrderedDict()
        self._valid_bytes = 0
        self._refused: OrderedDict[bytes, Parsed] = OrderedDict()
        self._waiting = 0
        # One thread: big documents wait for each other, never for (or instead of) the loop.
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="tidings-documents")

    # -- lookups -------------------------------------------------------------------------------

    def get(self, schema: GraphQLSchema, query: str, principal: Principal | None) -> Parsed:
        """``query`` parsed and validated for ``principal``: from a cache, or now, on the calling thread.

        ``principal`` is who would run it (the introspection policy judges them); None only to
        learn what the document is (an operation's type), never to run it.
        """
        parsed = self._known(query)
        if parsed is None:
            parsed = self.compile(schema, query)
            self._keep(query, parsed)
        if parsed.introspection and principal is not None and not self.introspection.allows(principal):
            return Parsed(None, [*parsed.errors, *parsed.introspection])
        return parsed

    async def prepare(self, schema: GraphQLSchema, query: str) -> None:
        """Make ``get(schema, query)`` answer from a cache: a big text is parsed in the documents thread.

        Small texts are left to ``get`` (parsing them costs less than the hop to the thread).
        """
        if len(query) < self.offload_bytes or self._known(query) is not None:
            return
        if self._waiting >= self.max_waiting:
            error = GraphQLError(
                "Too many large documents are waiting to be parsed; retry shortly",
                extensions={"code": ErrorCode.RATE_LIMITED.value, "retryAfter": 1},
            )
            self._keep(query, Parsed(None, [error]))
            return
        self._waiting += 1
        try:
            loop = asyncio.get_running_loop()
            parsed = await loop.run_in_executor(self._thread, self.compile, schema, query)
        finally:
            self._waiting -= 1
        self._keep(query, parsed)

    def close(self) -> None:
        self._thread.shutdown(wait=False, cancel_futures=True)

    # -- the work ------------------------------------------------------------------------------

    def compile(self, schema: GraphQLSchema, query: str) -> Parsed:
        """Parse and validate ``query`` within the bounds; caches nothing (thread-safe)."""
        try:
            document = parse(query, max_tokens=self.max_tokens)
        except GraphQLError as exc:
            return Parsed(None, [exc])
        refused = self._shape_errors(document)
        if refused:
            return Parsed(None, refused)
        errors = validate(schema, document, self.rules)
        introspection: tuple[GraphQLError, ...] = ()
        # Cheap test first: a text that introspects names __schema or __type.
        if self.introspection is not Introspection.ON and ("__schema" in query or "__type" in query):
            introspection = tuple(validate(schema, document, [NoSchemaIntrospectionCustomRule]))
        return Parsed(None if errors else document, list(errors), introspection)

    def _shape_errors(self, document: DocumentNode) -> list[GraphQLError]:
        """Directives piled on one location, or list literals too long: refused before validation."""
        stack: list[Any] = [document]
        while stack:
            node = stack.pop()
            directives = getattr(node, "directives", None)
            if directives is not None and len(directives) > self.max_directives:
                return [_bad_input(f"More than {self.max_directives} directives at one location", node)]
            if isinstance(node, ListValueNode) and len(node.values) > self.max_list_items:
                return [_bad_input(f"A list literal of more than {self.max_list_items} values", node)]
            for key in node.keys:
                value = getattr(node, key, None)
                if isinstance(value, Node):
                    stack.append(value)
                elif isinstance(value, tuple | list):
                    stack.extend(v for v in value if isinstance(v, Node))
        return []

    # -- the caches ------------------------------------------------------------------------------

    def _known(self, query: str) -> Parsed | None:
        valid = self._valid.get(query)
        if valid is not None:
            self._valid.move_to_end(query)
            return valid
        if not self._refused:
            return None
        key = _digest(query)
        refused = self._refused.get(key)
        if refused is not None:
            self._refused.move_to_end(key)
        return refused

    def _keep(self, query: str, parsed: Parsed) -> None:
        if parsed.document is None:
            # No text, no syntax tree: a refused document's errors without their nodes and source.
            light = Parsed(None, [_light(e) for e in parsed.errors[:10]], tuple(map(_light, parsed.introspection[:10])))
            self._refused[_digest(query)] = light
            while len(self._refused) > 64:
                self._refused.popitem(last=False)
            return
        size = len(query)
        if size > self.cache_bytes // 64 or query in self._valid:
            return  # one text may take at most 1/64 of the cache
        self._valid[query] = parsed
        self._valid_bytes += size
        while len(self._valid) > self.cache_entries or self._valid_bytes > self.cache_bytes:
            old, _ = self._valid.popitem(last=False)
            self._valid_bytes -= len(old)

    def cached(self) -> tuple[int, int]:
        """Valid documents cached, and the bytes of their texts."""
        return len(self._valid), self._valid_bytes


class DocumentsExtension(SchemaExtension):
    """Strawberry's parse and validation steps answered by ``Documents`` (for the requests the
    engine leaves to Strawberry's view: GET, batches): the same bounds, rules and caches."""

    def __init__(self, documents: Documents) -> None:
        super().__init__()
        self.documents = documents
        self.parsed: Parsed | None = None

    def on_parse(self) -> Iterator[None]:
        context = self.execution_context
        if context.graphql_document is None and context.query:
            # tidings' Context carries the caller; any other (a test's) is nobody in particular.
            principal = getattr(context.context, "principal", ANONYMOUS)
            self.parsed = self.documents.get(context.schema._schema, context.query, principal)
            # A refused text keeps no tree: a stand-in lets Strawberry reach validation, which answers the
            # errors. It has an operation of the requested name, or Strawberry would answer "Unknown operation".
            context.graphql_document = self.parsed.document or _stand_in(context.operation_name)
        yield

    def on_validate(self) -> Iterator[None]:
        if self.parsed is not None:
            self.execution_context.pre_execution_errors = list(self.parsed.errors)  # [] = validated already
        yield


_STAND_IN = parse("{ __typename }", no_location=True)
_NAME = re.compile(r"[_A-Za-z][_0-9A-Za-z]*")


def _stand_in(operation_name: str | None) -> DocumentNode:
    if operation_name is None or not _NAME.fullmatch(operation_name):
        return _STAND_IN
    return parse(f"query {operation_name} {{ __typename }}", no_location=True)  # a name of a valid Name: no injection


def _digest(query: str) -> bytes:
    return hashlib.blake2b(query.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def _light(error: GraphQLError) -> GraphQLError:
    light = GraphQLError(error.message, extensions=error.extensions)
    light.locations = error.locations
    return light


def _bad_input(message: str, node: Node) -> GraphQLError:
    return GraphQLError(message, nodes=[node], extensions={"code": ErrorCode.BAD_USER_INPUT.value})
