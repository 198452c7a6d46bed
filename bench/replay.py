"""Replay digits traffic against a running calibserve, send the true labels back, and watch the health.

    python bench/replay.py                              # clean traffic: insufficient_data -> ok
    python bench/replay.py --noise 6                    # noisy inputs: confidence drift -> warning/critical
    python bench/replay.py --swap 0.4                   # 40% wrong labels in the feedback: accuracy drop

Sends the bundled model's held-out test split (scikit-learn's digits, so it needs the `train` extra), and
talks to the server over HTTP only.
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
    parser.add_argument("--rows", type=int, default=360, help="how many digits to send (test split, repeated)")
    parser.add_argument("--batch", type=int, default=40, help="rows per request")
    parser.add_argument("--noise", type=float, default=0.0, help="Gaussian noise sd added to the pixels (0-16)")
    parser.add_argument("--swap", type=float, default=0.0, help="fraction of feedback labels replaced by wrong ones")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    # The held-out test split of the bundled model (seed 0): the traffic its card describes.
    digits = load_dataset("digits")
    test = stratified_split(digits, 0.2, 0.2, seed=0).test
    order = rng.permutation(np.resize(test, args.rows))
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
