"""The closed recalibration loop, as a new user sees it: a server left alone with CALIBSERVE_RECALIBRATION=auto.

    .venv/bin/python bench/recalibration_demo.py      # ~1 minute: the timeline, and bench/recalibration.png

Starts ``calibserve serve`` on the bundled model (fresh log, the policy looking every 2 s), replays held-out digits
(the calibration split, never trained on) with their labels: first clean, then fainter (pixel intensities x0.45:
the same ranking, a lower confidence scale, so the model turns under-confident: a drift one temperature
repairs). After every request of 40 rows and its feedback it reads ``/health/calibration`` (live ECE of the
version serving) and ``/v1/models/digits/recalibrations`` (the loop's decisions), prints each step, counts the
labels from the drift's start until live ECE is back under the warning threshold, and plots live ECE over the
labels with the fit, the shadow and the promotion marked. Needs the ``train`` extra (scikit-learn's digits;
matplotlib for the plot).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.training.data import load_dataset, stratified_split  # noqa: E402

PORT = 8766
URL = f"http://127.0.0.1:{PORT}"


def call(path: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(URL + path, data=data, headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def start_server(data_dir: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALIBSERVE_")}
    env |= {
        "CALIBSERVE_DATA_DIR": str(data_dir),
        "CALIBSERVE_PORT": str(PORT),
        "CALIBSERVE_RECALIBRATION": "auto",
        "CALIBSERVE_RECALIBRATION_INTERVAL_SECONDS": "2",
    }
    process = subprocess.Popen([sys.executable, "-m", "service.cli", "serve"], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    for _ in range(120):
        try:
            call("/health/ready")
            return process
        except OSError:
            time.sleep(0.5)
    process.terminate()
    raise SystemExit("the server did not get ready")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clean", type=int, default=720, help="labelled clean rows first")
    parser.add_argument("--drifted", type=int, default=2400, help="then labelled rows at x0.45 intensity")
    parser.add_argument("--scale", type=float, default=0.45)
    parser.add_argument("--plot", type=Path, default=ROOT / "bench" / "recalibration.png")
    args = parser.parse_args()
    digits = load_dataset("digits")
    card = json.loads((ROOT / "models" / "digits" / "card.json").read_text())
    split = stratified_split(digits, 0.2, 0.2, seed=card["dataset"]["split_seed"])
    rng = np.random.default_rng(0)
    rows = np.resize(split.calibration, args.clean + args.drifted)
    order = rng.permutation(rows)
    features, labels = digits.features[order].copy(), digits.labels[order]
    features[args.clean :] *= args.scale
    timeline: list[dict[str, Any]] = []
    seen: set[str] = set()
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server(Path(tmp) / "data")
        try:
            print(f"{'labels':>6}  {'phase':<8} {'version':<12} {'live ECE':>8}  status    loop")
            for start in range(0, len(order), 40):
                batch = slice(start, start + 40)
                answer = call("/v1/predict", {"instances": features[batch].round(3).tolist()})
                items = [{"prediction_id": p["prediction_id"], "label": str(y)}
                         for p, y in zip(answer["predictions"], labels[batch], strict=True)]  # fmt: skip
                call("/v1/feedback", {"feedback": items})
                time.sleep(0.25)  # the policy looks every 2 s, as a server left alone would
                health = call("/health/calibration?model=digits")
                missing = {"status": "insufficient_data", "value": None}  # too few labels for live ECE yet
                ece = next((r for r in health["reasons"] if r["code"] == "live_ece"), missing)
                decisions = call("/v1/models/digits/recalibrations")["decisions"]
                new = [d for d in decisions if d["id"] not in seen]
                seen.update(d["id"] for d in new)
                sent = start + len(items)
                point = {
                    "labels": sent,
                    "drifted": sent > args.clean,
                    "version": health["model"]["version"][:12],
                    "ece": ece["value"] if ece["status"] != "insufficient_data" else None,
                    "status": ece["status"],
                    "events": [d["kind"] for d in new],
                }
                timeline.append(point)
                shown = "—" if point["ece"] is None else f"{point['ece']:.3f}"
                print(
                    f"{sent:>6}  {'drifted' if point['drifted'] else 'clean':<8} {point['version']:<12} {shown:>8}  "
                    f"{ece['status']:<9} {', '.join(d['kind'] + ': ' + d['reason'][:90] for d in new)}"
                )
        finally:
            server.terminate()
            server.wait(timeout=20)
    summarize(timeline, args.clean, card["temperature"]["value"])
    plot(timeline, args.clean, args.plot)
    return 0


def summarize(timeline: list[dict[str, Any]], clean: int, served_t: float) -> None:
    broke = next((p for p in timeline if p["drifted"] and p["status"] in ("warning", "critical")), None)
    promoted = next((p for p in timeline if "promotion" in p["events"]), None)
    repaired = None
    if promoted is not None:
        repaired = next(
            (p for p in timeline if p["labels"] > promoted["labels"] and p["ece"] is not None and p["ece"] < 0.05),
            None,
        )
    print()
    print(f"drift starts after {clean} labels (served T = {served_t:.3f})")
    if broke is not None:
        print(f"live ECE alarms ({broke['status']}) at {broke['labels']} labels: ECE {broke['ece']:.3f}")
    if promoted is None:
        print("no promotion")
        return
    print(f"promoted at {promoted['labels']} labels ({promoted['labels'] - clean} after the drift began)")
    if repaired is not None:
        print(
            f"live ECE back under 0.05 at {repaired['labels']} labels: {repaired['ece']:.3f}, "
            f"{repaired['labels'] - clean} labels after the drift began"
        )


def plot(timeline: list[dict[str, Any]], clean: int, out: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    fig, ax = plt.subplots(figsize=(9, 3.6))
    xs = [p["labels"] for p in timeline]
    ys = [np.nan if p["ece"] is None else p["ece"] for p in timeline]
    ax.plot(xs, ys, marker="o", markersize=3, label="live ECE of the serving version")
    ax.axhline(0.05, color="tab:orange", linestyle="--", label="warning 0.05")
    ax.axhline(0.10, color="tab:red", linestyle=":", label="critical 0.10")
    ax.axvline(clean, color="black", linestyle="-.", linewidth=1)
    ax.text(clean, ax.get_ylim()[1] * 0.97, " drift starts (x0.45)", fontsize=8, va="top")
    words = {"fit": "fit", "proposal": "shadow", "promotion": "promoted", "rejection": "rejected"}
    colors = {"fit": "tab:purple", "proposal": "tab:purple", "promotion": "tab:green", "rejection": "tab:gray"}
    top = ax.get_ylim()[1]
    for p in timeline:
        shown = [e for e in p["events"] if e in words]
        if shown:
            color = colors[shown[-1]]
            ax.axvline(p["labels"], color=color, linewidth=1)
            height = {"promotion": 0.8, "rejection": 0.5}.get(shown[-1], 0.65)
            ax.text(p["labels"], top * height, " " + " + ".join(words[e] for e in shown), color=color, fontsize=8)
    ax.set_xlabel("labelled predictions sent")
    ax.set_ylabel("live ECE (last 500 labels)")
    ax.set_title("CALIBSERVE_RECALIBRATION=auto: a server repairs its own calibration")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    raise SystemExit(main())
