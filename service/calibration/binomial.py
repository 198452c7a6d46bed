"""Exact binomial tails and integer-parameter Beta distributions, in pure numpy.

Two trust figures need them: the coverage of a split-conformal set *given one calibration set* is
Beta-distributed (:mod:`service.calibration.conformal`), and a selective-prediction accuracy needs a
one-sided Clopper–Pearson bound (``service.inference.engine``). Both only ever need Beta(a, b) with
integer a, b >= 1, whose CDF is a binomial tail:

    P(Beta(a, b) <= x) = P(Binomial(a + b - 1, x) >= a)

(the k-th smallest of n uniforms is below x iff at least k of them are; e.g. Johnson, Kemp & Kotz,
"Univariate Discrete Distributions", 3rd ed., section 3.8.3). scipy is only a dev dependency of the
service, so the tail is summed here in log space from log-factorials: exact to float rounding, O(n).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["beta_cdf", "beta_quantile", "binomial_tail", "clopper_pearson_lower", "samples_for_lower_bound"]


def _log_pmf(n: int, p: float) -> np.ndarray:
    """log P(Binomial(n, p) = j) for j = 0..n, 0 < p < 1."""
    log_factorial = np.concatenate(([0.0], np.cumsum(np.log(np.arange(1, n + 1, dtype=np.float64)))))
    j = np.arange(n + 1, dtype=np.float64)
    result: np.ndarray = (
        log_factorial[n] - log_factorial - log_factorial[::-1] + j * math.log(p) + (n - j) * math.log1p(-p)
    )
    return result


def binomial_tail(n: int, p: float, k: int) -> float:
    """``P(Binomial(n, p) >= k)``, exact (log-space sum of the pmf)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p!r}")
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    if p == 0.0:
        return 0.0
    if p == 1.0:
        return 1.0
    log_pmf = _log_pmf(n, p)[k:]
    top = float(log_pmf.max())
    return float(min(1.0, math.exp(top) * float(np.exp(log_pmf - top).sum())))


def beta_cdf(x: float, a: int, b: int) -> float:
    """``P(Beta(a, b) <= x)`` for integers ``a, b >= 1`` (the binomial-tail identity above)."""
    if a < 1 or b < 1:
        raise ValueError(f"a and b must be integers >= 1, got a={a}, b={b}")
    return binomial_tail(a + b - 1, min(max(float(x), 0.0), 1.0), a)


def beta_quantile(q: float, a: int, b: int) -> float:
    """The ``q``-quantile of Beta(a, b), integers ``a, b >= 1``, by bisection on :func:`beta_cdf` (to 1e-12)."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"q must be in (0, 1), got {q!r}")
    low, high = 0.0, 1.0
    while high - low > 1e-12:
        middle = 0.5 * (low + high)
        if beta_cdf(middle, a, b) < q:
            low = middle
        else:
            high = middle
    return 0.5 * (low + high)


def clopper_pearson_lower(successes: int, n: int, confidence: float = 0.95) -> float:
    """One-sided Clopper–Pearson lower confidence bound for a binomial proportion (Clopper & Pearson 1934).

    The smallest ``p`` not rejected by the exact one-sided test: ``P(Binomial(n, p) >= successes) = 1 -
    confidence``, i.e. the ``(1 - confidence)``-quantile of Beta(successes, n - successes + 1); 0 when there
    are no successes. It holds at its level for every ``p`` and ``n`` (conservative, never anti-conservative),
    which is what a claim such as "kept predictions are at least 99% right" needs at n in the hundreds,
    where the normal and Wilson intervals are not guaranteed.
    """
    if n < 1 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n and n >= 1, got successes={successes}, n={n}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    if successes == 0:
        return 0.0
    return beta_quantile(1.0 - confidence, successes, n - successes + 1)


def samples_for_lower_bound(target: float, confidence: float = 0.95) -> int | None:
    """The fewest samples, all correct, whose Clopper–Pearson lower bound reaches ``target``.

    With ``n`` successes out of ``n`` the bound is ``(1 - confidence) ** (1 / n)``, so it needs
    ``n >= log(1 - confidence) / log(target)``; ``None`` when no finite ``n`` does (``target`` = 1).
    """
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target must be in (0, 1], got {target!r}")
    if target >= 1.0:
        return None
    n = max(1, math.ceil(math.log(1.0 - confidence) / math.log(target) - 1e-9))
    while (1.0 - confidence) ** (1.0 / n) < target:  # guard the ceil against rounding
        n += 1
    return n
