"""calibserve against its peers under wrk: throughput, latency, errors and memory, in one command.

    .venv/bin/python bench/run_bench.py [--quick] [--output bench/RESULTS.md] [--loop uvloop] [--http httptools]

Servers (each a subprocess in its own session on a free loopback port, waited for, always stopped: SIGTERM
to its main process, then SIGKILL to whatever is left of its process tree):

1. ``bare``: a bare ASGI callable under uvicorn returning a constant JSON (the ceiling);
2. ``naive``: FastAPI, pydantic body ``{"instances": list[list[float]]}``, a plain ``def`` handler running
   onnxruntime (1 intra-op thread) per request, answering label / confidence / probabilities per instance;
3. ``litserve``: LitServe with dynamic batching (max_batch_size 32, batch_timeout 2 ms) on the same ONNX;
4. ``calibserve``: ``calibserve serve``, prediction logging on, data dir in a temporary directory; (4a) with
   micro-batching off (``CALIBSERVE_BATCH_MAX_ROWS=1``), (4b) as it is.

Every server runs on the same event loop and HTTP parser, ``--loop`` / ``--http`` (default uvloop and
httptools, what ``pip install .`` installs): ``uvicorn --loop L --http H`` for 1 and 2, the same uvicorn
options through LitServe's ``run()`` for 3; calibserve (4) takes uvicorn's choice (uvloop and httptools when
installed), so for asyncio / h11 the harness hides uvloop / httptools from it (a module on its PYTHONPATH
that raises ImportError). What each server actually runs is read from /proc (the extension modules mapped
into the processes holding the connections) during every measured run and written beside its figures.

Each runs with 1 and with 2 workers: ``uvicorn --workers N`` for 1 and 2, ``CALIBSERVE_WORKERS=N`` for 4,
``workers_per_device=N`` plus ``num_api_servers=N`` for 3. Every server logs at level warning (no access
log). Load: wrk (1 thread, keep-alive) POSTing ``{"instances": [load_digits().data[0]]}`` through
bench/wrk/post_json.lua at each concurrency (a warm-up run first, discarded); server RSS is the sum of
VmRSS over the server's process tree read from /proc near the end of each measured run. Also: 1000-instance
requests at concurrency 4 for naive and calibserve (JSON, and for calibserve also the binary path: an
.npy body answered as .npz), onnxruntime alone in this process (rows/s for batches
of 1, 256 and 1000, best of several repeats), and the time from spawn to the first 200 of the ready path.
Overload: calibserve, 1 worker, default settings (``CALIBSERVE_MAX_QUEUE_ROWS``, ``CALIBSERVE_QUEUE_TIMEOUT_MS``
and the other overload settings passed on from the environment when set), single-instance requests at
concurrency 32 and then 1,024 (``wrk -t OVERLOAD_WRK_THREADS``, the open-file limit raised first) through
bench/wrk/post_json_statuses.lua, which counts every status: answered (200) req/s, shed fraction (503 / all
responses), other errors, and latency (wrk's, over all responses) with the 1,024 / 32 ratio.
Prints the tables and writes them to bench/RESULTS.md. Figures only, no assertions: the load generator
shares this machine's cores with the server, so compare servers with each other, not with other machines.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import resource
import shlex
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray
from sklearn.datasets import load_digits

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO_ROOT / "bench"
PEERS_DIR = BENCH_DIR / "peers"
LUA_SCRIPT = BENCH_DIR / "wrk" / "post_json.lua"
LUA_STATUS_SCRIPT = BENCH_DIR / "wrk" / "post_json_statuses.lua"  # also counts each response status
DEFAULT_OUTPUT = BENCH_DIR / "RESULTS.md"
MODEL_FILE = REPO_ROOT / "models" / "digits" / "model.onnx"
VENV_BIN = Path(sys.executable).parent

SERVERS = ("bare", "naive", "litserve", "calibserve-off", "calibserve")
TITLES = {
    "bare": "(1) bare ASGI",
    "naive": "(2) naive FastAPI",
    "litserve": "(3) LitServe",
    "calibserve-off": "(4a) calibserve, batching off",
    "calibserve": "(4b) calibserve",
    "calibserve-overload": "calibserve, overload",
}
BULK_SERVERS = ("naive", "calibserve")
NPY = "application/x-npy"
NPZ = "application/x-npz"


@dataclass(frozen=True)
class BulkVariant:
    name: str
    body: str  # key of the bodies dict
    content_type: str
    accept: str | None


BULK_VARIANTS = {
    "naive": (BulkVariant("JSON", "bulk", "application/json", None),),
    "calibserve": (
        BulkVariant("JSON", "bulk", "application/json", None),
        BulkVariant(".npy in, .npz out", "bulk_npy", NPY, NPZ),
    ),
}
BULK_ROWS = 1000
BULK_CONCURRENCY = 4
WORKER_COUNTS = (1, 2)
LITSERVE_MAX_BATCH = 32
LITSERVE_BATCH_TIMEOUT_S = 0.002
WRK_THREADS = 1
LOOPS = ("uvloop", "asyncio")
PARSERS = ("httptools", "h11")
OVERLOAD_CONNECTIONS = 1024
OVERLOAD_BASELINE = 32
OVERLOAD_WRK_THREADS = max(2, min(4, os.cpu_count() or 2))  # 1,024 connections: more than one wrk thread
# Passed on to the overload server when set in the harness's environment (unset: calibserve's defaults).
OVERLOAD_SETTINGS = ("MAX_QUEUE_ROWS", "QUEUE_TIMEOUT_MS", "MAX_CONCURRENT_REQUESTS", "MAX_CONNECTIONS")
WRK_TIMEOUT = "10s"
ORT_BATCHES = (1, 256, 1000)
READY_TIMEOUT_S = 90.0
PEER_STOP_GRACE_S = 5.0
CALIBSERVE_STOP_GRACE_S = 20.0  # its graceful stop (8 s at most) drains the prediction log: let it


@dataclass(frozen=True)
class Profile:
    name: str
    concurrencies: tuple[int, ...]
    duration_s: int
    warmup_s: int
    bulk_duration_s: int
    ort_repeats: int
    repeats_at: tuple[int, ...]  # concurrencies (and bulk, as BULK_CONCURRENCY) measured twice, best reported


FULL = Profile("full", (1, 8, 32, 128), duration_s=6, warmup_s=2, bulk_duration_s=6, ort_repeats=7, repeats_at=(32, 4))
QUICK = Profile("quick", (8, 32), duration_s=4, warmup_s=1, bulk_duration_s=4, ort_repeats=3, repeats_at=())


@dataclass(frozen=True)
class ServerSpec:
    name: str
    workers: int
    argv: list[str]
    env: dict[str, str]
    ready_path: str
    predict_path: str = "/v1/predict"
    data_dir: Path | None = None
    stop_grace_s: float = PEER_STOP_GRACE_S
    loop: str = "uvloop"  # requested (what it runs is measured: LoadResult.stack)
    http: str = "httptools"

    def describe(self) -> str:
        shown = {k: v for k, v in self.env.items() if k.startswith(("CALIBSERVE_", "BENCH_"))}
        if "hide-" in self.env.get("PYTHONPATH", ""):  # uvloop / httptools hidden from calibserve
            shown["PYTHONPATH"] = self.env["PYTHONPATH"]
        prefix = " ".join(f"{k}={v}" for k, v in sorted(shown.items()))
        argv = [_relative(arg) for arg in self.argv]
        return (prefix + " " if prefix else "") + shlex.join(argv)


@dataclass
class LoadResult:
    server: str
    workers: int
    concurrency: int
    instances_per_request: int
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int
    error_detail: str
    rss_mib: float
    processes: int
    connections: list[int]  # established connections per server process holding any, sampled with the RSS
    other_rps: list[float] = field(default_factory=list)  # the other measured runs when repeated
    variant: str = "JSON"
    stack: str = "?"  # event loop / HTTP parser of the processes holding the connections, read from /proc

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def instances_per_s(self) -> float:
        return self.rps * self.instances_per_request


@dataclass
class ProbeResult:
    """One more client beside wrk's connections, timing each of its requests: latency of the answered (200)
    and the shed (503) requests apart, which wrk's all-responses histogram cannot give."""

    answered_ms: list[float]
    shed_ms: list[float]
    other: int

    @staticmethod
    def _percentile(values: list[float], q: float) -> float:
        return float(np.percentile(values, q)) if values else float("nan")

    def answered(self, q: float) -> float:
        return self._percentile(self.answered_ms, q)

    def shed(self, q: float) -> float:
        return self._percentile(self.shed_ms, q)


