"""Simulate gradual input drift against the in-process app and watch /health/calibration react.

    python bench/simulate_drift.py [--out bench/drift.png] [--steps 13] [--rows-per-step 150]

The real app (bundled digits model, real onnxruntime, real SQLite prediction log in a temporary directory)
runs in this process behind ``httpx.ASGITransport`` with its lifespan. Each step sends ``--rows-per-step``
held-out digits (the card's test split, then rows resampled from it) with Gaussian pixel noise whose sd
grows linearly from 0 to ``--max-noise``, sends their true labels to /v1/feedback, and prints one row of
what /health/calibration says. The live windows are small (150 labels, 300 predictions) so each step is
judged mostly on its own traffic. A PNG plots live ECE, confidence PSI and the status over the steps.
Needs the ``train`` extra (scikit-learn for the data, matplotlib for the plot).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from numpy.typing import NDArray

from service.card import CalibrationCard
from service.main import create_app
from service.settings import Settings, default_model_path
from service.training.data import load_dataset, stratified_split

WINDOW_LABELS = 150
WINDOW_PREDICTIONS = 300
BATCH = 50
STATUS_LEVEL = {"ok": 0, "insufficient_data": 1, "warning": 2, "critical": 3}


def traffic(steps: int, per_step: int, seed: int) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """The card's test split in a shuffled order, then rows resampled from it, ``steps * per_step`` in all."""
    model_path = default_model_path()
    card = CalibrationCard.from_json((model_path / "card.json").read_bytes())
    digits = load_dataset("digits")
    test = stratified_split(digits, 0.2, 0.2, seed=card.dataset.split_seed).test
    rng = np.random.default_rng(seed)
    total = steps * per_step
    order = rng.permutation(test)
    if total > len(order):
        order = np.concatenate([order, rng.choice(test, size=total - len(order), replace=True)])
    order = order[:total]
    return digits.features[order], digits.labels[order]


def fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def row_of(step: int, sd: float, health: dict[str, Any]) -> dict[str, Any]:
    live = health.get("live") or {}
    labelled = live.get("labelled") or {}
    unlabelled = live.get("unlabelled") or {}
    ks = unlabelled.get("ks") or {}
    return {
        "step": step,
        "sd": sd,
        "n": labelled.get("n", 0),
        "ece": (labelled.get("ece") or {}).get("value"),
        "accuracy": labelled.get("accuracy"),
        "psi": unlabelled.get("psi"),
        "ks_p": ks.get("pvalue"),
        "estimated": unlabelled.get("estimated_accuracy"),
        "status": health["status"],
        "not_ok": [f"{r['code']}={r['status']}" for r in health["reasons"] if r["status"] != "ok"],
    }


HEADER = (
    f"{'step':>4} {'noise sd':>8} {'labels':>6} {'live ECE':>8} {'accuracy':>8} {'PSI':>6} {'KS p':>8} "
    f"{'est. acc':>8}  {'status':<17} reasons not ok"
)


def print_row(r: dict[str, Any]) -> None:
    print(
        f"{r['step']:>4} {r['sd']:>8.2f} {r['n']:>6} {fmt(r['ece'], '.3f'):>8} {fmt(r['accuracy'], '.3f'):>8} "
        f"{fmt(r['psi'], '.3f'):>6} {fmt(r['ks_p'], '.2g'):>8} {fmt(r['estimated'], '.3f'):>8}  "
        f"{r['status']:<17} {', '.join(r['not_ok']) or '-'}",
        flush=True,
    )


