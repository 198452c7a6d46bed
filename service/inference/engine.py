"""Calibrated inference: one onnxruntime call per batch, then vectorised trust metadata from the card.

The graph already applies the temperature; everything added here (prediction sets, expected accuracy,
entropy, margin, abstention) is derived from the probabilities and the card with whole-array numpy,
never a Python loop over classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from service.calibration.binomial import binomial_tail, clopper_pearson_lower, samples_for_lower_bound
from service.calibration.conformal import CoverageGivenCard, coverage_given_card
from service.calibration.metrics import ReliabilityBin, bin_indices
from service.calibration.reference import SelectiveRow
from service.card import LOGITS_OUTPUT, PROBABILITIES_OUTPUT, CalibrationCard
from service.errors import ConfigurationError, InvalidInput
from service.inference.artifact import LoadedArtifact
from service.inference.inputs import InputSignature
from service.inference.summary import TrustSummary, trust_summary


@dataclass(frozen=True, slots=True)
class AccuracyBand:
    """Neighbouring reliability bins merged until they hold enough test samples to quote an accuracy."""

    lower: float
    upper: float
    accuracy: float | None
    support: int
    accuracy_low: float | None
    accuracy_high: float | None
    mean_confidence: float | None = None

    @property
    def gap(self) -> tuple[float, float, float] | None:
        """The band's calibration gap on the test split, accuracy minus mean confidence, with its interval."""
        if self.accuracy is None or self.accuracy_low is None or self.accuracy_high is None:
            return None
        if self.mean_confidence is None:
            return None
        centre = self.mean_confidence
        return self.accuracy - centre, self.accuracy_low - centre, self.accuracy_high - centre


# 95% two-sided for the band's gap: at 90% the quoted intervals covered 0.898-0.927 of a calibrated model's
# predictions in simulation (card to card, all of a band's rows share one gap), short of the 90% the README
# promises; at 95% they cover 0.95-0.97 (tests/inference/test_expected_accuracy.py).
EXPECTED_ACCURACY_Z = 1.959963984540054


def wilson_interval(correct: float, n: int, z: float = 1.6448536269514722) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (90% by default; Wilson 1927).

    Chosen over the normal approximation because bands are small and accuracies near 1, where the
    normal interval collapses to a point or leaves [0, 1].
    """
    p = correct / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


@dataclass(frozen=True, slots=True)
class BatchPrediction:
    """Per-row arrays for one batch; ``band_index`` points into ``InferenceEngine.bands``."""

    logits: NDArray[np.float32]
    probabilities: NDArray[np.float64]
    class_index: NDArray[np.intp]
    confidence: NDArray[np.float64]
    prediction_set: NDArray[np.bool_]
    band_index: NDArray[np.intp]
    expected_accuracy: NDArray[np.float64]  # [N, 3]: see InferenceEngine.expected_accuracy
    entropy: NDArray[np.float64]
    margin: NDArray[np.float64]
    abstain: NDArray[np.bool_]
    coverage: float
    broken: NDArray[np.bool_]

    def __len__(self) -> int:
        return len(self.class_index)

    def rows(self, start: int, stop: int, coverage: float) -> BatchPrediction:
        """Rows ``start:stop`` (views, no copies): one request's share of a micro-batch."""
        return BatchPrediction(
            logits=self.logits[start:stop],
            probabilities=self.probabilities[start:stop],
            class_index=self.class_index[start:stop],
            confidence=self.confidence[start:stop],
            prediction_set=self.prediction_set[start:stop],
            band_index=self.band_index[start:stop],
            expected_accuracy=self.expected_accuracy[start:stop],
            entropy=self.entropy[start:stop],
            margin=self.margin[start:stop],
            abstain=self.abstain[start:stop],
            coverage=coverage,
            broken=self.broken[start:stop],
        )


