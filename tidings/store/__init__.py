"""Storage: tables per collection, CRUD, and the event log."""

from tidings.store.reads import Reader
from tidings.store.store import Store, decode_document, normalize_url

__all__ = ["Reader", "Store", "decode_document", "normalize_url"]