async def simulate(args: argparse.Namespace, data_dir: Path) -> list[dict[str, Any]]:
    settings = Settings(
        model_path=default_model_path(),
        data_dir=data_dir,
        window_labels=WINDOW_LABELS,
        window_predictions=WINDOW_PREDICTIONS,
        log_level="warning",
    )
    features, labels = traffic(args.steps, args.rows_per_step, args.seed)
    noise_rng = np.random.default_rng(args.seed + 1)
    schedule = np.linspace(0.0, args.max_noise, args.steps)
    app = create_app(settings)
    rows: list[dict[str, Any]] = []
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench") as client,
    ):
        print(HEADER)
        for step, sd in enumerate(schedule.tolist()):
            part = slice(step * args.rows_per_step, (step + 1) * args.rows_per_step)
            clean = features[part]
            noisy = np.clip(clean + noise_rng.normal(0.0, sd, size=clean.shape), 0.0, 16.0) if sd else clean
            feedback = []
            for start in range(0, len(noisy), BATCH):
                response = await client.post("/v1/predict", json={"instances": noisy[start : start + BATCH].tolist()})
                response.raise_for_status()
                predictions = response.json()["predictions"]
                true = labels[part][start : start + BATCH]
                feedback += [
                    {"prediction_id": p["prediction_id"], "label": str(int(y))}
                    for p, y in zip(predictions, true, strict=True)
                ]
            (await client.post("/v1/feedback", json={"feedback": feedback})).raise_for_status()
            health = (await client.get("/health/calibration")).json()
            rows.append(row_of(step, sd, health))
            print_row(rows[-1])
    return rows


def plot(rows: list[dict[str, Any]], out: Path, settings: Settings) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    sds = [r["sd"] for r in rows]
    fig, axes = plt.subplots(3, 1, figsize=(8, 8), sharex=True)
    ece = [np.nan if r["ece"] is None else r["ece"] for r in rows]
    axes[0].plot(steps, ece, marker="o", label="live ECE")
    axes[0].axhline(settings.ece_warning, color="orange", linestyle="--", label="warning")
    axes[0].axhline(settings.ece_critical, color="red", linestyle="--", label="critical")
    axes[0].set_ylabel("live ECE")
    axes[0].legend(loc="upper left")
    psi = [np.nan if r["psi"] is None else r["psi"] for r in rows]
    axes[1].plot(steps, psi, marker="o", color="purple", label="confidence PSI")
    axes[1].axhline(settings.psi_warning, color="orange", linestyle="--", label="warning")
    axes[1].axhline(settings.psi_critical, color="red", linestyle="--", label="critical")
    axes[1].set_ylabel("PSI")
    axes[1].legend(loc="upper left")
    levels = [STATUS_LEVEL[r["status"]] for r in rows]
    colors = ["green", "grey", "orange", "red"]
    axes[2].scatter(steps, levels, c=[colors[level] for level in levels], s=80, zorder=3)
    axes[2].plot(steps, levels, color="black", alpha=0.3)
    axes[2].set_yticks(range(4), list(STATUS_LEVEL))
    axes[2].set_ylim(-0.5, 3.5)
    axes[2].set_ylabel("status")
    axes[2].set_xticks(steps, [f"{s}\nsd {sd:.1f}" for s, sd in zip(steps, sds, strict=True)], fontsize=7)
    axes[2].set_xlabel("step (input noise sd)")
    fig.suptitle(
        f"digits, noise sd 0 → {sds[-1]:g}: live window {WINDOW_LABELS} labels / {WINDOW_PREDICTIONS} predictions"
    )
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "drift.png", help="PNG path")
    parser.add_argument("--steps", type=int, default=13)
    parser.add_argument("--rows-per-step", type=int, default=150)
    parser.add_argument("--max-noise", type=float, default=8.0, help="noise sd at the last step (pixels are 0-16)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.steps < 2 or args.rows_per_step < 1:
        parser.error("need at least 2 steps and 1 row per step")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="calibserve-drift-") as data_dir:
        rows = asyncio.run(simulate(args, Path(data_dir)))
    plot(rows, args.out, Settings(model_path=default_model_path(), data_dir=Path(tempfile.gettempdir())))
    print(f"\nwrote {args.out} in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