class Probe:
    """Sequential keep-alive requests on its own connection while wrk runs (a new connection after an error)."""

    def __init__(self, host: str, port: int, path: str, body: bytes) -> None:
        import threading

        self._address, self._path, self._body = (host, port), path, body
        self._stop = threading.Event()
        self._result = ProbeResult([], [], 0)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Probe:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(30)

    @property
    def result(self) -> ProbeResult:
        return self._result

    def _run(self) -> None:
        import http.client

        connection: http.client.HTTPConnection | None = None
        headers = {"Content-Type": "application/json"}
        while not self._stop.is_set():
            if connection is None:
                connection = http.client.HTTPConnection(*self._address, timeout=30)
            started = time.perf_counter()
            try:
                connection.request("POST", self._path, self._body, headers)
                response = connection.getresponse()
                response.read()
            except (OSError, http.client.HTTPException):
                self._result.other += 1
                connection.close()
                connection = None
                continue
            elapsed_ms = (time.perf_counter() - started) * 1000
            if response.status == 200:
                self._result.answered_ms.append(elapsed_ms)
            elif response.status == 503:
                self._result.shed_ms.append(elapsed_ms)
            else:
                self._result.other += 1


@dataclass
class OverloadResult:
    """One wrk run of the overload scenario, every response status counted (post_json_statuses.lua)."""

    connections: int
    seconds: float
    statuses: dict[int, int]
    socket_errors: dict[str, int]  # connect, read, write, timeout
    p50_ms: float  # wrk's latency: every response, answered and shed alike
    p99_ms: float
    rss_mib: float
    stack: str
    probe: ProbeResult | None = None

    @property
    def responses(self) -> int:
        return sum(self.statuses.values())

    @property
    def answered_rps(self) -> float:
        return self.statuses.get(200, 0) / self.seconds if self.seconds else 0.0

    @property
    def shed(self) -> int:
        return self.statuses.get(503, 0)

    @property
    def shed_fraction(self) -> float:
        return self.shed / self.responses if self.responses else 0.0

    @property
    def other_errors(self) -> int:
        """Responses neither 200 nor 503, plus socket errors (connect, read, write, timeout)."""
        other = sum(count for status, count in self.statuses.items() if status not in (200, 503))
        return other + sum(self.socket_errors.values())

    def other_detail(self) -> str:
        parts = [f"{status}: {count}" for status, count in sorted(self.statuses.items()) if status not in (200, 503)]
        parts += [f"{kind} {count}" for kind, count in self.socket_errors.items() if count]
        return ", ".join(parts)


@dataclass
class StartResult:
    server: str
    workers: int
    ready_s: float
    command: str


@dataclass
class Report:
    profile: Profile
    command: str
    loads: list[LoadResult] = field(default_factory=list)
    bulk: list[LoadResult] = field(default_factory=list)
    starts: list[StartResult] = field(default_factory=list)
    ort_rows_per_s: dict[int, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    overload: list[OverloadResult] = field(default_factory=list)
    loop: str = "uvloop"
    http: str = "httptools"
    skipped: dict[str, str] = field(default_factory=dict)
    started_at: float = field(default_factory=time.time)
    elapsed_s: float = 0.0


class BenchError(RuntimeError):
    pass


def _relative(arg: str) -> str:
    with contextlib.suppress(ValueError):
        return str(Path(arg).relative_to(REPO_ROOT))
    return arg


# ---------------------------------------------------------------------------------------------- bodies


def digits_rows(n: int) -> list[list[int]]:
    """The first ``n`` rows of scikit-learn's digits (pixel values 0..16, integral: sent as JSON integers)."""
    data = load_digits().data
    return [[int(v) for v in row] for row in data[:n]]


def write_bodies(directory: Path) -> dict[str, Path]:
    bodies = {name: directory / name for name in ("single", "bulk", "bulk_npy")}
    bodies["single"].write_text(json.dumps({"instances": digits_rows(1)}))
    bodies["bulk"].write_text(json.dumps({"instances": digits_rows(BULK_ROWS)}))
    with bodies["bulk_npy"].open("wb") as file:
        np.save(file, np.asarray(digits_rows(BULK_ROWS), dtype=np.float32))
    return bodies


# --------------------------------------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("CALIBSERVE_", "PROMETHEUS_MULTIPROC"))}


def hide_modules(tmp: Path, loop: str, http: str) -> Path | None:
    """A directory whose uvloop / httptools modules raise ImportError, for a PYTHONPATH that makes uvicorn's
    "auto" choice (calibserve's) fall back to asyncio / h11; None when nothing needs hiding."""
    hidden = [module for module, wanted in (("uvloop", loop == "asyncio"), ("httptools", http == "h11")) if wanted]
    if not hidden:
        return None
    directory = tmp / f"hide-{'-'.join(hidden)}"
    directory.mkdir(exist_ok=True)
    for module in hidden:
        (directory / f"{module}.py").write_text(f"raise ImportError('{module} hidden by bench/run_bench.py')\n")
    return directory


def server_spec(
    name: str, workers: int, port: int, tmp: Path, loop: str = "uvloop", http: str = "httptools"
) -> ServerSpec:
    python = sys.executable
    env = base_env()
    if name in ("bare", "naive"):
        module = {"bare": "bare_asgi:app", "naive": "naive_fastapi:app"}[name]
        argv = [python, "-m", "uvicorn", "--app-dir", str(PEERS_DIR), module, "--host", "127.0.0.1"]
        argv += ["--port", str(port), "--workers", str(workers), "--log-level", "warning", "--no-access-log"]
        argv += ["--loop", loop, "--http", http]
        return ServerSpec(name, workers, argv, env, "/health/ready", loop=loop, http=http)
    if name == "litserve":
        argv = [python, str(PEERS_DIR / "litserve_onnx.py"), "--port", str(port), "--workers", str(workers)]
        argv += ["--max-batch-size", str(LITSERVE_MAX_BATCH), "--batch-timeout", str(LITSERVE_BATCH_TIMEOUT_S)]
        argv += ["--loop", loop, "--http", http]
        return ServerSpec(name, workers, argv, env, "/health", loop=loop, http=http)
    if name in ("calibserve", "calibserve-off"):
        hidden = hide_modules(tmp, loop, http)
        if hidden is not None:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(hidden), env.get("PYTHONPATH")]))
        data_dir = tmp / f"{name}-data-w{workers}"
        if name == "calibserve-off":
            env["CALIBSERVE_BATCH_MAX_ROWS"] = "1"
        env |= {
            "CALIBSERVE_WORKERS": str(workers),
            "CALIBSERVE_DATA_DIR": str(data_dir),
            "CALIBSERVE_LOG_PREDICTIONS": "true",
            # Keep every row: the harness counts them against wrk's answers (the default keeps 1,000,000).
            "CALIBSERVE_RETENTION_ROWS": "1000000000",
            "CALIBSERVE_LOG_LEVEL": "warning",
            "CALIBSERVE_HOST": "127.0.0.1",
        }
        argv = [str(VENV_BIN / "calibserve"), "serve", "--port", str(port)]
        return ServerSpec(
            name,
            workers,
            argv,
            env,
            "/health/ready",
            data_dir=data_dir,
            stop_grace_s=CALIBSERVE_STOP_GRACE_S,
            loop=loop,
            http=http,
        )
    raise ValueError(name)


