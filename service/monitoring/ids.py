"""Time-sortable prediction ids: UUIDv7 (RFC 9562), generated without a dependency.

48 bits of Unix milliseconds first, so ids sort by time as strings and as SQLite keys; within one
process a 12-bit counter in ``rand_a`` keeps ids made in the same millisecond in order.
"""

from __future__ import annotations

import os
import threading
import time
import uuid

_lock = threading.Lock()
_last_ms = 0
_counter = 0


def new_ids(count: int) -> list[str]:
    global _last_ms, _counter
    ids = []
    with _lock:
        for _ in range(count):
            now_ms = time.time_ns() // 1_000_000
            if now_ms <= _last_ms:
                _counter += 1
                if _counter > 0xFFF:  # 4096 ids in one millisecond: borrow the next millisecond
                    _last_ms += 1
                    _counter = 0
                now_ms = _last_ms
            else:
                _last_ms, _counter = now_ms, 0
            rand_b = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
            value = (now_ms << 80) | (0x7 << 76) | (_counter << 64) | (0b10 << 62) | rand_b
            ids.append(str(uuid.UUID(int=value)))
    return ids


def id_time(prediction_id: str) -> float:
    """Unix seconds encoded in a UUIDv7."""
    return (uuid.UUID(prediction_id).int >> 80) / 1000.0
