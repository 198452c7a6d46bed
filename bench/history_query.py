"""How long a month of calibration history takes on a log of a million predictions, SQLite and PostgreSQL.

    .venv/bin/python bench/history_query.py                 # starts a throwaway PostgreSQL (Debian's postgresql)
    .venv/bin/python bench/history_query.py --rows 200000   # smaller

Fills each store with ``--rows`` predictions of the bundled model's shape spread evenly over 30 days (ids and
times agree, as in production; probabilities Dirichlet(0.3), so confidences are spread) and labels
``--labelled`` of them (the first 15 days calibrated: labels drawn from the probabilities; the last 15 drifting:
labels at random), then times the whole history of the month in hourly buckets (720), every figure and verdict:
the store's SQL alone, the first answer (every bucket's bootstrap and noise gates computed), and the median of
the next five (the labelled figures of unchanged buckets kept). PostgreSQL is analysed after the bulk load, as
autovacuum would have done for a month-old log. The target (issue 16): well under a second.

Measured here (2 cores, 1,000,000 predictions, 100,000 labelled, one run):
SQLite: SQL 388 ms, first answer 2,210 ms, then 417 ms. PostgreSQL: SQL 540 ms, first 1,916 ms, then 625 ms.
Before the rollup (the GROUP BY over every row) the counts alone took 1,773 ms / 1,396 ms.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from service.card import CalibrationCard
from service.monitoring.history import LabelledCache, buckets_from_counts, history_query
from service.monitoring.live import LiveThresholds
from service.monitoring.log import records_for_batch
from service.monitoring.store import open_store
from service.monitoring.store.base import Store
from service.settings import default_model_path

DAY = 86400.0
CARD = CalibrationCard.from_json((default_model_path() / "card.json").read_bytes())


def uuid7_at(unix_seconds: float, rng: np.random.Generator) -> str:
    text = f"{int(unix_seconds * 1000):012x}7{rng.integers(0, 2**12):03x}{rng.choice(list('89ab'))}" + "".join(
        f"{v:x}" for v in rng.integers(0, 16, size=15)
    )
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:32]}"


def fill(store: Store, rows: int, labelled: int, since: float, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    times = np.sort(rng.uniform(since, since + 30 * DAY, size=rows))
    label_every = max(1, rows // labelled)
    for start in range(0, rows, 5000):
        stop = min(rows, start + 5000)
        ids = [uuid7_at(t, rng) for t in times[start:stop]]
        probs = rng.dirichlet(np.full(CARD.n_classes, 0.3), size=stop - start)
        records = records_for_batch(ids, CARD.name, CARD.version, True, probs.argmax(1), probs.max(1), probs, None)
        store.write([r._replace(ts=float(t)) for r, t in zip(records, times[start:stop], strict=True)])
        # the first half of the month calibrated (labels drawn from the probabilities), the second drifting
        # (labels at random): the drifting buckets are the ones whose noise gates must be simulated
        picked = range(0, stop - start, label_every)
        drifting = times[start] > since + 15 * DAY
        labels = [
            int(rng.integers(CARD.n_classes)) if drifting else int(rng.choice(CARD.n_classes, p=probs[i]))
            for i in picked
        ]
        items = [(ids[i], CARD.classes[y]) for i, y in zip(picked, labels, strict=True)]

        def classify(labels: dict[str, str], logged: set[str], items: list[tuple[str, str]] = items) -> tuple:
            return ["recorded"] * len(items), [(i, label, time.time()) for i, label in items]

        store.record_feedback([i for i, _ in items], classify)  # type: ignore[arg-type]


def timed_history(store: Store, since: float) -> tuple[float, float, float, int, int, int]:
    """(store's SQL alone, first answer with an empty cache, median of the next answers): seconds; and the
    buckets, the predictions counted and the buckets whose labels made it judge ECE (not insufficient)."""
    query = history_query(CARD, CARD.name, CARD.version, since, since + 30 * DAY, 3600.0)
    thresholds, cache = LiveThresholds(), LabelledCache()
    started = time.perf_counter()
    store.history_counts(query)
    sql = time.perf_counter() - started
    samples = []
    for _ in range(6):
        started = time.perf_counter()
        buckets = buckets_from_counts(CARD, query, store.history_counts(query), thresholds, cache)
        samples.append(time.perf_counter() - started)
    judged = sum(b.ece is not None for b in buckets)
    return sql, samples[0], statistics.median(samples[1:]), len(buckets), sum(b.predictions for b in buckets), judged


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--labelled", type=int, default=100_000)
    parser.add_argument("--database-url")
    args = parser.parse_args()
    since = (time.time() // 3600) * 3600 - 31 * DAY  # whole hours, as the API asks
    results: list[tuple[str, float, tuple[float, float, float, int, int, int]]] = []
    server = None
    with TemporaryDirectory() as tmp:
        targets: list[tuple[str, Path | str]] = [("SQLite", Path(tmp) / "log.sqlite")]
        url = args.database_url
        if url is None:
            from tests.postgres import PostgresServer, find_bindir

            bindir = find_bindir()
            if bindir is not None:
                server = PostgresServer(bindir)
                server.init()
                server.start()
                url = server.fresh_database()
        if url is not None:
            targets.append(("PostgreSQL", url))
        try:
            for name, target in targets:
                store = open_store(target)
                started = time.perf_counter()
                fill(store, args.rows, args.labelled, since)
                filled = time.perf_counter() - started
                if isinstance(target, str):
                    # A month's log has long been analysed by autovacuum; one bulk-loaded a second ago has not,
                    # and without statistics the planner walks every prediction to find the labelled ones.
                    import psycopg

                    with psycopg.connect(target, autocommit=True) as connection:
                        connection.execute("ANALYZE")
                timings = timed_history(store, since)
                store.close()
                results.append((name, filled, timings))
        finally:
            if server is not None:
                server.stop("fast")
                server.remove()
    print(
        f"{args.rows:,} predictions over 30 days, {args.labelled:,} labelled (first half calibrated, second half "
        "drifting); history of the month in 1 h buckets, every figure and verdict"
    )
    for name, filled, (sql, cold, warm, n_buckets, n_rows, judged) in results:
        print(
            f"{name:<11} store SQL {sql * 1e3:7.1f} ms; whole history: first {cold * 1e3:7.1f} ms, then "
            f"{warm * 1e3:7.1f} ms (median of 5; labelled figures kept per bucket) for {n_buckets} buckets, "
            f"{judged} with enough labels ({n_rows:,} predictions counted); filling took {filled:.0f} s"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
