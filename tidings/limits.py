"""Rate limits: token buckets per connection and per user, shared through Redis
when several processes serve one API, and the schema extension that applies
them to queries and mutations on every transport.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Hashable
from typing import TYPE_CHECKING, Any

import orjson
from graphql import ExecutionResult, GraphQLError
from strawberry.extensions import SchemaExtension

from tidings.auth.principal import Principal
from tidings.errors import RateLimited

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from tidings.config import Settings

logger = logging.getLogger("tidings")

Clock = Callable[[], float]

# A token bucket kept in Redis, on Redis's clock so every process agrees.
# KEYS[1] the bucket; ARGV rate per second, burst. Returns the wait in seconds
# (a string: Lua numbers become integers in replies), "0" when a token was taken.
_REDIS_BUCKET = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'stamp')
local tokens = tonumber(state[1]) or burst
local stamp = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - stamp) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'stamp', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return tostring(wait)
"""

_REDIS_RETRY = 5.0  # seconds of local buckets after Redis failed, before trying it again
# A stalled Redis holds a request at most this long (--rate-redis-timeout) before the
# process falls back to its own budgets: a mutation is never held for Redis beyond it.
_REDIS_TIMEOUT = 0.1


@dataclasses.dataclass(frozen=True, slots=True)
class Rate:
    """``per_second`` tokens a second, up to ``burst`` saved; 0 per second = no limit."""

    per_second: float
    burst: int

    @property
    def enabled(self) -> bool:
        return self.per_second > 0


_OFF = Rate(0.0, 1)


class TokenBucket:
    """Holds up to ``burst`` tokens, refilled at ``rate`` a second; one per action."""

    __slots__ = ("_clock", "burst", "rate", "stamp", "tokens")

    def __init__(self, rate: Rate, clock: Clock = time.monotonic) -> None:
        self.rate = rate.per_second
        self.burst = float(max(rate.burst, 1))
        self.tokens = self.burst
        self._clock = clock
        self.stamp = clock()

    def _refill(self) -> float:
        now = self._clock()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        return self.tokens

    def take(self) -> float:
        """Take one token: 0.0 when granted, else the seconds until one is available."""
        tokens = self._refill()
        if tokens >= 1.0:
            self.tokens = tokens - 1.0
            return 0.0
        return (1.0 - tokens) / self.rate

    def give_back(self) -> None:
        self.tokens = min(self.burst, self.tokens + 1.0)

    def until_full(self) -> float:
        return (self.burst - self._refill()) / self.rate


def retry_after(seconds: float) -> float:
    """Seconds as sent in ``extensions.retryAfter``: rounded up to the millisecond."""
    return math.ceil(seconds * 1000) / 1000


