"""One directory per server for prometheus_client's multi-process files.

With several uvicorn workers every worker writes its samples to files in ``PROMETHEUS_MULTIPROC_DIR``
and ``/metrics`` adds up whatever files it finds there. Two servers on one data directory must not
share that directory (each would add up the other's workers), nor clear it at start-up (each would
delete the other's live files). So each server claims ``<root>/<pid>-<random>``, removes it when it
exits, and at start-up removes the directories of servers that are gone (killed, so their exit never
ran). A directory records its owner's process start time next to its pid: in a container the new
server often gets the pid of the old one, and must still see that the old one is gone.

This module must not import prometheus_client: it runs before the environment variable is set, and
prometheus_client chooses its storage when it is first imported.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
from pathlib import Path

logger = logging.getLogger("calibserve.metrics")

OWNER_FILE = "owner"
_SERVER_DIR = re.compile(r"(\d+)-[0-9a-f]+")
_OLD_LAYOUT_FILE = re.compile(r"[a-z_]+_(\d+)\.db")  # files of versions that wrote straight into the root


def process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux ``/proc``), None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: count fields after its last ")".
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else None


def is_running(pid: int, start: str | None) -> bool:
    """Whether ``pid`` is still the process that started at ``start`` (when that is known)."""
    if pid == os.getpid():
        return False  # our own pid, reused: we have no directory yet, so the one found is an old server's
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, owned by someone else
    return start is None or process_start(pid) in (None, start)


def claim(root: Path) -> Path:
    """Remove the directories of servers that are gone, then make and return this server's own."""
    root.mkdir(parents=True, exist_ok=True)
    for stale in remove_stale(root):
        logger.info("removed metrics files of a server that is gone: %s", stale)
    pid = os.getpid()
    directory = root / f"{pid}-{secrets.token_hex(4)}"
    directory.mkdir()
    (directory / OWNER_FILE).write_text(f"{pid} {process_start(pid) or '-'}\n", encoding="ascii")
    return directory


def release(directory: Path) -> None:
    """Remove this server's directory at exit (only in the process that claimed it)."""
    owner = _SERVER_DIR.fullmatch(directory.name)
    if owner is not None and int(owner.group(1)) == os.getpid():
        shutil.rmtree(directory, ignore_errors=True)


def remove_stale(root: Path) -> list[Path]:
    """Entries of ``root`` whose owner is gone, removed; anything else there is left alone."""
    removed: list[Path] = []
    for entry in root.iterdir():
        server = _SERVER_DIR.fullmatch(entry.name)
        old = _OLD_LAYOUT_FILE.fullmatch(entry.name)
        if server is not None and entry.is_dir():
            if not is_running(int(server.group(1)), _recorded_start(entry)):
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
        elif old is not None and entry.is_file() and not is_running(int(old.group(1)), None):
            entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def _recorded_start(directory: Path) -> str | None:
    try:
        _, start = (directory / OWNER_FILE).read_text(encoding="ascii").split()
    except (OSError, ValueError):
        return None
    return None if start == "-" else start
