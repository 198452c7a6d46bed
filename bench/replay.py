"""Replay digits traffic against a running calibserve, send the true labels back, and watch the health.

    python bench/replay.py                              # clean traffic: insufficient_data -> ok
    python bench/replay.py --noise 6                    # noisy inputs: confidence drift -> warning/critical
    python bench/replay.py --swap 0.4                   # 40% wrong labels in the feedback: accuracy drop
    python bench/replay.py --split test                 # the card's own reference rows (see below)

By default it sends the bundled model's **calibration split**: digits the model never trained on, drawn from
the same distribution as the test split but not the test split itself. The test split is the card's reference
(the confidences the live KS test and PSI compare against): replaying it gives KS D = 0.003, p = 1.0 by
construction, so an "ok" on it says nothing about false alarms on fresh clean traffic. The calibration split
is fresh for the drift checks; the temperature and conformal thresholds were fitted on it (one scalar and two
quantiles), which leaves its accuracy and confidences those of clean traffic. Measured on the bundled model
after 360 rows: calibration split KS D = 0.078, PSI = 0.086 (warning at 0.10), status ok; test split KS
D = 0.003, PSI = 0.000, status ok. The split is rebuilt as the
trainer built it (``stratified_split`` with the card's seed) and checked against the card's split sizes.
It needs scikit-learn's digits (the `train` extra) and talks to the server over HTTP only.
"""

from __future__ import annotations

import argparse
import json
import urllib.request
from typing import Any

import numpy as np

from service.training.data import load_dataset, stratified_split


def call(url: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data=data, headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        result: dict[str, Any] = json.loads(response.read())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument(
        "--split",
        choices=("calibration", "test"),
        default="calibration",
        help="calibration (default): held-out digits that are not the card's reference; test: the reference itself",
    )
    parser.add_argument("--rows", type=int, default=None, help="how many digits to send (default: the split once)")
    parser.add_argument("--batch", type=int, default=40, help="rows per request")
    parser.add_argument("--noise", type=float, default=0.0, help="Gaussian noise sd added to the pixels (0-16)")
    parser.add_argument("--swap", type=float, default=0.0, help="fraction of feedback labels replaced by wrong ones")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    name = call(args.url, "/v1/models")["models"][0]["name"]
    dataset = call(args.url, f"/v1/models/{name}")["dataset"]
    digits = load_dataset("digits")
    # The trainer's split (calibration and test fractions 0.2, the card's seed); the sizes must match the card's.
    split = stratified_split(digits, 0.2, 0.2, seed=dataset["split_seed"])
    if (len(split.calibration), len(split.test)) != (dataset["n_calibration"], dataset["n_test"]):
        parser.error(f"model {name!r} was not trained on the default digits split: cannot tell its test rows apart")
    rows = split.calibration if args.split == "calibration" else split.test
    order = rng.permutation(np.resize(rows, args.rows or len(rows)))
    if args.split == "calibration":
        print(f"replaying {len(order)} rows of the calibration split ({len(rows)} digits, never trained on, not the")
        print("card's reference test split): fresh clean traffic, so any status above ok is a false alarm")
    else:
        print(f"replaying {len(order)} rows of the TEST split: the card's own reference (KS D ~ 0, p ~ 1 by")
        print("construction); an ok here says nothing about false alarms, use --split calibration for that")
    features = np.clip(digits.features[order] + rng.normal(0, args.noise, size=(len(order), 64)), 0, 16)
    labels = digits.labels[order].copy()
    wrong = rng.random(len(labels)) < args.swap
    labels[wrong] = (labels[wrong] + rng.integers(1, 10, size=int(wrong.sum()))) % 10

    print(f"{'sent':>5} {'labels':>6}  status             reasons not ok")
    for start in range(0, len(order), args.batch):
        rows = features[start : start + args.batch]
        predictions = call(args.url, "/v1/predict", {"instances": rows.round(3).tolist()})["predictions"]
        feedback = [
            {"prediction_id": p["prediction_id"], "label": str(label)}
            for p, label in zip(predictions, labels[start : start + args.batch], strict=True)
        ]
        call(args.url, "/v1/feedback", {"feedback": feedback})
        health = call(args.url, "/health/calibration")
        flagged = [
            f"{r['code']}={r['value']:.3g}"
            for r in health["reasons"]
            if r["status"] not in ("ok",) and r["value"] is not None
        ]
        n_labels = (health.get("live") or {}).get("labelled", {}).get("n", 0)
        print(f"{start + len(rows):>5} {n_labels:>6}  {health['status']:<18} {', '.join(flagged)}")


if __name__ == "__main__":
    main()