class Limits:
    """Every rate limit of one server process.

    Per connection (subscribes, and operations of anonymous WebSocket clients):
    local buckets, dropped with the connection. Per user (``sub`` and account,
    so many tabs share one budget) and per client IP (anonymous HTTP and SSE):
    buckets in Redis when ``redis_url`` is given, so every process draws on the
    same budget; local ones when Redis is unreachable (a limit never fails a
    request because Redis is down).
    """

    def __init__(
        self,
        *,
        subscribe: Rate,
        user_subscribe: Rate,
        mutations: Rate,
        queries: Rate,
        events: Rate,
        redis_url: str | None = None,
        prefix: str = "tidings:rate",
        clock: Clock = time.monotonic,
        max_keys: int = 100_000,
        publish: Rate = _OFF,
        user_publish: Rate = _OFF,
        redis_timeout: float = _REDIS_TIMEOUT,
    ) -> None:
        self.subscribe = subscribe
        self.user_subscribe = user_subscribe
        self.mutations = mutations
        self.queries = queries
        self.events = events
        self.publish = publish
        self.user_publish = user_publish
        self.redis_url = redis_url
        self.redis_timeout = redis_timeout
        self.prefix = prefix
        self.clock = clock
        self.max_keys = max_keys
        self._connections: weakref.WeakKeyDictionary[Any, dict[str, TokenBucket]] = weakref.WeakKeyDictionary()
        self._shared: OrderedDict[Hashable, TokenBucket] = OrderedDict()  # LRU, at most max_keys
        self._redis: aioredis.Redis | None = None
        self._script: Any = None
        self._redis_down_until = 0.0

    @classmethod
    def from_settings(cls, settings: Settings, *, broker_url: str | None = None) -> Limits:
        """The limits ``settings`` ask for; per-user budgets in Redis when the broker is Redis."""
        broker = broker_url or settings.broker
        return cls(
            subscribe=Rate(settings.rate_subscribe, settings.rate_subscribe_burst),
            user_subscribe=Rate(settings.rate_user_subscribe, settings.rate_user_subscribe_burst),
            mutations=Rate(settings.rate_mutations, settings.rate_mutations_burst),
            queries=Rate(settings.rate_queries, settings.rate_queries_burst),
            events=Rate(settings.rate_events, settings.rate_events_burst),
            redis_url=broker if broker.startswith(("redis://", "rediss://", "unix://")) else None,
            prefix=settings.channel + ":rate",
            publish=Rate(settings.rate_publish, settings.rate_publish_burst),
            user_publish=Rate(settings.rate_user_publish, settings.rate_user_publish_burst),
            redis_timeout=settings.rate_redis_timeout,
        )

    async def start(self) -> None:
        if self.redis_url is None:
            return
        import redis.asyncio as aioredis

        self._redis = aioredis.from_url(
            self.redis_url, socket_timeout=self.redis_timeout, socket_connect_timeout=self.redis_timeout
        )
        self._script = self._redis.register_script(_REDIS_BUCKET)

    async def close(self) -> None:
        if self._redis is not None:
            redis, self._redis = self._redis, None
            await redis.aclose()

    # -- checks ----------------------------------------------------------------

    async def check_subscribe(self, principal: Principal, connection: Any) -> RateLimited | None:
        """May ``connection`` start one more subscription now? None, or the error to answer."""
        bucket: TokenBucket | None = None
        if self.subscribe.enabled:
            bucket = self._connection_bucket(connection, "subscribe", self.subscribe)
            wait = bucket.take() if bucket is not None else 0.0
            if wait:
                return _limited("subscribe operations on this connection", self.subscribe, wait)
        if self.user_subscribe.enabled and principal.is_authenticated:
            wait = await self._take_shared("subscribe", _user_key(principal), self.user_subscribe)
            if wait:
                if bucket is not None:
                    bucket.give_back()  # refused anyway: the connection's budget is not spent
                return _limited("subscribe operations for this user", self.user_subscribe, wait)
        return None

    async def check_publish(self, principal: Principal, client: Any) -> RateLimited | None:
        """May this caller publish one more channel event now? Per connection (``client``), then per user."""
        bucket: TokenBucket | None = None
        if self.publish.enabled:
            if isinstance(client, str):  # plain HTTP: the address stands for the connection
                wait = await self._take_shared("publish", "ip:" + client, self.publish)
            else:
                bucket = self._connection_bucket(client, "publish", self.publish)
                wait = bucket.take() if bucket is not None else 0.0
            if wait:
                return _limited("publishes on this connection", self.publish, wait)
        if self.user_publish.enabled and principal.is_authenticated:
            wait = await self._take_shared("publish", _user_key(principal), self.user_publish)
            if wait:
                if bucket is not None:
                    bucket.give_back()
                return _limited("publishes for this user", self.user_publish, wait)
        return None

    async def check_operation(self, kind: str, principal: Principal, client: Any) -> RateLimited | None:
        """May this caller run one more query or mutation (``kind``) now?

        ``client`` is who sent it when no user did: an IP address string
        (HTTP, SSE) or a connection object (WebSocket).
        """
        rate = self.mutations if kind == "mutation" else self.queries
        if not rate.enabled:
            return None
        if principal.is_authenticated:
            wait = await self._take_shared(kind, _user_key(principal), rate)
            who = "this user"
        elif isinstance(client, str):
            wait = await self._take_shared(kind, "ip:" + client, rate)
            who = "this address"
        else:
            bucket = self._connection_bucket(client, kind, rate)
            wait = bucket.take() if bucket is not None else 0.0
            who = "this connection"
        return _limited(f"{kind}s for {who}", rate, wait) if wait else None

    def event_bucket(self) -> TokenBucket | None:
        """A new subscription's bucket of delivered events (None when unlimited)."""
        return TokenBucket(self.events, self.clock) if self.events.enabled else None

    # -- buckets ---------------------------------------------------------------

    def _connection_bucket(self, connection: Any, kind: str, rate: Rate) -> TokenBucket | None:
        if connection is None:
            return None
        try:
            buckets = self._connections.get(connection)
            if buckets is None:
                buckets = self._connections[connection] = {}
        except TypeError:  # not weakly referenceable: nothing to key a budget by
            return None
        bucket = buckets.get(kind)
        if bucket is None:
            bucket = buckets[kind] = TokenBucket(rate, self.clock)
        return bucket

    def _local(self, key: Hashable, rate: Rate) -> TokenBucket:
        bucket = self._shared.get(key)
        if bucket is None:
            bucket = self._shared[key] = TokenBucket(rate, self.clock)
            if len(self._shared) > self.max_keys:
                # The least recently used key forgets its budget: bounded memory, and a
                # caller idle that long would have a full bucket again anyway.
                self._shared.popitem(last=False)
        else:
            self._shared.move_to_end(key)
        return bucket

    async def _take_shared(self, kind: str, who: str, rate: Rate) -> float:
        if self._script is not None and self.clock() >= self._redis_down_until:
            key = f"{self.prefix}:{kind}:{who}"
            try:
                async with asyncio.timeout(self.redis_timeout):
                    reply = await self._script(keys=[key], args=[rate.per_second, rate.burst])
                return float(reply)
            except Exception as exc:  # any failure of Redis: count locally, never fail the request
                self._redis_down_until = self.clock() + _REDIS_RETRY
                logger.warning(
                    "Rate limits: Redis unreachable (%s); using this process's own budgets for %.0f s",
                    type(exc).__name__,
                    _REDIS_RETRY,
                )
        return self._local((kind, who), rate).take()