def accuracy_bands(card: CalibrationCard, min_support: int) -> tuple[tuple[AccuracyBand, ...], NDArray[np.intp]]:
    """Merge the card's after-T reliability bins left to right until each band has ``min_support`` samples.

    Returns the bands and, for each of the card's bins, the band it belongs to. Merging adjacent bins
    keeps the accuracies monotone wherever the card's own bins are (a weighted mean of a run of a
    monotone sequence stays between its neighbours' means). A final band short of support joins the one
    before it; a card with fewer samples than ``min_support`` in total gives one band.
    """
    return bands_from_bins(card.test.after_temperature.reliability, min_support)


def bands_from_bins(
    bins: Sequence[ReliabilityBin], min_support: int
) -> tuple[tuple[AccuracyBand, ...], NDArray[np.intp]]:
    """``accuracy_bands`` on reliability bins of any source (the card's, or a simulation's)."""
    groups: list[list[int]] = [[]]
    support = 0
    for i, bin_ in enumerate(bins):
        groups[-1].append(i)
        support += bin_.count
        if support >= min_support and i < len(bins) - 1:
            groups.append([])
            support = 0
    if len(groups) > 1 and sum(bins[i].count for i in groups[-1]) < min_support:
        groups[-2].extend(groups.pop())
    bands = []
    band_of_bin = np.empty(len(bins), dtype=np.intp)
    for band, members in enumerate(groups):
        count = sum(bins[i].count for i in members)
        correct = sum((bins[i].accuracy or 0.0) * bins[i].count for i in members)
        confidence = sum((bins[i].mean_confidence or 0.0) * bins[i].count for i in members)
        low, high = wilson_interval(correct, count, EXPECTED_ACCURACY_Z) if count else (None, None)
        bands.append(
            AccuracyBand(
                bins[members[0]].lower,
                bins[members[-1]].upper,
                correct / count if count else None,
                count,
                low,
                high,
                confidence / count if count else None,
            )
        )
        band_of_bin[members] = band
    return tuple(bands), band_of_bin


# One-sided confidence of the accuracy claim behind CALIBSERVE_TARGET_ACCURACY.
TARGET_CONFIDENCE = 0.95


def abstain_threshold(card: CalibrationCard, abstain_below: float | None, target_accuracy: float | None) -> float:
    """Confidence below which predictions are flagged ``abstain`` (0.0: never).

    With ``target_accuracy``: the lowest threshold of the card's selective table at which the accuracy of
    kept predictions is shown to reach the target at 95% confidence, by a one-sided Clopper–Pearson lower
    bound (Clopper & Pearson 1934) on ``round(accuracy * n)`` correct of the ``n`` kept test samples. The
    point estimate alone picked a threshold whose true accuracy was below target for about half of the
    cards (tests/inference/test_target_accuracy.py). Thresholds are tested from the strictest down and the
    walk stops at the first that fails (fixed-sequence testing: Angelopoulos, Bates, Candès, Jordan & Lei
    2021, "Learn then Test"), so the chance that the chosen threshold's accuracy is below target stays at
    most 5% however many thresholds the table has.
    """
    if abstain_below is not None:
        return abstain_below
    if target_accuracy is None:
        return 0.0
    rows = sorted((row for row in card.selective if row.accuracy is not None and row.n > 0), key=lambda r: -r.threshold)
    chosen: SelectiveRow | None = None
    for row in rows:
        if not _shows_accuracy(row, target_accuracy):
            break
        chosen = row
    if chosen is None:
        needed = samples_for_lower_bound(target_accuracy, TARGET_CONFIDENCE)
        need = (
            "no finite test split can show an accuracy of 1"
            if needed is None
            else f"even with every kept prediction right, showing {target_accuracy} needs at least {needed} "
            f"kept test samples (n >= log(0.05) / log(target)), more if any is wrong; the card's test split has "
            f"{card.dataset.n_test}"
        )
        if not rows:
            raise ConfigurationError(
                f"target accuracy {target_accuracy} cannot be checked: the card's selective table has no row with "
                f"kept test samples; {need}"
            )
        strictest = rows[0]
        correct, kept = _selective_counts(strictest)
        raise ConfigurationError(
            f"target accuracy {target_accuracy} is not reached with {TARGET_CONFIDENCE:.0%} confidence by the "
            f"card's selective table: at its strictest threshold, confidence >= {strictest.threshold}, {correct} of "
            f"{kept} kept test samples are right, a one-sided Clopper–Pearson lower bound of "
            f"{selective_lower_bound(strictest):.4f} (thresholds are tried from the strictest down and the first "
            f"one short of the target ends the search); {need}"
        )
    return chosen.threshold


