"""Time-sortable prediction ids: UUIDv7 (RFC 9562), generated without a dependency.

48 bits of Unix milliseconds first, so ids sort by time as strings and as SQLite keys; within one
process a 12-bit counter in ``rand_a`` keeps ids made in the same millisecond in order.
"""

from __future__ import annotations

import os
import re
import threading
import time
import uuid

import numpy as np

# The canonical text ``new_ids`` writes: lower-case hex, version 7, RFC 9562 variant (8, 9, a or b).
_UUID7 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")

_lock = threading.Lock()
_last_ms = 0
_counter = 0


def new_ids(count: int) -> list[str]:
    """``count`` ids in creation order, built as one array (a 1000-row request needs 1000 of them).

    The clock is read once per call; the 12-bit counter numbers the ids within the millisecond, and a
    call that would pass 4096 borrows the following milliseconds, so ids stay strictly increasing.
    """
    global _last_ms, _counter
    if count == 0:
        return []
    with _lock:
        now_ms = time.time_ns() // 1_000_000
        if now_ms > _last_ms:
            _last_ms, _counter = now_ms, -1
        first = _counter + 1  # sequence numbers first .. first + count - 1 within _last_ms
        sequence = np.arange(first, first + count, dtype=np.uint64)
        millis = np.uint64(_last_ms) + sequence // np.uint64(4096)
        counter = sequence % np.uint64(4096)
        _last_ms = int(millis[-1])
        _counter = int(counter[-1])
    high = (millis << np.uint64(16)) | np.uint64(0x7000) | counter
    low = (np.frombuffer(os.urandom(8 * count), dtype=np.uint64) >> np.uint64(2)) | np.uint64(0b10 << 62)
    digits = np.stack([high, low], axis=1).astype(">u8").tobytes().hex()
    return [
        f"{digits[i : i + 8]}-{digits[i + 8 : i + 12]}-{digits[i + 12 : i + 16]}-{digits[i + 16 : i + 20]}-"
        f"{digits[i + 20 : i + 32]}"
        for i in range(0, 32 * count, 32)
    ]


def id_time(prediction_id: str) -> float:
    """Unix seconds encoded in a UUIDv7."""
    return (uuid.UUID(prediction_id).int >> 80) / 1000.0


def parse_id_time(text: str) -> float | None:
    """Unix seconds of an id written as ``new_ids`` writes them, or None for anything else.

    Feedback may arrive before its prediction is visible (another process still holds the row in its
    queue): only an id this service could have made recently is worth keeping for later, so the shape
    is checked exactly (a UUIDv4, upper case or braces are not ours) before its time is read.
    """
    if _UUID7.fullmatch(text) is None:
        return None
    return int(text[:8] + text[9:13], 16) / 1000.0


def id_floor(unix_seconds: float) -> str:
    """The smallest id text made at or after ``unix_seconds``: ids sort by time as strings, so
    ``prediction_id < id_floor(t)`` selects the ids made before ``t`` (rounded down to the millisecond)."""
    digits = f"{max(0, int(unix_seconds * 1000)):012x}"
    return f"{digits[:8]}-{digits[8:12]}-7000-8000-000000000000"
