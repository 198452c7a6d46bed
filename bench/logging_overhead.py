"""What does the prediction log cost? Throughput of `calibserve serve` with logging on and off.

    python bench/logging_overhead.py [--requests 3000] [--concurrency 16] [--rounds 2]

Starts two real servers (``CALIBSERVE_LOG_PREDICTIONS=true`` and ``false``, each with its own temporary data
directory, access log off), warms both up, then drives them in alternating rounds (on, off, on, off, ...)
with a fixed number of single-instance ``POST /v1/predict`` requests from ``--concurrency`` threads, each
with its own keep-alive ``httpx.Client``. Prints requests/s and latency per round, the median of each mode,
the ratio (logging on / off) and whether it is within 15%. Figures only, no assertions: the client runs on
the same machine, so compare the two modes with each other, not with other machines.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack, closing
from dataclasses import dataclass
from pathlib import Path

import httpx

from service.api.schemas import DIGIT_ONE, DIGIT_ZERO
from service.monitoring.monitor import LOG_FILE

REPO_ROOT = Path(__file__).resolve().parent.parent
BODIES = [{"instances": [DIGIT_ZERO]}, {"instances": [DIGIT_ONE]}]


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    url: str
    data_dir: Path


@dataclass
class Round:
    mode: str
    requests: int
    seconds: float
    latencies: list[float]

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start(name: str, log_predictions: bool, data_dir: Path) -> Server:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALIBSERVE_")}
    env.update(
        CALIBSERVE_LOG_PREDICTIONS="true" if log_predictions else "false",
        CALIBSERVE_DATA_DIR=str(data_dir),
        CALIBSERVE_LOG_LEVEL="warning",  # no access log line per request
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve", "--port", str(port)],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{name}: calibserve serve exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/health/ready", timeout=2.0).status_code == 200:
                return Server(name, process, url, data_dir)
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    process.kill()
    raise SystemExit(f"{name}: not ready after 60 s")


def stop(server: Server) -> int:
    server.process.send_signal(signal.SIGTERM)
    try:
        return server.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.process.kill()
        return server.process.wait()


def drive(server: Server, requests: int, concurrency: int) -> Round:
    """``requests`` predictions from ``concurrency`` threads (keep-alive clients), all started together."""
    counter = iter(range(requests))
    lock = threading.Lock()
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors: list[str] = []
    barrier = threading.Barrier(concurrency + 1)

    def worker(slot: int) -> None:
        with httpx.Client(base_url=server.url, timeout=30.0) as client:
            client.get("/health/live")  # open the connection before the clock starts
            barrier.wait()
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                sent = time.perf_counter()
                response = client.post("/v1/predict", json=BODIES[i % 2])
                latencies[slot].append(time.perf_counter() - sent)
                if response.status_code != 200:
                    errors.append(f"{response.status_code}: {response.text[:200]}")

    threads = [threading.Thread(target=worker, args=(slot,)) for slot in range(concurrency)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    if errors:
        raise SystemExit(f"{server.name}: {len(errors)} failed request(s), first: {errors[0]}")
    return Round(server.name, requests, seconds, [x for chunk in latencies for x in chunk])


def logged_rows(data_dir: Path) -> int | None:
    path = data_dir / LOG_FILE
    if not path.exists():
        return None
    with closing(sqlite3.connect(path)) as connection:
        count: int = connection.execute("SELECT COUNT(*) FROM predictions").fetchone()[0]
        return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000, help="requests per round and mode")
    parser.add_argument("--concurrency", type=int, default=16, help="client threads")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per mode")
    parser.add_argument("--warmup", type=int, default=300, help="requests per server before measuring")
    args = parser.parse_args()

    print(f"cpus: {os.cpu_count()}, python {sys.version.split()[0]}, {args.requests} requests x {args.rounds} rounds")
    print(f"per mode, {args.concurrency} client threads, single-instance POST /v1/predict\n")
    rounds: list[Round] = []
    with ExitStack() as stack:
        on_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="calibserve-log-on-")))
        off_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="calibserve-log-off-")))
        servers = [start("logging on", True, on_dir), start("logging off", False, off_dir)]
        try:
            for server in servers:
                drive(server, args.warmup, args.concurrency)
            print(f"{'round':>5}  {'mode':<12} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7}")
            for number in range(1, args.rounds + 1):
                for server in servers if number % 2 else servers[::-1]:
                    result = drive(server, args.requests, args.concurrency)
                    rounds.append(result)
                    print(
                        f"{number:>5}  {result.mode:<12} {result.rate:>8.0f} {result.percentile(0.5) * 1000:>7.1f} "
                        f"{result.percentile(0.99) * 1000:>7.1f}",
                        flush=True,
                    )
        finally:
            codes = [stop(server) for server in servers]
        sent = args.warmup + args.requests * args.rounds
        logged_on, logged_off = logged_rows(on_dir), logged_rows(off_dir)

    on = statistics.median(r.rate for r in rounds if r.mode == "logging on")
    off = statistics.median(r.rate for r in rounds if r.mode == "logging off")
    ratio = on / off
    print(f"\nmedian req/s: logging on {on:.0f}, logging off {off:.0f}")
    print(f"ratio on/off: {ratio:.3f} ({(ratio - 1) * 100:+.1f}%): {'within' if ratio >= 0.85 else 'NOT within'} 15%")
    off_text = "no log file" if logged_off is None else f"{logged_off} rows"
    print(f"rows logged with logging on: {logged_on} of {sent} sent; with logging off: {off_text}")
    print(f"exit codes after SIGTERM: {codes}")


if __name__ == "__main__":
    main()
