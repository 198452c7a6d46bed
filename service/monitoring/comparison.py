"""Champion against challenger on the traffic the champion served: the shadow comparison.

The champion's answers and the challenger's shadow scores share prediction ids in the log, so one read
gives both models' probabilities on the same requests (``PredictionLog.paired_window``), and the labelled
ones with their labels. The statistics are ``service.calibration.paired``'s: a paired bootstrap over the
same requests, and a verdict that names a winner only when ECE and NLL agree (bench/SHADOW_VERDICT.md
measures how often it names one wrongly).
"""

from __future__ import annotations

from dataclasses import dataclass

from service.calibration.paired import AgreementSummary, PairedComparison, compare_paired, compare_unlabelled
from service.errors import StoreUnavailable
from service.monitoring.monitor import Monitor


@dataclass(frozen=True, slots=True)
class ShadowComparison:
    champion: tuple[str, str]  # (name, card version)
    challenger: tuple[str, str]
    labelled: PairedComparison | None  # None: no label for a request both scored yet
    unlabelled: AgreementSummary | None  # None: no request was scored by both yet


def compare_shadow(champion: Monitor, challenger: Monitor, window: int, level: float = 0.95) -> ShadowComparison:
    """The two versions on the last ``window`` requests both scored (and the last ``window`` labelled ones).

    ``StoreUnavailable`` when the log cannot be read; a server that logs nothing has nothing to compare."""
    log = champion.log
    if log is None:
        raise StoreUnavailable("prediction logging is off (CALIBSERVE_LOG_PREDICTIONS=false): nothing to compare")
    log.flush(timeout=2.0)
    keys = (champion.name, champion.card.version), (challenger.name, challenger.card.version)
    pairs = log.paired_window(*keys, champion.card.classes, window)
    labelled = (
        compare_paired(pairs.labelled_champion, pairs.labelled_challenger, pairs.labels, level=level)
        if len(pairs.labels)
        else None
    )
    unlabelled = compare_unlabelled(pairs.champion, pairs.challenger) if len(pairs.champion) else None
    return ShadowComparison(keys[0], keys[1], labelled, unlabelled)
