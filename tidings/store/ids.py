"""Record ids: UUIDv7 (RFC 9562) as 32 lowercase hex digits, so ids made later sort later.

The form is the one random ids had (``uuid4().hex``), so stored ids of either kind live side by
side. Within one process ids are strictly increasing: a second id in the same millisecond (or
after the clock stepped back) takes the last one's 74 random bits plus one (RFC 9562 6.2,
method 2), so creation order and id order agree for the records one process makes.
"""

from __future__ import annotations

import os
import threading
import time

__all__ = ["new_id"]

_RANDOM_BITS = 74  # rand_a (12) and rand_b (62) around the version and variant bits
_lock = threading.Lock()  # SQLite writes run in threads; an id is taken on the loop, but be safe
_last = (0, 0)  # (milliseconds, random part) of the last id made here


def _compose(ms: int, random: int) -> str:
    rand_a = random >> 62
    rand_b = random & ((1 << 62) - 1)
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b
    return f"{value:032x}"


def new_id() -> str:
    """A fresh UUIDv7, as hex: its first 12 digits are the Unix time in milliseconds."""
    global _last
    ms = time.time_ns() // 1_000_000
    random = int.from_bytes(os.urandom(10), "big") >> (80 - _RANDOM_BITS)
    with _lock:
        last_ms, last_random = _last
        if ms <= last_ms:
            ms, random = last_ms, last_random + 1
            if random >> _RANDOM_BITS:  # 2**74 ids in one millisecond: borrow the next one
                ms, random = ms + 1, 0
        _last = (ms, random)
    return _compose(ms, random)
