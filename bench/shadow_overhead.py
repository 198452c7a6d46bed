"""What shadow scoring costs the champion's callers: throughput and latency with a challenger on and off.

    .venv/bin/python bench/shadow_overhead.py [--seconds 8] [--rows 1]

One ``calibserve serve`` worker on a repository of two models: the bundled ``digits`` and the same network
served at T = 1 (``calibserve calibrate --temperature 1``, built into a temporary directory: needs the
``calibrate`` extra). It runs twice, without and with ``CALIBSERVE_SHADOW=digits:digits-t1``, under the same
wrk load on ``POST /v1/predict`` (the default model, ``digits``) at 8 and 32 connections, with the harness of
bench/run_bench.py (same event loop, HTTP parser, wrk script, prediction logging on). With the shadow on, the
challenger scores every answered batch on its own thread, so on a 2-core machine it competes with the
champion for CPU: the ratio on/off is the price of the comparison. The last line per run says how many rows
the challenger scored and skipped (a queue of ``CALIBSERVE_SHADOW_QUEUE_ROWS``; skipped rows are counted,
never queued without bound).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.datasets import load_digits

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run_bench as harness  # the benchmark harness beside this script

from service.cli import main as calibserve

REPO_ROOT = Path(__file__).resolve().parent.parent


def build_repository(root: Path) -> Path:
    """``root/models`` holding the bundled model and its T = 1 twin."""
    features, labels = load_digits(return_X_y=True)
    data = root / "digits.npz"
    np.savez(data, X=features.astype(np.float32), y=labels)
    models = root / "models"
    shutil.copytree(REPO_ROOT / "models" / "digits", models / "digits")
    classes = ",".join(str(i) for i in range(10))
    source = REPO_ROOT / "models" / "digits" / "model.onnx"
    command = ["calibrate", str(source), "--data", str(data), "--name", "digits-t1", "--output", "logits"]
    code = calibserve(
        [
            *command,
            "--output-dir",
            str(models / "digits-t1"),
            "--classes",
            classes,
            "--temperature",
            "1",
            "--no-progress",
        ]
    )
    if code != 0:
        raise SystemExit("calibserve calibrate failed")
    return models


def shadow_counts(base_url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{base_url}/v1/models/digits/shadow", timeout=60) as answer:
        report: dict[str, Any] = json.load(answer)
    return report["shadow"] | {"verdict": report["verdict"]}


def measure(models: Path, tmp: Path, shadow: bool, seconds: int, body: Path) -> dict[int, dict[str, Any]]:
    port = harness.free_port()
    spec = harness.server_spec("calibserve", 1, port, tmp)
    env = spec.env | {"CALIBSERVE_MODEL_REPOSITORY": str(models), "CALIBSERVE_DEFAULT_MODEL": "digits"}
    if shadow:
        env["CALIBSERVE_SHADOW"] = "digits:digits-t1"
    spec = replace(
        spec, name=f"calibserve-shadow-{'on' if shadow else 'off'}", env=env, data_dir=tmp / f"data-{shadow}"
    )
    spec.env["CALIBSERVE_DATA_DIR"] = str(spec.data_dir)
    results: dict[int, dict[str, Any]] = {}
    with harness.running(spec, port, tmp) as server:
        url = f"{server.base_url}/v1/predict"
        harness.run_wrk(url, body, 8, 2, None)  # warm-up, discarded
        for connections in (8, 32):
            results[connections] = harness.run_wrk(url, body, connections, seconds, server.process.pid, port)
        if shadow:
            print(f"   shadow: {shadow_counts(server.base_url)}")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=8, help="wrk duration per concurrency")
    parser.add_argument("--rows", type=int, default=1, help="instances per request")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="calibserve-shadow-bench-") as directory:
        tmp = Path(directory)
        models = build_repository(tmp)
        body = tmp / "body.json"
        body.write_text(json.dumps({"instances": harness.digits_rows(args.rows)}))
        runs = {shadow: measure(models, tmp, shadow, args.seconds, body) for shadow in (False, True)}
    print(f"\nPOST /v1/predict, {args.rows} instance(s) per request, 1 worker, {args.seconds} s per run")
    print(f"{'shadow':8} {'conc':>5} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for shadow, results in runs.items():
        for connections, result in results.items():
            rate = result["requests"] / (result["duration_us"] / 1e6)
            errors = sum(result[key] for key in ("connect", "read", "write", "status", "timeout"))
            print(
                f"{'on' if shadow else 'off':8} {connections:>5} {rate:>9,.0f} {result['p50_us'] / 1000:>8.2f} "
                f"{result['p99_us'] / 1000:>8.2f} {errors:>7}"
            )
    for connections in (8, 32):
        on, off = runs[True][connections], runs[False][connections]
        ratio = (on["requests"] / on["duration_us"]) / (off["requests"] / off["duration_us"])
        tail = on["p99_us"] / off["p99_us"]
        print(f"throughput on/off at {connections} connections: {ratio:.2f}; p99 on/off {tail:.2f}")


if __name__ == "__main__":
    main()
