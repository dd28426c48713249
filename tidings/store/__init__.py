"""Storage: tables per collection, CRUD, and the event log."""

from tidings.store.reads import Reader
from tidings.store.store import Store, decode_document, decode_event, event_row, normalize_url

__all__ = ["Reader", "Store", "decode_document", "decode_event", "event_row", "normalize_url"]