@dataclass
class Running:
    spec: ServerSpec
    process: subprocess.Popen[bytes]
    base_url: str
    ready_s: float
    log_path: Path
    stop_s: float = 0.0


def _log_tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _http(
    method: str,
    url: str,
    body: bytes | None = None,
    timeout: float = 5.0,
    content_type: str = "application/json",
    accept: str | None = None,
) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method=method)
    if body is not None:
        request.add_header("Content-Type", content_type)
    if accept is not None:
        request.add_header("Accept", accept)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


def wait_ready(process: subprocess.Popen[bytes], url: str, started: float, log_path: Path) -> float:
    deadline = started + READY_TIMEOUT_S
    while time.perf_counter() < deadline:
        if process.poll() is not None:
            raise BenchError(f"server exited with status {process.returncode} before ready:\n{_log_tail(log_path)}")
        with contextlib.suppress(OSError):
            status, _ = _http("GET", url, timeout=1.0)
            if status == 200:
                return time.perf_counter() - started
        time.sleep(0.01)
    raise BenchError(f"not ready after {READY_TIMEOUT_S:.0f} s: {url}\n{_log_tail(log_path)}")


def _group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _alive(pid: int) -> bool:
    with contextlib.suppress(OSError, IndexError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return False


def stop(process: subprocess.Popen[bytes], grace_s: float) -> float:
    """Stop a server as a process manager would, and leave nothing behind. Returns the seconds it took.

    SIGTERM to the server's main process only (uvicorn's supervisor and LitServe's launcher stop their own
    workers), up to ``grace_s`` for it to exit, then SIGKILL to whatever is left of its process group (it was
    started in a new session) and to any of its descendants that left the group. Not SIGTERM to the whole
    group: LitServe's API servers then wait 30 s for answers from workers that are already gone, and on this
    machine that stalled every other process (fork included) for those 30 s.
    """
    started = time.monotonic()
    pgid = process.pid
    descendants = process_tree(pgid)[1:]
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace_s)
    deadline = time.monotonic() + 1.0  # its children may still be on their way out
    while _group_exists(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _group_exists(pgid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=5)
    for pid in descendants:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if os.getpgid(pid) != pgid and _alive(pid):
                os.kill(pid, signal.SIGKILL)
    return time.monotonic() - started


@contextlib.contextmanager
def running(spec: ServerSpec, port: int, log_dir: Path) -> Iterator[Running]:
    log_path = log_dir / f"{spec.name}-w{spec.workers}.log"
    base_url = f"http://127.0.0.1:{port}"
    started = time.perf_counter()
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            spec.argv,
            cwd=REPO_ROOT,
            env=spec.env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server: Running | None = None
    try:
        server = Running(
            spec, process, base_url, wait_ready(process, base_url + spec.ready_path, started, log_path), log_path
        )
        yield server
    finally:
        stop_s = stop(process, spec.stop_grace_s)
        if server is not None:
            server.stop_s = stop_s


def check_answer(server: Running, body: Path, rows: int, variant: BulkVariant | None = None) -> None:
    """One request before the load: 200, and for model servers the right label and shape."""
    content_type, accept = (variant.content_type, variant.accept) if variant else ("application/json", None)
    url = server.base_url + server.spec.predict_path
    status, payload = _http("POST", url, body.read_bytes(), timeout=30, content_type=content_type, accept=accept)
    if status != 200:
        raise BenchError(f"{server.spec.name}: POST answered {status}: {payload[:300]!r}")
    if server.spec.name == "bare":
        return
    if accept == NPZ:
        arrays = np.load(io.BytesIO(payload))
        if arrays["probabilities"].shape != (rows, 10) or str(arrays["label"][0]) != "0":
            raise BenchError(f"{server.spec.name}: unexpected .npz answer: {sorted(arrays.files)}")
        return
    predictions = json.loads(payload)["predictions"]
    first = predictions[0]
    if len(predictions) != rows or first["label"] != "0" or len(first["probabilities"]) != 10:
        raise BenchError(f"{server.spec.name}: unexpected answer: {payload[:300]!r}")


# ------------------------------------------------------------------------------------------ /proc, RSS


def process_tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, frontier = [root], [root]
    while frontier:
        kids = children.get(frontier.pop(), [])
        tree += kids
        frontier += kids
    return tree


def tree_rss_mib(root: int) -> tuple[float, int]:
    """Sum of VmRSS over ``root`` and its descendants (MiB), and how many processes that is."""
    total_kib, count = 0, 0
    for pid in process_tree(root):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kib += int(line.split()[1])
                    count += 1
                    break
    return total_kib / 1024, count


def _established_inodes(port: int) -> set[int]:
    inodes: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                parts = line.split()
                if parts[3] == "01" and int(parts[1].rsplit(":", 1)[1], 16) == port:  # ESTABLISHED, server side
                    inodes.add(int(parts[9]))
    return inodes


def _connections_by_process(root: int, port: int) -> dict[int, int]:
    """Established connections to ``port`` held by each of the server's processes (those holding any)."""
    inodes = _established_inodes(port)
    counts = {}
    for pid in process_tree(root):
        count = 0
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError, ValueError):
                    target = str(fd.readlink())
                    if target.startswith("socket:[") and int(target[8:-1]) in inodes:
                        count += 1
        if count:
            counts[pid] = count
    return counts


def connections_per_process(root: int, port: int) -> list[int]:
    """How the established connections to ``port`` are spread over the server's processes (most first)."""
    return sorted(_connections_by_process(root, port).values(), reverse=True)


