"""How many prediction rows per second each store takes through the log's own writer, and what that means.

    .venv/bin/python bench/store_ingest.py            # starts a throwaway PostgreSQL (Debian's postgresql)
    .venv/bin/python bench/store_ingest.py --database-url postgresql://...   # or measures yours

1. Ingest through ``PredictionLog`` (the bounded queue and the writer thread a server runs), SQLite and
   PostgreSQL: ``--rows`` rows submitted in requests of ``--request-rows``, timed from the first submit until
   ``flush()`` says every row is committed.
2. Record layout on PostgreSQL, the store's INSERT alone (no queue): one row per prediction (the layout
   calibserve uses: feedback finds a prediction by its primary key) against one record per request holding
   its rows as arrays (what issue 6's note suggested for the bulk path).
3. The ceiling one serving instance could ever produce: the engine alone (onnxruntime and the trust
   metadata, no HTTP) on 1000-row batches, in rows/s. PostgreSQL's ingest divided by it is how many replicas
   at full single-instance load one PostgreSQL absorbs (a lower bound: a real replica, with HTTP, produces less).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from service.monitoring.ids import new_ids
from service.monitoring.log import PredictionLog, records_for_batch
from service.monitoring.store.postgres import PostgresStore
from service.repository import load_engine
from service.settings import Settings

K = 10


def batches(total: int, size: int, seed: int = 0) -> list[list[object]]:
    rng = np.random.default_rng(seed)
    out = []
    for start in range(0, total, size):
        n = min(size, total - start)
        probs = rng.dirichlet(np.ones(K), size=n)
        out.append(records_for_batch(new_ids(n), "digits", "v" * 64, True, probs.argmax(1), probs.max(1), probs, None))
    return out  # type: ignore[return-value]


def ingest(target: Path | str, total: int, size: int) -> float:
    """Rows/s through the log's writer, submit to committed."""
    work = batches(total, size)
    log = PredictionLog(target, queue_size=total + 1, prune_interval=3600, retention_rows=None)
    try:
        started = time.perf_counter()
        for batch in work:
            log.submit(batch)  # type: ignore[arg-type]
        assert log.flush(600.0), "the writer did not finish"
        elapsed = time.perf_counter() - started
        assert log.stats().written == total and log.stats().dropped == 0
        return total / elapsed
    finally:
        log.close()


def layouts(url: str, total: int, size: int) -> tuple[float, float]:
    """Rows/s of the store's per-row INSERT and of a per-request record with arrays, same rows."""
    import psycopg

    store = PostgresStore(url)
    work = batches(total, size, seed=1)
    started = time.perf_counter()
    for batch in work:
        store.write(batch)  # type: ignore[arg-type]
    per_row = total / (time.perf_counter() - started)
    store.close()
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(
            "CREATE TABLE IF NOT EXISTS bench_request_records (first_id text PRIMARY KEY, ids text[], model text, "
            "ts float8, model_version text, class_index int4[], confidence float8[], probabilities bytea)"
        )
        work = batches(total, size, seed=2)
        started = time.perf_counter()
        for batch in work:
            columns = list(zip(*batch, strict=True))
            with connection.transaction():
                connection.execute(
                    "INSERT INTO bench_request_records VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                    (
                        columns[0][0],
                        list(columns[0]),
                        columns[1][0],
                        columns[2][0],
                        columns[3][0],
                        list(columns[5]),
                        list(columns[6]),
                        b"".join(columns[7]),  # type: ignore[arg-type]
                    ),
                )
        per_request = total / (time.perf_counter() - started)
    return per_row, per_request


def engine_rows_per_second() -> float:
    engine = load_engine(Settings())
    from sklearn.datasets import load_digits

    features = np.ascontiguousarray(load_digits().data[:1000], dtype=np.float32)
    engine.predict(features, 0.9)
    samples = []
    for _ in range(20):
        started = time.perf_counter()
        engine.predict(features, 0.9)
        samples.append(time.perf_counter() - started)
    return 1000 / statistics.median(samples)


def throwaway_postgres() -> tuple[str, object]:
    from tests.postgres import PostgresServer, find_bindir

    bindir = find_bindir()
    if bindir is None:
        raise SystemExit("no PostgreSQL binaries: apt-get install postgresql, or pass --database-url")
    server = PostgresServer(bindir)
    server.init()
    # Durable as a production server would be (the tests' throwaway clusters turn fsync off).
    with (server.data / "postgresql.conf").open("a") as conf:
        conf.write("fsync = on\nsynchronous_commit = on\n")
    server.start()
    return server.fresh_database(), server


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default=os.environ.get("CALIBSERVE_DATABASE_URL"))
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--request-rows", type=int, default=500, help="rows per submitted request")
    # A full instance's real load over HTTP (bench/RESULTS.md, bench/run_bench.py on this machine): single-row
    # requests at concurrency 32, and the binary bulk path; rerun run_bench.py to refresh them.
    parser.add_argument("--instance-requests-per-s", type=float, default=1783.0)
    parser.add_argument("--instance-bulk-rows-per-s", type=float, default=51705.0)
    args = parser.parse_args()
    server = None
    url = args.database_url
    if url is None:
        url, server = throwaway_postgres()
    try:
        with TemporaryDirectory() as tmp:
            sqlite = ingest(Path(tmp) / "log.sqlite", args.rows, args.request_rows)
        postgres = ingest(url, args.rows, args.request_rows)
        per_row, per_request = layouts(url, args.rows, args.request_rows)
        instance = engine_rows_per_second()
    finally:
        if server is not None:
            server.stop("fast")  # type: ignore[attr-defined]
            server.remove()  # type: ignore[attr-defined]
    print(f"rows: {args.rows}, {args.request_rows} per request; {os.cpu_count()} cores")
    print(f"ingest through the log's writer, SQLite     : {sqlite:12,.0f} rows/s")
    print(f"ingest through the log's writer, PostgreSQL : {postgres:12,.0f} rows/s  ({postgres / sqlite:.2f}x SQLite)")
    print(f"PostgreSQL store INSERT, one row per prediction: {per_row:12,.0f} rows/s")
    print(
        f"PostgreSQL, one record per request (arrays)    : {per_request:12,.0f} rows/s  "
        f"({per_request / per_row:.2f}x per-row)"
    )
    print(f"one instance's ceiling (engine alone, 1000-row batches): {instance:12,.0f} rows/s")
    print("replicas at full single-instance load one PostgreSQL absorbs (target >= 10):")
    print(
        f"  single-row requests ({args.instance_requests_per_s:,.0f} req/s, bench/RESULTS.md): "
        f"{postgres / args.instance_requests_per_s:.1f}"
    )
    print(
        f"  bulk .npy ({args.instance_bulk_rows_per_s:,.0f} rows/s, bench/RESULTS.md): "
        f"{postgres / args.instance_bulk_rows_per_s:.2f}; with one record per request: "
        f"{per_request / args.instance_bulk_rows_per_s:.2f}"
    )
    print(f"  the engine's ceiling ({instance:,.0f} rows/s): {postgres / instance:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