def _selective_counts(row: SelectiveRow) -> tuple[int, int]:
    """(correct, kept) of a selective row: the card stores the accuracy and n, so correct = round(accuracy * n)."""
    if row.accuracy is None or row.n == 0:
        return 0, row.n
    return min(row.n, max(0, round(row.accuracy * row.n))), row.n


def _shows_accuracy(row: SelectiveRow, target: float, confidence: float = TARGET_CONFIDENCE) -> bool:
    """Whether the row's Clopper–Pearson lower bound reaches ``target``, without computing the bound: the bound
    is >= target exactly when the exact one-sided test rejects accuracy = target, P(Binomial(n, target) >=
    correct) <= 1 - confidence (the tail grows with p)."""
    correct, kept = _selective_counts(row)
    if kept == 0 or correct == 0:
        return False
    return binomial_tail(kept, target, correct) <= 1.0 - confidence


def selective_lower_bound(row: SelectiveRow, confidence: float = TARGET_CONFIDENCE) -> float:
    """One-sided Clopper–Pearson lower bound on the accuracy of the predictions a selective row keeps."""
    correct, kept = _selective_counts(row)
    return clopper_pearson_lower(correct, kept, confidence) if kept else 0.0


class InferenceEngine:
    """An onnxruntime session over a verified artifact, plus the card-derived lookups used per request."""

    def __init__(
        self,
        artifact: LoadedArtifact,
        *,
        name: str | None = None,
        abstain_below: float | None = None,
        target_accuracy: float | None = None,
        min_bin_support: int = 10,
        conformal_guarantee: Literal["marginal", "pac"] = "marginal",
        threads: int = 1,
    ) -> None:
        self.card = artifact.card
        self.name = name or self.card.name  # the name it is served by (a repository's directory), in every answer
        # What every protocol decodes requests into: the input's name, dtype and instance shape.
        self.signature = InputSignature.of(self.card.io)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._session = ort.InferenceSession(artifact.model_bytes, options, providers=["CPUExecutionProvider"])
        self.bands, self._band_of_bin = accuracy_bands(self.card, min_bin_support)
        # Per band: its calibration gap and the gap's interval (NaN where a band has no test samples).
        self.band_gap = np.array([b.gap if b.gap is not None else (np.nan,) * 3 for b in self.bands], dtype=np.float64)
        self.abstain_threshold = abstain_threshold(self.card, abstain_below, target_accuracy)
        self.conformal_guarantee = conformal_guarantee
        self.pac_delta: float | None = None
        self._conformal: dict[float, float] = {}
        # What each level's threshold promises for this one card (computed once: n and the rank suffice).
        self.coverage_given_card: dict[float, CoverageGivenCard] = {}
        for level in self.card.conformal:
            threshold, rank = level.threshold, None
            if conformal_guarantee == "pac":
                if level.pac is None:
                    raise ConfigurationError(
                        f"CALIBSERVE_CONFORMAL_GUARANTEE=pac, but the card of {self.card.name!r} has no PAC "
                        "conformal thresholds (it predates them): retrain it, or use 'marginal'",
                        {"setting": "conformal_guarantee"},
                    )
                threshold, rank, self.pac_delta = level.pac.threshold, level.pac.rank, level.pac.delta
            self._conformal[level.coverage] = threshold
            self.coverage_given_card[level.coverage] = coverage_given_card(
                level.n_calibration, level.coverage, rank=rank
            )
        # The trust figures of every answer, per level: built here once, formatted by each protocol.
        self.summaries: dict[float, TrustSummary] = {
            coverage: trust_summary(
                self.name, self.card, coverage, given, self.abstain_threshold, conformal_guarantee, self.pac_delta
            )
            for coverage, given in self.coverage_given_card.items()
        }
        self.classes = np.asarray(self.card.classes)

    def expected_accuracy(self, confidence: NDArray[np.float64], band_index: NDArray[np.intp]) -> NDArray[np.float64]:
        """Per row: the accuracy to expect at this confidence and its interval, as [N, 3] (value, low, high).

        The row's own calibrated confidence, corrected by the calibration gap its band showed on the test
        split (accuracy minus mean confidence, with the gap's 95% Wilson interval). Quoting the band's accuracy
        instead told a row at confidence 0.948 "0.997 [0.987, 0.999]", because the top band [0.933, 1] holds
        mostly rows near 1; held-out digits at that confidence were right 0.962 of the time. After temperature
        scaling the confidence is the best per-row estimate, and the band's gap says how far the card found it
        off. Coverage of the true accuracy at each confidence, measured in simulation: tests/inference/
        test_expected_accuracy.py. NaN where the band had no test samples.
        """
        table = confidence[:, None] + self.band_gap[band_index]
        return np.clip(table, 0.0, 1.0)

    @property
    def coverages(self) -> tuple[float, ...]:
        return tuple(sorted(self._conformal))

    @property
    def default_coverage(self) -> float:
        """The level a request without ``coverage`` gets, on every protocol: the card's lowest (its least
        conservative sets). A fixed 0.9 made ``/v1`` answer 422 to a bare request for a card without 0.9."""
        return min(self._conformal)

    def resolve_coverage(self, coverage: float | None) -> float:
        """The card's conformal level equal to ``coverage`` (to 1e-9), or the default for None; 422 naming the
        levels otherwise."""
        if coverage is None:
            return self.default_coverage
        for level in self._conformal:
            if abs(level - coverage) < 1e-9:
                return level
        available = ", ".join(f"{c:g}" for c in self.coverages)
        raise InvalidInput(
            f"coverage {coverage:g} is not available; this model's card has conformal levels {available}",
            {"field": "coverage", "allowed": list(self.coverages)},
        )

    def conformal_threshold(self, coverage: float) -> float:
        return self._conformal[self.resolve_coverage(coverage)]

    def run(self, features: NDArray[Any]) -> tuple[NDArray[np.float32], NDArray[np.float64]]:
        """Logits and probabilities straight from the graph (float64 probabilities, renormalised rows)."""
        logits, probs, broken = self._run_graph(self._input(features))
        if broken.any():
            raise _overflow_error(np.flatnonzero(broken))
        return logits, probs

    def _run_graph(self, features: NDArray[Any]) -> tuple[NDArray[np.float32], NDArray[np.float64], NDArray[np.bool_]]:
        """One onnxruntime call on ``[N, *instance]`` of the declared dtype (``_input``); rows whose output is
        not finite are flagged, not raised, so that a batch of several requests can fail only the request
        that owns them."""
        logits, probabilities = self._session.run(
            [LOGITS_OUTPUT, PROBABILITIES_OUTPUT], {self.signature.name: np.ascontiguousarray(features)}
        )
        probs = np.asarray(probabilities, dtype=np.float64)
        broken: NDArray[np.bool_] = np.asarray(~np.isfinite(probs).all(axis=1))
        if broken.any():
            probs[broken] = 1.0 / probs.shape[1]  # placeholder so the vectorised metadata stays finite
        probs /= probs.sum(axis=1, keepdims=True)  # float32 rows sum to 1 +- 1e-7; make it exact in float64
        return np.asarray(logits), probs, broken

    def predict(self, features: NDArray[Any], coverage: float | None = None) -> BatchPrediction:
        """Predict one request's rows; a row the graph overflows on fails the request (422)."""
        outcome = self.predict_many([(features, self.resolve_coverage(coverage))])[0]
        if isinstance(outcome, InvalidInput):
            raise outcome
        return outcome

    def predict_many(self, requests: Sequence[tuple[NDArray[Any], float]]) -> list[BatchPrediction | InvalidInput]:
        """Several requests' rows through one onnxruntime call, split back in order.

        Each request's outcome is its own: a prediction identical to predicting it alone, or the
        ``InvalidInput`` that it alone caused (bad shape, unknown coverage, rows that overflow the graph).
        Errors that are not the requests' fault (the session failing) propagate to the caller, who owes
        them to every request of the batch. Requests whose instances differ in a free dimension (a
        sequence length) cannot share a tensor: each such group gets its own call.
        """
        outcomes: list[BatchPrediction | InvalidInput | None] = [None] * len(requests)
        groups: dict[tuple[int, ...], list[tuple[int, float, NDArray[Any]]]] = {}  # instance shape -> requests
        for i, (features, coverage) in enumerate(requests):
            try:
                resolved, prepared = self._check_request(features, coverage)
            except InvalidInput as error:
                outcomes[i] = error
                continue
            groups.setdefault(prepared.shape[1:], []).append((i, resolved, prepared))
        for valid in groups.values():
            parts = [prepared for _, _, prepared in valid]
            stacked = parts[0] if len(parts) == 1 else np.concatenate(parts)
            sizes = [len(part) for part in parts]
            thresholds = np.repeat([self._conformal[coverage] for _, coverage, _ in valid], sizes)
            whole = self._describe(*self._run_graph(stacked), thresholds)
            for (i, coverage, _), (start, stop) in zip(valid, _spans(sizes), strict=True):
                part = whole.rows(start, stop, coverage)
                outcomes[i] = _overflow_error(np.flatnonzero(part.broken)) if part.broken.any() else part
        return [outcome for outcome in outcomes if outcome is not None]

    def _check_request(self, features: NDArray[Any], coverage: float) -> tuple[float, NDArray[Any]]:
        """The request's resolved coverage level and its input; ``InvalidInput`` if it cannot join a batch."""
        return self.resolve_coverage(coverage), self._input(features)

    def _input(self, features: NDArray[Any]) -> NDArray[Any]:
        """``features`` as the graph takes them: ``[N, *instance]`` of the declared dtype. The routes' codecs
        hand over exactly that (nothing to do); other callers' arrays (a float64 matrix) are converted by the
        same rule as a request's values, never cast blindly (a float to an integer input must be whole)."""
        self.signature.check_batch_shape(features.shape, "features", "instances")
        if features.dtype != self.signature.dtype:
            return self.signature.convert(features)
        return features

    def _describe(
        self,
        logits: NDArray[np.float32],
        probs: NDArray[np.float64],
        broken: NDArray[np.bool_],
        thresholds: NDArray[np.float64],
    ) -> BatchPrediction:
        """The trust metadata of every row at once (per-row conformal thresholds: rows of several requests)."""
        rows = np.arange(len(probs))
        class_index = probs.argmax(axis=1)
        confidence = probs[rows, class_index]
        top_two = np.partition(probs, -2, axis=1)[:, -2:] if probs.shape[1] > 1 else np.zeros((len(probs), 2))
        with np.errstate(divide="ignore", invalid="ignore"):
            entropy = -np.where(probs > 0, probs * np.log(probs), 0.0).sum(axis=1)
        prediction_set = probs >= thresholds[:, None]  # LAC sets, as calibration.conformal.prediction_sets
        prediction_set[rows, class_index] = True
        band_index = self._band_of_bin[bin_indices(confidence, len(self._band_of_bin))]
        return BatchPrediction(
            logits=logits,
            probabilities=probs,
            class_index=class_index,
            confidence=confidence,
            prediction_set=prediction_set,
            band_index=band_index,
            expected_accuracy=self.expected_accuracy(confidence, band_index),  # once per micro-batch
            entropy=entropy,
            margin=top_two[:, 1] - top_two[:, 0],
            abstain=confidence < self.abstain_threshold,
            coverage=float("nan"),
            broken=broken,
        )


def _spans(sizes: Sequence[int]) -> list[tuple[int, int]]:
    ends = np.cumsum(sizes).tolist()
    return [(end - size, end) for size, end in zip(sizes, ends, strict=True)]


def _overflow_error(rows: NDArray[np.intp]) -> InvalidInput:
    shown = rows[:10].tolist()
    return InvalidInput(
        f"instances{shown} drive the model's output to NaN or infinity (float32 overflow inside the "
        "graph): their feature values are far outside anything the model was trained on",
        {"field": "instances", "rows": shown},
    )