def process_stack(pid: int) -> str | None:
    """The event loop and HTTP parser a server process runs, as "uvloop / httptools", from the extension
    modules mapped into it: uvicorn imports uvloop and httptools only when it uses them (explicitly or as
    "auto" finds them), and the same holds for calibserve's protocol (service/api/connections.py)."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return None
    loop = "uvloop" if "/uvloop/loop." in maps else "asyncio"
    http = "httptools" if "/httptools/parser/parser." in maps else "h11"
    return f"{loop} / {http}"


def serving_stack(root: int, port: int) -> str:
    """What the processes holding connections to ``port`` run ("a; b" if they differ, "?" if none held any)."""
    stacks = sorted({stack for pid in _connections_by_process(root, port) if (stack := process_stack(pid))})
    return "; ".join(stacks) or "?"


# ------------------------------------------------------------------------------------------------- wrk


def run_wrk(
    url: str,
    body: Path,
    connections: int,
    duration_s: int,
    root_pid: int | None,
    port: int = 0,
    variant: BulkVariant | None = None,
    script: Path = LUA_SCRIPT,
    threads: int = WRK_THREADS,
) -> dict[str, Any]:
    """One wrk run: the BENCH_JSON line of the wrk script, plus ``rss_mib``, ``processes``, ``split``
    (connections per server process) and ``stack`` (their event loop / HTTP parser) sampled near its end."""
    argv = ["wrk", "-t", str(min(threads, connections)), "-c", str(connections), "-d", f"{duration_s}s"]
    argv += ["--timeout", WRK_TIMEOUT, "--latency", "-s", str(script), url]
    env = os.environ | {"BENCH_BODY_FILE": str(body)}
    if variant is not None:
        env["BENCH_CONTENT_TYPE"] = variant.content_type
        if variant.accept:
            env["BENCH_ACCEPT"] = variant.accept
    process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    rss, processes, split, stack = 0.0, 0, [], "?"
    try:
        if root_pid is not None:
            time.sleep(max(0.0, duration_s - 0.4))
            if process.poll() is None:
                rss, processes = tree_rss_mib(root_pid)
                split = connections_per_process(root_pid, port)
                stack = serving_stack(root_pid, port)
        out, err = process.communicate(timeout=duration_s + 60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    if process.returncode != 0:
        raise BenchError(f"wrk exited with {process.returncode}: {err.strip()}")
    for line in out.splitlines():
        if line.startswith("BENCH_JSON "):
            result: dict[str, Any] = json.loads(line.removeprefix("BENCH_JSON "))
            result |= {"rss_mib": rss, "processes": processes, "split": split, "stack": stack}
            return result
    raise BenchError(f"no BENCH_JSON line in wrk's output:\n{out}\n{err}")


def load(
    server: Running,
    body: Path,
    rows: int,
    connections: int,
    duration_s: int,
    warmup_s: int,
    repeats: int = 1,
    variant: BulkVariant | None = None,
) -> tuple[LoadResult, int]:
    """Warm-up run (discarded), then ``repeats`` measured runs, the best (req/s) reported with the others' req/s.

    Also returns the 2xx responses of all runs. Errors are summed over the measured runs."""
    url = server.base_url + server.spec.predict_path
    port = int(server.base_url.rsplit(":", 1)[1])
    served = 0
    if warmup_s:
        warm = run_wrk(url, body, connections, warmup_s, None, variant=variant)
        served += warm["requests"] - warm["status"]
    runs = []
    for _ in range(repeats):
        raw = run_wrk(url, body, connections, duration_s, server.process.pid, port, variant)
        served += raw["requests"] - raw["status"]
        runs.append(raw)
    keys = ("status", "connect", "read", "write", "timeout")
    totals = {k: sum(run[k] for run in runs) for k in keys}
    best = max(runs, key=lambda run: run["requests"] / run["duration_us"])
    result = LoadResult(
        server=server.spec.name,
        workers=server.spec.workers,
        concurrency=connections,
        instances_per_request=rows,
        requests=best["requests"],
        seconds=best["duration_us"] / 1e6,
        p50_ms=best["p50_us"] / 1000,
        p99_ms=best["p99_us"] / 1000,
        errors=sum(totals.values()),
        error_detail=", ".join(f"{k} {v}" for k, v in totals.items() if v),
        rss_mib=best["rss_mib"],
        processes=best["processes"],
        connections=best["split"],
        other_rps=[run["requests"] / run["duration_us"] * 1e6 for run in runs if run is not best],
        variant=variant.name if variant else "JSON",
        stack="; ".join(sorted({run["stack"] for run in runs})),
    )
    return result, served


# ----------------------------------------------------------------------------------------- onnxruntime


def bench_onnxruntime(repeats: int) -> dict[int, float]:
    """Rows/s of the bare session (1 intra-op thread, both outputs, as calibserve's engine runs it)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(MODEL_FILE), options, providers=["CPUExecutionProvider"])
    rows = np.asarray(digits_rows(max(ORT_BATCHES)), dtype=np.float32)
    results: dict[int, float] = {}
    for batch in ORT_BATCHES:
        features: NDArray[np.float32] = np.ascontiguousarray(rows[:batch])
        feeds = {"features": features}
        for _ in range(20):
            session.run(["logits", "probabilities"], feeds)
        started = time.perf_counter()
        session.run(["logits", "probabilities"], feeds)
        iterations = max(3, int(0.25 / max(time.perf_counter() - started, 1e-6)))
        best = 0.0
        for _ in range(repeats):
            started = time.perf_counter()
            for _ in range(iterations):
                session.run(["logits", "probabilities"], feeds)
            best = max(best, batch * iterations / (time.perf_counter() - started))
        results[batch] = best
    return results


# --------------------------------------------------------------------------------------------- machine


def _first_line(path: str, prefix: str) -> str:
    with contextlib.suppress(OSError):
        for line in Path(path).read_text().splitlines():
            if line.startswith(prefix):
                return line.split(":", 1)[1].strip()
    return "?"


def _mem_total() -> str:
    kib = _first_line("/proc/meminfo", "MemTotal").split()[0]
    return f"{int(kib) / 1024**2:.1f} GiB" if kib.isdigit() else "?"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine_facts(report: Report) -> list[tuple[str, str]]:
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    wrk_lines = (wrk_version.stdout + wrk_version.stderr).splitlines()
    wrk_line = wrk_lines[0] if wrk_lines else "?"
    packages = ["calibserve", "fastapi", "starlette", "uvicorn", "uvloop", "httptools", "pydantic", "pydantic-core"]
    packages += ["onnxruntime", "numpy", "scikit-learn", "litserve", "pyzmq"]
    load1, load5, _ = os.getloadavg()
    return [
        ("CPU", _first_line("/proc/cpuinfo", "model name")),
        ("cores", f"{os.cpu_count()} logical, {len(os.sched_getaffinity(0))} usable by this process"),
        ("memory", _mem_total()),
        ("load average at start", f"{load1:.2f} (1 min), {load5:.2f} (5 min)"),
        ("OS", f"{platform.system()} {platform.release()}"),
        ("Python", f"{platform.python_implementation()} {platform.python_version()}"),
        ("packages", ", ".join(f"{p} {_version(p)}" for p in packages)),
        (
            "event loop / HTTP parser",
            f"{report.loop} / {report.http} for every server (`--loop`, `--http`); what "
            "each ran is in the loop / http columns",
        ),
        ("wrk", wrk_line.split(" Copyright")[0]),
    ]


# --------------------------------------------------------------------------------------------- tables


def _table(header: list[str], rows: list[list[str]], left: tuple[int, ...] = (0,)) -> list[str]:
    """Markdown table; the columns in ``left`` left-aligned, the others (numbers) right-aligned."""
    rule = "|".join("---" if i in left else "---:" for i in range(len(header)))
    lines = ["| " + " | ".join(header) + " |", "|" + rule + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _fmt_ratio(r: float) -> str:
    return f"{r:.2f}" if r >= 0.1 else f"{r:.3f}"


def _ratio(a: float | None, b: float | None) -> str:
    return f"{_fmt_ratio(a / b)}x" if a and b else "n/a"


def _ratio_range(a: LoadResult | None, b: LoadResult | None, per_instance: bool = False) -> str:
    """min-max of the ratio over every pairing of the measured runs (where a point was measured twice)."""
    if a is None or b is None or not (a.other_rps or b.other_rps):
        return ""
    scale_a = a.instances_per_request if per_instance else 1
    scale_b = b.instances_per_request if per_instance else 1
    ratios = [x * scale_a / (y * scale_b) for x in [a.rps, *a.other_rps] for y in [b.rps, *b.other_rps] if y]
    return f"{_fmt_ratio(min(ratios))}-{_fmt_ratio(max(ratios))}x" if ratios else ""


def _rps(result: LoadResult | None) -> float | None:
    return result.rps if result else None


def _ips(result: LoadResult | None) -> float | None:
    return result.instances_per_s if result else None


def _find(results: list[LoadResult], server: str, workers: int, concurrency: int) -> LoadResult | None:
    for result in results:
        if (result.server, result.workers, result.concurrency) == (server, workers, concurrency):
            return result
    return None


def _bulk(report: Report, server: str, workers: int, variant: str) -> LoadResult | None:
    return next(
        (r for r in report.bulk if (r.server, r.workers, r.variant) == (server, workers, variant)),
        None,
    )


def _met(value: float | None, target: float, at_least: bool = True) -> str:
    if value is None:
        return "n/a"
    return "yes" if (value >= target if at_least else value <= target) else "**no**"


def target_rows(report: Report) -> list[list[str]]:
    """The issue's targets, each computed from this run only (1 worker, as the issue states them)."""
    cal = _find(report.loads, "calibserve", 1, 32)
    naive = _find(report.loads, "naive", 1, 32)
    lit = _find(report.loads, "litserve", 1, 32)
    off = _find(report.loads, "calibserve-off", 1, 32)
    rows: list[list[str]] = []
    for peer, result, target in ((TITLES["naive"], naive, 2.0), (TITLES["litserve"], lit, 1.2)):
        ratio = _rps(cal) / _rps(result) if _rps(cal) and _rps(result) else None  # type: ignore[operator]
        rows.append(
            [
                "single-instance req/s, c=32, 1w",
                f"{_rps(cal) or 0:,.0f}",
                f"{peer}: {_rps(result) or 0:,.0f}",
                _ratio(_rps(cal), _rps(result)),
                f">= {target:.1f}x",
                _met(ratio, target),
            ]
        )
    rows.append(
        [
            "micro-batching on / off, c=32, 1w",
            f"{_rps(cal) or 0:,.0f}",
            f"{TITLES['calibserve-off']}: {_rps(off) or 0:,.0f}",
            _ratio(_rps(cal), _rps(off)),
            "(no target)",
            "",
        ]
    )
    p99 = cal.p99_ms if cal else None
    rows.append(["p99 latency, c=32, 1w", f"{p99 or 0:.2f} ms", "", "", "<= 20 ms", _met(p99, 20.0, at_least=False)])
    naive_bulk = _ips(_bulk(report, "naive", 1, "JSON"))
    json_bulk = _ips(_bulk(report, "calibserve", 1, "JSON"))
    rows.append(
        [
            "bulk JSON instances/s, 1w",
            f"{json_bulk or 0:,.0f}",
            f"{TITLES['naive']}: {naive_bulk or 0:,.0f}",
            _ratio(json_bulk, naive_bulk),
            ">= 5.0x",
            _met(json_bulk / naive_bulk if json_bulk and naive_bulk else None, 5.0),
        ]
    )
    binary = _ips(_bulk(report, "calibserve", 1, BULK_VARIANTS["calibserve"][1].name))
    ort_rate = report.ort_rows_per_s.get(BULK_ROWS)
    rows.append(
        [
            "binary path instances/s, 1w",
            f"{binary or 0:,.0f}",
            f"onnxruntime alone, batch {BULK_ROWS}: {ort_rate or 0:,.0f} rows/s",
            _ratio(binary, ort_rate),
            ">= 0.4x",
            _met(binary / ort_rate if binary and ort_rate else None, 0.4),
        ]
    )
    start = next((s.ready_s for s in report.starts if (s.server, s.workers) == ("calibserve", 1)), None)
    rows.append(["process start to ready, 1w", f"{start or 0:.2f} s", "", "", "<= 1.5 s", _met(start, 1.5, False)])
    rss = [r.rss_mib for r in report.loads + report.bulk if r.server == "calibserve" and r.workers == 1]
    peak = max(rss) if rss else None
    rows.append(
        [
            "RSS under load, 1 worker (peak)",
            f"{peak or 0:.0f} MiB",
            "",
            "",
            "<= 150 MB (143 MiB)",
            _met(peak, 143, False),
        ]
    )
    return rows


def _load_row(result: LoadResult, bulk: bool = False) -> list[str]:
    errors = str(result.errors) + (f" ({result.error_detail})" if result.error_detail else "")
    fmt = "{:,.1f}" if bulk else "{:,.0f}"
    others = ", ".join(fmt.format(v) for v in result.other_rps)
    cells = [
        TITLES[result.server],
        str(result.concurrency),
        fmt.format(result.rps) + (f" ({others})" if others else ""),
    ]
    if bulk:
        others = ", ".join(f"{v * result.instances_per_request:,.0f}" for v in result.other_rps)
        cells.append(f"{result.instances_per_s:,.0f}" + (f" ({others})" if others else ""))
    split = "+".join(map(str, result.connections)) or "?"
    cells += [
        f"{result.p50_ms:.2f}",
        f"{result.p99_ms:.2f}",
        errors,
        f"{result.rss_mib:.0f} ({result.processes})",
        split,
        result.stack,
    ]
    return cells


def render_overload(report: Report) -> list[str]:
    if not report.overload:
        return []
    out = [f"## Overload: calibserve, 1 worker, {OVERLOAD_CONNECTIONS:,} connections", ""]
    settings = ", ".join(
        f"`{variable}={value}`" + (" (from the environment)" if passed else " (default)")
        for variable, value, passed in overload_settings()
    )
    out += [
        f"- calibserve as in (4b), {settings}; single-instance requests through `bench/wrk/post_json_statuses.lua` "
        f"(counts every response status), `wrk -t {OVERLOAD_WRK_THREADS}` for both rows, {report.profile.duration_s} s "
        f"each, after a {report.profile.warmup_s} s warm-up at {OVERLOAD_BASELINE} connections.",
        "- answered: 200 responses per second; shed: 503 responses / all responses; other errors: responses "
        "neither 200 nor 503, plus socket errors (connect, read, write, timeout).",
        "- Latency is wrk's, over **every** response, answered and shed alike (wrk's Lua API cannot tell which "
        "request a response answers). The *probe* columns are one more client beside wrk's connections, sending "
        "the same request back to back on its own keep-alive connection and timing each: latency of its answered "
        "(200) and shed (503) requests apart.",
        "",
    ]
    header = ["connections", "answered req/s", "responses", "503 (shed)", "shed fraction", "other errors"]
    header += ["p50 ms (all)", "p99 ms (all)", "probe: answered n", "probe: answered p50 / p99 ms"]
    header += ["probe: shed n", "probe: shed p50 ms", "RSS MiB", "loop / http"]
    rows = [
        [
            f"{r.connections:,}",
            f"{r.answered_rps:,.0f}",
            f"{r.responses:,}",
            f"{r.shed:,}",
            f"{r.shed_fraction:.1%}",
            str(r.other_errors) + (f" ({r.other_detail()})" if r.other_errors else ""),
            f"{r.p50_ms:.2f}",
            f"{r.p99_ms:.2f}",
            str(len(r.probe.answered_ms)) if r.probe else "-",
            f"{r.probe.answered(50):.1f} / {r.probe.answered(99):.1f}" if r.probe else "-",
            str(len(r.probe.shed_ms)) if r.probe else "-",
            f"{r.probe.shed(50):.1f}" if r.probe else "-",
            f"{r.rss_mib:.0f}",
            r.stack,
        ]
        for r in report.overload
    ]
    out += _table(header, rows, left=(len(header) - 1,))
    by_connections = {r.connections: r for r in report.overload}
    base, high = by_connections.get(OVERLOAD_BASELINE), by_connections.get(OVERLOAD_CONNECTIONS)
    if base and high:
        out += [
            "",
            f"Answered req/s at {OVERLOAD_CONNECTIONS:,} connections / at {OVERLOAD_BASELINE}: "
            f"{_ratio(high.answered_rps, base.answered_rps)}.",
        ]
    return [*out, ""]


def render_markdown(report: Report, facts: list[tuple[str, str]]) -> str:
    profile = report.profile
    out = ["# Benchmark: calibserve against its peers", ""]
    when = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(report.started_at))
    out += [
        f"Generated by `bench/run_bench.py` ({profile.name} profile) on {when}; total runtime "
        f"{report.elapsed_s:.0f} s.",
        "",
    ]
    out += ["```", report.command, "```", ""]
    out += ["## Machine", ""]
    out += [f"- **{name}**: {value}" for name, value in facts]
    out += ["", "## Method", ""]
    out += [
        f"- Load generator: wrk, {WRK_THREADS} thread, keep-alive connections = concurrency, `--latency`, "
        f"`--timeout {WRK_TIMEOUT}`, POST with a JSON body via `bench/wrk/post_json.lua`; "
        f"{profile.warmup_s} s warm-up run (discarded), then {profile.duration_s} s measured, per concurrency"
        + (
            f"; at concurrency {', '.join(str(c) for c in profile.repeats_at if c in profile.concurrencies)} and for "
            "bulk two measured runs: the table shows the better one, the other's req/s in brackets, errors summed."
            if profile.repeats_at
            else "."
        ),
        "- conns/process: established connections to the server port per server process, read from /proc at the "
        "RSS sample. uvicorn's workers (and LitServe's API servers) share one listening socket and keep-alive "
        "connections stay where they were accepted, so with 2 workers the split can be lopsided (e.g. 4+0 for "
        "bulk: one worker idle); it is what the kernel and the event loops did, not something the harness sets.",
        '- Single-instance body: `{"instances": [load_digits().data[0]]}` (64 integers, a "0"); every server is '
        "checked once with it before the load (200, label 0, 10 class probabilities).",
        f"- Bulk body: the first {BULK_ROWS} digits rows in one request, concurrency {BULK_CONCURRENCY}, "
        f"{profile.bulk_duration_s} s measured after a {profile.warmup_s} s warm-up; "
        f"instances/s = req/s x {BULK_ROWS}.",
        "- Errors: wrk's non-2xx count (it counts statuses >= 400) plus socket errors (connect, read, write, timeout).",
        "- RSS: sum of VmRSS over the server's process tree (/proc), sampled ~0.4 s before the end of each measured "
        "run, MiB (number of processes in brackets). Forked/spawned workers each count in full (RSS, not PSS).",
        "- Workers: (1) and (2) `uvicorn --workers N`; (3) LitServe `workers_per_device=N` inference workers on one "
        f"CPU device plus `num_api_servers=N` HTTP server processes, `max_batch_size={LITSERVE_MAX_BATCH}`, "
        f"`batch_timeout={LITSERVE_BATCH_TIMEOUT_S}` s, default queues (fast_queue off); (4) `CALIBSERVE_WORKERS=N`. "
        "All model servers run onnxruntime with 1 intra-op thread. All log at level warning (no access log).",
        f"- Event loop / HTTP parser: every server is started on {report.loop} / {report.http} (`--loop`, `--http`): "
        "(1) and (2) with `uvicorn --loop --http`, (3) with the same uvicorn options through LitServe's `run()`, "
        "(4) through uvicorn's automatic choice (uvloop and httptools when installed; for asyncio / h11 the harness "
        "hides them from it). The loop / http column is what the server processes holding the connections "
        "actually ran, read from /proc/PID/maps (the uvloop and httptools extension modules mapped or not) at the "
        "RSS sample of each measured run.",
        "- calibserve: `CALIBSERVE_LOG_PREDICTIONS=true` (every prediction is written to its SQLite log), "
        "`CALIBSERVE_RETENTION_ROWS=1000000000` (so the notes below can count every row), "
        "`CALIBSERVE_DATA_DIR` in a fresh temporary directory per server and worker count, everything else default; "
        "(4a) adds `CALIBSERVE_BATCH_MAX_ROWS=1` (micro-batching off: one onnxruntime call per request).",
        f"- Binary bulk path: the same {BULK_ROWS} rows as a float32 `.npy` body (`Content-Type: application/x-npy`), "
        "answered as `.npz` (`Accept: application/x-npz`) with every field of the JSON answer.",
        "- Start to ready: from spawning the process until the first 200 from its ready path "
        "(`/health/ready`; LitServe: `/health`), polled every 10 ms.",
        "- The machine is shared and noisy and wrk shares its cores with the server: differences under ~10% are "
        "within run-to-run noise.",
    ]
    if report.skipped:
        out += [f"- Skipped: {TITLES[name]}: {why}" for name, why in report.skipped.items()]
    header = ["server", "conc", "req/s", "p50 ms", "p99 ms", "errors", "RSS MiB (procs)", "conns/process"]
    header.append("loop / http")
    for workers in WORKER_COUNTS:
        out += ["", f"## Single-instance requests, {workers} worker{'s' if workers > 1 else ''}", ""]
        for concurrency in profile.concurrencies:
            rows = [
                _load_row(r) for name in SERVERS if (r := _find(report.loads, name, workers, concurrency)) is not None
            ]
            out += [f"### concurrency {concurrency}", "", *_table(header, rows, left=(0, len(header) - 1)), ""]
    out += [f"## Bulk: {BULK_ROWS}-instance requests, concurrency {BULK_CONCURRENCY}", ""]
    bulk_header = ["server", "body", "workers", "req/s", "instances/s", "p50 ms", "p99 ms", "errors", "RSS MiB (procs)"]
    bulk_header += ["conns/process", "loop / http"]
    bulk_rows = []
    for result in report.bulk:
        row = _load_row(result, bulk=True)
        bulk_rows.append([row[0], result.variant, str(result.workers), *row[2:]])
    out += [*_table(bulk_header, bulk_rows, left=(0, 1, len(bulk_header) - 1)), ""]
    out += render_overload(report)
    out += ["## onnxruntime alone, in-process (1 intra-op thread, best of repeats)", ""]
    out += _table(["batch rows", "rows/s"], [[str(b), f"{v:,.0f}"] for b, v in sorted(report.ort_rows_per_s.items())])
    out += ["", "## Process start to ready", ""]
    out += _table(
        ["server", "workers", "seconds", "command"],
        [[TITLES[s.server], str(s.workers), f"{s.ready_s:.2f}", f"`{s.command}`"] for s in report.starts],
        left=(0, 3),
    )
    out += ["", "## Targets (issue 6), from this run", ""]
    out += _table(["measure", "calibserve", "against", "ratio", "target", "met"], target_rows(report), left=(0, 2))
    out += ["", "## Ratios (calibserve / peer)", ""]
    ratio_rows = []
    for workers in WORKER_COUNTS:
        cal = _find(report.loads, "calibserve", workers, 32)
        for peer in ("naive", "litserve", "calibserve-off", "bare"):
            other = _find(report.loads, peer, workers, 32)
            ratio_rows.append(
                [
                    f"req/s at concurrency 32, {workers}w",
                    TITLES[peer],
                    _ratio(_rps(cal), _rps(other)),
                    _ratio_range(cal, other),
                ]
            )
    for workers in WORKER_COUNTS:
        naive_bulk = _bulk(report, "naive", workers, "JSON")
        for variant in BULK_VARIANTS["calibserve"]:
            cal_bulk = _bulk(report, "calibserve", workers, variant.name)
            ratio_rows.append(
                [
                    f"bulk instances/s ({variant.name}), {workers}w",
                    TITLES["naive"] + " (JSON)",
                    _ratio(_ips(cal_bulk), _ips(naive_bulk)),
                    _ratio_range(cal_bulk, naive_bulk, per_instance=True),
                ]
            )
            ratio_rows.append(
                [
                    f"bulk instances/s ({variant.name}), {workers}w",
                    f"onnxruntime alone, batch {BULK_ROWS} rows/s",
                    _ratio(_ips(cal_bulk), report.ort_rows_per_s.get(BULK_ROWS)),
                    "",
                ]
            )
    out += _table(
        ["measure", "peer", "calibserve / peer (best runs)", "over all run pairings"], ratio_rows, left=(0, 1)
    )
    out += ["", "## Memory under load (RSS of the process tree, MiB, min-max over the measured runs)", ""]
    memory_rows = []
    for name in SERVERS:
        cells = [TITLES[name]]
        for workers in WORKER_COUNTS:
            rss = [r.rss_mib for r in report.loads + report.bulk if r.server == name and r.workers == workers]
            cells.append(f"{min(rss):.0f}-{max(rss):.0f}" if rss else "n/a")
        memory_rows.append(cells)
    out += _table(["server", *[f"{w} worker{'s' if w > 1 else ''}" for w in WORKER_COUNTS]], memory_rows)
    if report.notes:
        out += ["", "## Notes", "", *[f"- {note}" for note in report.notes]]
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------------------------- main


def calibserve_logged_rows(data_dir: Path | None) -> int | None:
    path = data_dir / "predictions.sqlite" if data_dir else None
    if path is None or not path.exists():
        return None
    with contextlib.closing(sqlite3.connect(path)) as db:
        return int(db.execute("SELECT COUNT(*) FROM predictions").fetchone()[0])


def check_stack(report: Report, spec: ServerSpec, result: LoadResult | OverloadResult, what: str) -> None:
    """Note (and print) a run whose server did not run the requested event loop and HTTP parser."""
    wanted = f"{spec.loop} / {spec.http}"
    if result.stack != wanted:
        message = f"{what}: ran {result.stack}, not the requested {wanted}"
        print(f"   WARNING: {message}", file=sys.stderr, flush=True)
        report.notes.append(message + ".")


def bench_server(name: str, workers: int, report: Report, bodies: dict[str, Path], tmp: Path) -> None:
    profile = report.profile
    single = bodies["single"]
    port = free_port()
    spec = server_spec(name, workers, port, tmp, report.loop, report.http)
    print(f"\n== {TITLES[name]}, {workers} worker(s): {spec.describe()}", flush=True)
    served_instances = 0
    in_flight_bound = 0  # instances wrk may have left in flight (answered, not counted) when each run stopped
    with running(spec, port, tmp) as server:
        report.starts.append(StartResult(name, workers, server.ready_s, spec.describe()))
        print(f"   ready after {server.ready_s:.2f} s", flush=True)
        check_answer(server, single, 1)
        served_instances += 1
        for concurrency in profile.concurrencies:
            repeats = 2 if concurrency in profile.repeats_at else 1
            result, served = load(server, single, 1, concurrency, profile.duration_s, profile.warmup_s, repeats)
            served_instances += served
            in_flight_bound += concurrency * (repeats + (1 if profile.warmup_s else 0))
            report.loads.append(result)
            print(
                f"   c={concurrency:<4} {result.rps:>9,.0f} req/s  p50 {result.p50_ms:7.2f} ms  "
                f"p99 {result.p99_ms:7.2f} ms  errors {result.errors:<5} RSS {result.rss_mib:6.0f} MiB "
                f"({result.processes} procs)  conns {'+'.join(map(str, result.connections))}  {result.stack}"
                + (f"  other run {result.other_rps[0]:,.0f} req/s" if result.other_rps else ""),
                flush=True,
            )
            check_stack(report, spec, result, f"{TITLES[name]} {workers}w c={concurrency}")
        for variant in BULK_VARIANTS.get(name, ()):
            bulk = bodies[variant.body]
            check_answer(server, bulk, BULK_ROWS, variant)
            served_instances += BULK_ROWS
            repeats = 2 if BULK_CONCURRENCY in profile.repeats_at else 1
            result, served = load(
                server, bulk, BULK_ROWS, BULK_CONCURRENCY, profile.bulk_duration_s, profile.warmup_s, repeats, variant
            )
            served_instances += served * BULK_ROWS
            in_flight_bound += BULK_CONCURRENCY * BULK_ROWS * (repeats + (1 if profile.warmup_s else 0))
            report.bulk.append(result)
            check_stack(report, spec, result, f"{TITLES[name]} {workers}w bulk {variant.name}")
            print(
                f"   bulk {variant.name} c={BULK_CONCURRENCY} {result.rps:>7,.1f} req/s = "
                f"{result.instances_per_s:>9,.0f} instances/s  p50 {result.p50_ms:7.2f} ms  p99 {result.p99_ms:7.2f} ms"
                f"  errors {result.errors}  conns {'+'.join(map(str, result.connections))}"
                + (f"  other run {result.other_rps[0] * BULK_ROWS:,.0f} instances/s" if result.other_rps else ""),
                flush=True,
            )
    print(f"   stopped in {server.stop_s:.2f} s", flush=True)
    if name.startswith("calibserve"):
        logged = calibserve_logged_rows(spec.data_dir)
        if logged is None:
            verdict = "no prediction log found"
        elif served_instances <= logged <= served_instances + in_flight_bound:
            verdict = (
                f"{logged:,} rows in its prediction log after a graceful stop (the {logged - served_instances:,} "
                f"extra are requests in flight when wrk stopped, at most {in_flight_bound:,}): nothing dropped"
            )
        else:
            verdict = f"but {logged:,} rows in its prediction log after a graceful stop: rows missing or extra"
        report.notes.append(
            f"{TITLES[name]} {workers}w: {served_instances:,} predictions counted by wrk as 2xx; {verdict}."
        )


def overload_settings() -> list[tuple[str, str, bool]]:
    """(variable, value in force, passed on from the environment) for the overload settings."""
    from service.settings import ENV_PREFIX, Settings

    rows = []
    for name in OVERLOAD_SETTINGS:
        variable = ENV_PREFIX + name
        if variable in os.environ:
            rows.append((variable, os.environ[variable], True))
        else:
            field_info = Settings.model_fields.get(name.lower())
            rows.append((variable, str(field_info.default) if field_info else "?", False))
    return rows


def bench_overload(report: Report, body: Path, tmp: Path) -> None:
    """calibserve, 1 worker, single-instance requests at OVERLOAD_BASELINE and then OVERLOAD_CONNECTIONS
    connections, every response status counted: what it answers, what it sheds (503) and what fails."""
    profile = report.profile
    port = free_port()
    spec = server_spec("calibserve", 1, port, tmp, report.loop, report.http)
    data_dir = tmp / "calibserve-overload-data"
    env = spec.env | {"CALIBSERVE_DATA_DIR": str(data_dir)}
    env |= {variable: value for variable, value, passed in overload_settings() if passed}
    spec = replace(spec, name="calibserve-overload", env=env, data_dir=data_dir)
    print(f"\n== {TITLES[spec.name]}: {spec.describe()}", flush=True)
    with running(spec, port, tmp) as server:
        print(f"   ready after {server.ready_s:.2f} s", flush=True)
        check_answer(server, body, 1)
        url = server.base_url + spec.predict_path
        wrk_options: dict[str, Any] = {"script": LUA_STATUS_SCRIPT, "threads": OVERLOAD_WRK_THREADS}
        if profile.warmup_s:
            run_wrk(url, body, OVERLOAD_BASELINE, profile.warmup_s, None, **wrk_options)
        for connections in (OVERLOAD_BASELINE, OVERLOAD_CONNECTIONS):
            with Probe("127.0.0.1", port, spec.predict_path, body.read_bytes()) as probe:
                raw = run_wrk(url, body, connections, profile.duration_s, server.process.pid, port, **wrk_options)
            result = OverloadResult(
                connections=connections,
                seconds=raw["duration_us"] / 1e6,
                statuses={int(status): int(count) for status, count in raw["statuses"].items()},
                socket_errors={kind: int(raw[kind]) for kind in ("connect", "read", "write", "timeout")},
                p50_ms=raw["p50_us"] / 1000,
                p99_ms=raw["p99_us"] / 1000,
                rss_mib=raw["rss_mib"],
                stack=raw["stack"],
                probe=probe.result,
            )
            report.overload.append(result)
            print(
                f"   c={connections:<5} answered {result.answered_rps:>8,.0f} req/s  shed {result.shed_fraction:6.1%} "
                f"({result.shed:,} x 503)  other errors {result.other_errors:<5} p50 {result.p50_ms:7.2f} ms  "
                f"p99 {result.p99_ms:7.2f} ms (all responses)  RSS {result.rss_mib:6.0f} MiB  {result.stack}",
                flush=True,
            )
            print(
                f"   probe: {len(probe.result.answered_ms)} answered, p50 {probe.result.answered(50):.1f} ms, "
                f"p99 {probe.result.answered(99):.1f} ms; {len(probe.result.shed_ms)} shed, p50 "
                f"{probe.result.shed(50):.1f} ms; {probe.result.other} other",
                flush=True,
            )
            check_stack(report, spec, result, f"{TITLES[spec.name]} c={connections}")
    print(f"   stopped in {server.stop_s:.2f} s", flush=True)


def raise_open_file_limit() -> int:
    """wrk holds a descriptor per connection (1,024 in the overload scenario): soft limit up to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def litserve_available() -> str | None:
    try:
        import litserve  # type: ignore[import-untyped]  # noqa: F401
    except ImportError as exc:
        return f"litserve is not importable ({exc}); install with `.venv/bin/pip install -e '.[bench]'`"
    return None


def print_summary(report: Report) -> None:
    header = (
        f"{'server':<20} {'w':>2} {'conc':>5} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'RSS MiB':>8}"
    )
    print("\n" + header + "\n" + "-" * len(header))
    for result in sorted(report.loads, key=lambda r: (r.workers, r.concurrency, SERVERS.index(r.server))):
        print(
            f"{TITLES[result.server]:<20} {result.workers:>2} {result.concurrency:>5} {result.rps:>10,.0f} "
            f"{result.p50_ms:>8.2f} {result.p99_ms:>8.2f} {result.errors:>7} {result.rss_mib:>8.0f}"
        )
    for result in report.bulk:
        print(
            f"{TITLES[result.server] + ' bulk':<20} {result.workers:>2} {result.concurrency:>5} "
            f"{result.instances_per_s:>10,.0f} inst/s  p50 {result.p50_ms:.1f} ms  p99 {result.p99_ms:.1f} ms"
        )
    for batch, rate in sorted(report.ort_rows_per_s.items()):
        print(f"onnxruntime alone, batch {batch:<5} {rate:>12,.0f} rows/s")
    for over in report.overload:
        print(
            f"{'overload':<20} {1:>2} {over.connections:>5} {over.answered_rps:>10,.0f} answered req/s, "
            f"shed {over.shed_fraction:.1%}, other errors {over.other_errors}, p99 {over.p99_ms:.1f} ms (all)"
        )


def _relative_to_cwd(path: str) -> str:
    """``.venv/bin/python`` as typed (not the interpreter it links to), relative where under the cwd."""
    absolute = Path.cwd() / path  # an absolute ``path`` replaces the cwd; no resolve(): keep the venv's link
    with contextlib.suppress(ValueError):
        return str(absolute.relative_to(Path.cwd()))
    return str(absolute)


def _raise_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="concurrency 8 and 32 only, shorter runs (~3 min)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="markdown report (default: %(default)s)")
    parser.add_argument("--servers", default=",".join(SERVERS), help="comma-separated subset of " + ", ".join(SERVERS))
    parser.add_argument("--loop", choices=LOOPS, default=LOOPS[0], help="event loop of every server (%(default)s)")
    parser.add_argument("--http", choices=PARSERS, default=PARSERS[0], help="HTTP parser of every server (%(default)s)")
    parser.add_argument(
        "--no-overload", action="store_true", help=f"skip the overload scenario ({OVERLOAD_CONNECTIONS:,} connections)"
    )
    args = parser.parse_args(argv)
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    unknown = sorted(set(servers) - set(SERVERS))
    if unknown:
        parser.error(f"unknown servers: {', '.join(unknown)}")
    if shutil.which("wrk") is None:
        print("run_bench: wrk is not on PATH (apt-get install wrk)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    command = shlex.join([_relative_to_cwd(sys.executable), _relative_to_cwd(sys.argv[0]), *sys.argv[1:]])
    report = Report(profile=QUICK if args.quick else FULL, command=command, loop=args.loop, http=args.http)
    facts = machine_facts(report)
    if not args.no_overload and (limit := raise_open_file_limit()) < OVERLOAD_CONNECTIONS + 64:
        print(f"run_bench: the open-file limit ({limit}) is too low for wrk at {OVERLOAD_CONNECTIONS} connections")
        return 2
    started = time.perf_counter()
    if "litserve" in servers and (why := litserve_available()):
        report.skipped["litserve"] = why
        servers.remove("litserve")
        print(f"skipping LitServe: {why}", file=sys.stderr)
    print("onnxruntime alone ...", flush=True)
    report.ort_rows_per_s = bench_onnxruntime(report.profile.ort_repeats)
    for batch, rate in report.ort_rows_per_s.items():
        print(f"   batch {batch:<5} {rate:>12,.0f} rows/s", flush=True)
    try:
        with tempfile.TemporaryDirectory(prefix="calibserve-bench-") as tmp_name:
            tmp = Path(tmp_name)
            bodies = write_bodies(tmp)
            for workers in WORKER_COUNTS:
                for name in servers:
                    try:
                        bench_server(name, workers, report, bodies, tmp)
                    except BenchError as exc:  # this server is stopped already; go on with the others
                        print(f"   FAILED: {exc}", file=sys.stderr, flush=True)
                        report.notes.append(f"{TITLES[name]}, {workers}w failed: {str(exc).splitlines()[0]}")
            if not args.no_overload:
                try:
                    bench_overload(report, bodies["single"], tmp)
                except BenchError as exc:
                    print(f"   FAILED: {exc}", file=sys.stderr, flush=True)
                    report.notes.append(f"The overload scenario failed: {str(exc).splitlines()[0]}")
    except KeyboardInterrupt:
        print("\ninterrupted: servers stopped, partial results below", file=sys.stderr)
        report.notes.append("The run was interrupted: partial results.")
    report.elapsed_s = time.perf_counter() - started
    print_summary(report)
    args.output.write_text(render_markdown(report, facts))
    print(f"\nwrote {os.path.relpath(args.output, Path.cwd())} in {report.elapsed_s:.0f} s total")
    return 0


if __name__ == "__main__":
    sys.exit(main())