def _user_key(principal: Principal) -> str:
    return "user:" + orjson.dumps([principal.sub, principal.account]).decode()


def _limited(what: str, rate: Rate, wait: float) -> RateLimited:
    seconds = retry_after(wait)
    return RateLimited(
        f"Too many {what} (limit {rate.per_second:g} per second, burst {rate.burst}); retry after {seconds:g} s",
        retryAfter=seconds,
    )


def rate_limited_events(bucket: TokenBucket, last_seq: int) -> dict[str, Any]:
    """The error that ends a subscription over its event rate: resume after ``last_seq``."""
    seconds = retry_after(max(bucket.until_full(), 1.0 / bucket.rate))
    return {
        "message": (
            f"More than {bucket.rate:g} events per second (burst {bucket.burst:g}) for this subscription: "
            f"it ended after seq {last_seq}; subscribe again with after: {last_seq} to receive the rest"
        ),
        "extensions": {"code": RateLimited.code.value, "retryAfter": seconds, "lastSeq": str(last_seq)},
    }


def _client_of(context: Any) -> Any:
    client = getattr(context, "client", None)
    if client is not None:
        return getattr(client, "client_ip", None) or client
    request = getattr(context, "request", None)
    address = getattr(request, "client", None)
    return getattr(address, "host", None)


async def refuse_operation(context: Any, operation: str | None) -> GraphQLError | None:
    """The query and mutation limits for one operation (``"query"``, ``"mutation"``): the error
    to answer it with, or None to run it. Over HTTP a refusal is a 429 with a Retry-After in
    whole seconds.
    """
    limits: Limits | None = getattr(getattr(context, "services", None), "limits", None)
    if limits is None or operation == "subscription":
        return None
    kind = "mutation" if operation == "mutation" else "query"
    limited = await limits.check_operation(kind, context.principal, _client_of(context))
    if limited is None:
        return None
    response = getattr(context, "response", None)
    if response is not None:
        response.status_code = 429
        response.headers["Retry-After"] = str(max(1, math.ceil(limited.details["retryAfter"])))
    return GraphQLError(limited.message, original_error=limited, extensions=limited.extensions)


class RateLimit(SchemaExtension):
    """Applies the query and mutation limits to every operation Strawberry executes
    (the HTTP view's own requests; the engine applies them itself): one place, after validation."""

    async def on_execute(self) -> AsyncIterator[None]:
        ec = self.execution_context
        operation = ec.operation_type
        refused = await refuse_operation(ec.context, operation.value if operation is not None else None)
        if refused is not None:
            ec.result = ExecutionResult(data=None, errors=[refused])
        yield
