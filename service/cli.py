"""The ``calibserve`` command.

Sub-commands import what they need when they run, so ``calibserve serve`` never imports torch and
``calibserve --help`` stays fast.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from service.errors import ServiceError
from service.training.config import TrainConfig  # torch-free: the trainer's heavy imports stay in handlers
from service.training.data import Dataset, load_dataset


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _float_list(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="calibserve", description="Train, inspect and serve classifiers with calibrated probabilities."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_serve(commands)
    _add_healthcheck(commands)
    _add_train(commands)
    _add_calibrate(commands)
    _add_inspect(commands)
    return parser


def _add_serve(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from service.settings import ENV_PREFIX, Settings

    serve = commands.add_parser(
        "serve",
        help="serve the model over REST (default: the bundled models/digits)",
        description="Start the calibserve API under uvicorn. Every option can also be set with its environment "
        f"variable ({ENV_PREFIX}<NAME>); options given here win.",
    )
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        serve.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            default=None,
            metavar=name.upper(),
            # argparse %-formats help text: a literal % (target_accuracy's "95% confidence") must be doubled
            help=f"{field.description} [env {ENV_PREFIX}{name.upper()}; default {default}]".replace("%", "%%"),
        )
    serve.set_defaults(handler=_run_serve)


WORKER_HEALTHCHECK_TIMEOUT_S = 30


def _run_serve(args: argparse.Namespace) -> int:
    import os
    import signal

    import uvicorn
    from pydantic import ValidationError

    from service.settings import ENV_PREFIX, Settings

    overrides = {name: getattr(args, name) for name in Settings.model_fields if getattr(args, name) is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors())
        print(f"calibserve serve: invalid settings: {problems}", file=sys.stderr)
        return 2
    if settings.workers > 1:
        # Metrics from every worker: each writes samples into this server's own directory, /metrics sums
        # them up; another server on the same data dir has its own. Removed at exit (SIGTERM exits through
        # sys.exit below); a killed server's is removed by the next start. Set before the service modules
        # (and prometheus_client's metrics) are imported anywhere.
        import atexit

        from service.monitoring import metrics_dir

        own_metrics_dir = metrics_dir.claim(settings.data_dir / "prometheus")
        atexit.register(metrics_dir.release, own_metrics_dir)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(own_metrics_dir.resolve())
    from service.repository import load_engine

    if settings.model_repository is None:
        load_engine(settings)  # fail fast, before uvicorn, with a message naming the file and the problem
    # Worker processes build their own Settings from the environment: hand the overrides down that way.
    for name, value in overrides.items():
        os.environ[f"{ENV_PREFIX}{name.upper()}"] = str(value)
    # uvicorn finishes in-flight requests on SIGTERM, then re-raises the signal to whatever handler was
    # installed before it: make that an ordinary exit, so a graceful stop ends with status 0.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    from service.api.connections import CappedHTTPProtocol
    from service.logs import configure_logging

    configure_logging(settings.log_level, settings.log_format)  # the supervisor's lines; workers redo it
    uvicorn.run(
        "service.main:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_level=settings.log_level,
        log_config=None,  # calibserve's own handlers and format (service/logs.py), not uvicorn's
        access_log=False,  # the access line comes from calibserve.access: route template, request id, model
        http=CappedHTTPProtocol,  # httptools (or h11) with CALIBSERVE_MAX_CONNECTIONS enforced at accept
        loop="auto",  # uvloop, from uvicorn[standard]
        limit_concurrency=settings.limit_concurrency or settings.max_connections + 1,
        backlog=settings.backlog,
        timeout_keep_alive=settings.timeout_keep_alive,
        timeout_graceful_shutdown=settings.graceful_timeout,
        # uvicorn kills a worker that misses its supervisor's ping for this long (default 5 s): on a loaded
        # 2-core machine a busy worker was killed mid-request (connections reset), so allow a longer stall.
        timeout_worker_healthcheck=WORKER_HEALTHCHECK_TIMEOUT_S,
    )
    return 0


def _add_healthcheck(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    check = commands.add_parser(
        "healthcheck",
        help="exit 0 if the local server answers /health/ready with 200 (for container HEALTHCHECKs)",
        description="Probe http://127.0.0.1:<CALIBSERVE_PORT>/health/ready; exit 0 when ready, 1 otherwise.",
    )
    check.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for the answer")
    check.set_defaults(handler=_run_healthcheck)


def _run_healthcheck(args: argparse.Namespace) -> int:
    import urllib.error
    import urllib.request

    from service.settings import Settings

    settings = Settings()
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    url = f"http://{host}:{settings.port}/health/ready"
    try:
        with urllib.request.urlopen(url, timeout=args.timeout) as response:
            ready = response.status == 200
    except (urllib.error.URLError, OSError) as exc:
        print(f"not ready: {url}: {exc}", file=sys.stderr)
        return 1
    print(f"{'ready' if ready else 'not ready'}: {url}")
    return 0 if ready else 1


def _add_train(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    defaults = TrainConfig()
    train = commands.add_parser(
        "train",
        help="train with label smoothing, fit temperature scaling, export ONNX + calibration card",
        description="Train an MLP with label smoothing, fit temperature scaling on a held-out calibration "
        "split, measure calibration on the test split and export models/<name>/ (model.onnx with the card "
        "embedded, card.json, reliability.png, REPORT.md). Needs the 'train' extra.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    data = train.add_argument_group("data")
    data.add_argument("--data", default="digits", help="'digits' (bundled with scikit-learn) or a .csv/.npz path")
    data.add_argument("--label-column", help="CSV column holding the class (required for .csv)")
    data.add_argument("--calibration-fraction", type=float, default=defaults.calibration_fraction)
    data.add_argument("--test-fraction", type=float, default=defaults.test_fraction)
    model = train.add_argument_group("model and optimisation")
    model.add_argument("--hidden-sizes", type=_int_list, default=defaults.hidden_sizes, help="e.g. 256,256")
    model.add_argument("--dropout", type=float, default=defaults.dropout)
    model.add_argument("--epochs", type=_positive_int, default=defaults.epochs)
    model.add_argument("--batch-size", type=_positive_int, default=defaults.batch_size)
    model.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    model.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    model.add_argument("--seed", type=int, default=defaults.seed, help="seeds the split, init and batches")
    smoothing = train.add_argument_group("label smoothing")
    smoothing.add_argument(
        "--label-smoothing",
        type=float,
        default=defaults.label_smoothing,
        help="alpha in (1-a)*onehot + a*prior",
    )
    smoothing.add_argument(
        "--smoothing-prior",
        choices=("uniform", "empirical"),
        default=defaults.smoothing_prior,
        help="smooth towards 1/K or towards the training class frequencies",
    )
    output = train.add_argument_group("output")
    output.add_argument("--name", help="model name (default: the data set's name)")
    output.add_argument("--output-dir", type=Path, help="artifact directory (default: models/<name>)")
    output.add_argument("--no-progress", action="store_true", help="no progress bar")
    compare = train.add_argument_group("compare (instead of exporting one model)")
    compare.add_argument(
        "--compare",
        action="store_true",
        help="train alphas x seeds and write a Müller et al. Table 3-style table",
    )
    compare.add_argument("--compare-alphas", type=_float_list, default=(0.0, 0.05, 0.1, 0.2))
    compare.add_argument("--compare-seeds", type=_positive_int, default=5, help="number of seeds (0..n-1)")
    compare.add_argument("--compare-output", type=Path, help="markdown file (default: <name>-compare.md)")
    train.set_defaults(handler=_run_train)


def _add_calibrate(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    calibrate = commands.add_parser(
        "calibrate",
        help="calibrate any single-input ONNX classifier: temperature scaling, card, servable artifact",
        description="Fit temperature scaling for an ONNX classifier you already have on held-out labelled data, "
        "fold it into the graph (outputs 'logits' and 'probabilities'), measure calibration on a test split and "
        "write <output-dir>/ (model.onnx with the card embedded, card.json, reliability.png, REPORT.md), ready "
        "for 'calibserve serve'. Needs the 'calibrate' extra (onnx; no torch).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    calibrate.add_argument("model", type=Path, help="the ONNX model (one input; an output of class scores)")
    calibrate.add_argument(
        "--data",
        type=Path,
        required=True,
        help="labelled data the model never trained on: .npz with X (shaped like the input) and y, or .csv "
        "(the features and a --label-column; flat inputs only). Split in half (calibration / test) unless "
        "--test-data is given",
    )
    calibrate.add_argument("--test-data", type=Path, help="separate test data; then all of --data fits T")
    calibrate.add_argument("--name", required=True, help="model name")
    calibrate.add_argument("--output-dir", type=Path, help="artifact directory (default: models/<name>)")
    calibrate.add_argument("--output", help="the output holding the class scores (default: the one [N, K] float)")
    calibrate.add_argument(
        "--scores", choices=("logits", "probabilities"), help="what the output holds (default: detected)"
    )
    calibrate.add_argument("--classes", type=_name_list, help="class names in the output's column order, e.g. a,b,c")
    calibrate.add_argument(
        "--label-smoothing", type=float, help="the label smoothing the model was trained with (default: unknown)"
    )
    calibrate.add_argument("--label-column", default="label", help="CSV column holding the class")
    calibrate.add_argument("--seed", type=int, default=0, help="seeds the calibration / test split")
    calibrate.add_argument(
        "--temperature",
        type=float,
        help="use this temperature instead of fitting one (e.g. 1: serve the model's own scores, an uncalibrated "
        "baseline to shadow a calibrated version with); the card measures it as for a fitted one",
    )
    calibrate.add_argument("--no-progress", action="store_true", help="no progress lines while scoring large data")
    calibrate.set_defaults(handler=_run_calibrate)


def _name_list(text: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in text.split(","))
    if len(names) < 2 or any(not n for n in names) or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"expected at least two distinct, comma-separated names, got {text!r}")
    return names


def _run_calibrate(args: argparse.Namespace) -> int:
    try:
        import onnx  # noqa: F401
    except ImportError as exc:
        print(
            f"calibserve calibrate needs the 'calibrate' extra: pip install 'calibserve[calibrate]' ({exc})",
            file=sys.stderr,
        )
        return 2
    if args.temperature is not None and not (math.isfinite(args.temperature) and args.temperature > 0):
        print(f"calibserve calibrate: --temperature must be a positive number, got {args.temperature}", file=sys.stderr)
        return 2
    if args.label_smoothing is not None and not 0.0 <= args.label_smoothing < 1.0:
        print(f"calibserve calibrate: --label-smoothing must be in [0, 1), got {args.label_smoothing}", file=sys.stderr)
        return 2
    from service.card import summary_lines
    from service.training.calibrate import CalibrateOptions, calibrate_model
    from service.training.files import write_artifact_files

    options = CalibrateOptions(
        name=args.name,
        output=args.output,
        scores=args.scores,
        classes=args.classes,
        label_smoothing=args.label_smoothing,
        seed=args.seed,
        label_column=args.label_column,
        progress=not args.no_progress,
        temperature=args.temperature,
    )
    result = calibrate_model(args.model, args.data, options, args.test_data)
    for note in result.notes:
        print(note)
    directory = args.output_dir or Path("models") / args.name
    write_artifact_files(directory, result.model_bytes, result.card)
    print(f"wrote {directory}/ (model.onnx, card.json, reliability.png, REPORT.md)")
    print("\n".join(summary_lines(result.card)))
    return 0


def _add_inspect(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    inspect = commands.add_parser(
        "inspect",
        help="verify a model artifact and print its calibration card",
        description="Verify model.onnx against its embedded card (hash, inputs, outputs, classes) and print "
        "a readable summary of the card.",
    )
    inspect.add_argument("path", type=Path, help="artifact directory (e.g. models/digits) or model.onnx")
    inspect.add_argument("--json", action="store_true", help="print the full card as JSON")
    inspect.set_defaults(handler=_run_inspect)


def _run_train(args: argparse.Namespace) -> int:
    try:
        import sklearn  # noqa: F401
        import torch  # noqa: F401
    except ImportError as exc:
        print(
            f"calibserve train needs the 'train' extra: pip install 'calibserve[train]' ({exc})",
            file=sys.stderr,
        )
        return 2
    try:
        config = TrainConfig(
            label_smoothing=args.label_smoothing,
            smoothing_prior=args.smoothing_prior,
            hidden_sizes=args.hidden_sizes,
            dropout=args.dropout,
            epochs=args.epochs,
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            weight_decay=args.weight_decay,
            seed=args.seed,
            calibration_fraction=args.calibration_fraction,
            test_fraction=args.test_fraction,
        )
    except ValueError as exc:
        print(f"calibserve train: {exc}", file=sys.stderr)
        return 2
    dataset = load_dataset(args.data, args.label_column)
    name = args.name or dataset.name
    if args.compare:
        return _compare(args, dataset, config, name)
    from service.card import summary_lines
    from service.training.export import write_artifact
    from service.training.train import run_training

    run = run_training(dataset, config, progress=not args.no_progress)
    artifact = write_artifact(run, args.output_dir or Path("models") / name, name)
    print(f"wrote {artifact.directory}/ (model.onnx, card.json, reliability.png, REPORT.md)")
    parity = artifact.max_probability_difference
    print(f"trained in {run.train_seconds:.1f} s; onnxruntime matches torch within {parity:.1e}")
    print("\n".join(summary_lines(artifact.card)))
    return 0


def _compare(args: argparse.Namespace, dataset: Dataset, config: TrainConfig, name: str) -> int:
    from service.training.compare import render_compare, run_compare
    from service.training.data import stratified_split

    seeds = tuple(range(args.compare_seeds))
    rows = run_compare(dataset, config, args.compare_alphas, seeds, progress=not args.no_progress)
    n_test = len(stratified_split(dataset, config.calibration_fraction, config.test_fraction, 0).test)
    table = render_compare(rows, dataset.name, n_test, config)
    output = args.compare_output or Path(f"{name}-compare.md")
    output.write_text(table, encoding="utf-8")
    print(table)
    print(f"wrote {output}")
    return 0


def _run_inspect(args: argparse.Namespace) -> int:
    from service.card import summary_lines
    from service.inference.artifact import load_artifact

    artifact = load_artifact(args.path)
    if args.json:
        print(artifact.card.to_json())
    else:
        print(f"{artifact.model_path}: verified (card matches the graph's sha256, inputs, outputs and classes)")
        print("\n".join(summary_lines(artifact.card)))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except ServiceError as exc:
        print(f"calibserve {args.command}: error: {exc.message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
