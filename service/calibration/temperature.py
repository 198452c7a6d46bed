"""Temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks"), in pure numpy.

One scalar ``T > 0`` divides the logits; it is fitted by minimising the mean NLL on held-out data.
Dividing by a positive constant never changes the argmax, so accuracy is untouched.

We fit ``u = log T`` rather than ``T``: an unconstrained ``T`` fitted by L-BFGS went negative on a
label-smoothed model and flipped every prediction.  With ``beta = 1/T`` the NLL
``mean(-beta * x_y + logsumexp(beta * x))`` is convex in ``beta`` (log-sum-exp of a linear function minus
a linear function), so as a function of ``u`` it is unimodal and its derivative changes sign at most
once (from negative to positive).  A bracketing Newton/bisection on that derivative therefore finds the
global minimum, or tells us it lies at a bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from service.calibration.validation import validate_labels

__all__ = [
    "FLOAT32_TINY",
    "TemperatureFit",
    "fit_temperature",
    "log_softmax",
    "logits_from_probabilities",
    "nll_at_temperature",
    "nll_log_temperature_derivatives",
    "refit_from_probabilities",
    "softmax",
]


def _validate_logits(logits: NDArray[np.floating[Any]]) -> NDArray[np.float64]:
    arr = np.asarray(logits)
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"logits must be a numeric array, got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)  # float32 logits are computed on in float64
    if arr.ndim != 2:
        raise ValueError(f"logits must have shape [N, K], got ndim={arr.ndim} (shape {arr.shape})")
    if arr.shape[0] == 0:
        raise ValueError("logits is empty: need at least one sample (N > 0)")
    if arr.shape[1] < 2:
        raise ValueError(f"logits must have at least 2 classes (K >= 2), got K={arr.shape[1]}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("logits contains NaN or infinite values")
    return arr


def _validate_temperature(temperature: float) -> float:
    t = float(temperature)
    if not (math.isfinite(t) and t > 0.0):
        raise ValueError(f"temperature must be finite and > 0, got {temperature!r}")
    return t


def _scaled_centered(x: NDArray[np.float64], temperature: float) -> NDArray[np.float64]:
    """``x / T`` shifted so every row's max is 0 (softmax is shift-invariant; exp cannot overflow)."""
    z = x / temperature
    out: NDArray[np.float64] = z - np.max(z, axis=1, keepdims=True)
    return out


def log_softmax(logits: NDArray[np.floating[Any]], temperature: float = 1.0) -> NDArray[np.float64]:
    """Row-wise ``log softmax(logits / T)`` for ``logits`` [N, K] (float32 or float64), in float64.

    Computed as ``z - max(z) - log(sum(exp(z - max(z))))`` so that logits of 1e3 or more neither overflow
    nor lose the log-probabilities of unlikely classes.
    """
    x = _validate_logits(logits)
    zc = _scaled_centered(x, _validate_temperature(temperature))
    out: NDArray[np.float64] = zc - np.log(np.sum(np.exp(zc), axis=1, keepdims=True))
    return out


def softmax(logits: NDArray[np.floating[Any]], temperature: float = 1.0) -> NDArray[np.float64]:
    """Row-wise ``softmax(logits / T)`` for ``logits`` [N, K]; returns probabilities [N, K] in float64.

    Subtracts the row max before ``exp`` (numerically stable for any finite logits); ``T > 0``.
    """
    x = _validate_logits(logits)
    e = np.exp(_scaled_centered(x, _validate_temperature(temperature)))
    out: NDArray[np.float64] = e / np.sum(e, axis=1, keepdims=True)
    return out


def _nll(x: NDArray[np.float64], y: NDArray[np.intp], temperature: float) -> float:
    zc = _scaled_centered(x, temperature)
    lse = np.log(np.sum(np.exp(zc), axis=1))
    return float(np.mean(lse - zc[np.arange(x.shape[0]), y]))


def _derivatives(x: NDArray[np.float64], y: NDArray[np.intp], log_t: float) -> tuple[float, float]:
    """First and second derivative of mean NLL with respect to ``u = log T``.

    With ``z = x e^{-u}`` we have ``dz/du = -z``, hence ``NLL_i = logsumexp(z) - z_y`` gives
    ``dNLL/du = mean(z_y - E_p[z])`` and ``d2NLL/du2 = mean(Var_p[z]) - dNLL/du``.  Both are
    shift-invariant per row, so they are computed on row-centred ``z`` (and the variance as
    ``E_p[(z - E_p z)^2]``) to avoid cancellation with large logits.
    """
    zc = _scaled_centered(x, math.exp(log_t))
    e = np.exp(zc)
    p = e / np.sum(e, axis=1, keepdims=True)
    mean_z = np.sum(p * zc, axis=1)
    var_z = np.sum(p * (zc - mean_z[:, None]) ** 2, axis=1)
    g = float(np.mean(zc[np.arange(x.shape[0]), y] - mean_z))
    h = float(np.mean(var_z)) - g
    return g, h


def nll_at_temperature(
    logits: NDArray[np.floating[Any]], labels: NDArray[np.integer[Any]], temperature: float
) -> float:
    """Mean NLL (nats) of ``softmax(logits / T)`` for ``logits`` [N, K] and ``labels`` [N] ints.

    This is the objective of temperature scaling (Guo et al. 2017), computed with log-sum-exp.
    """
    x = _validate_logits(logits)
    y = validate_labels(labels, n_classes=x.shape[1], n_samples=x.shape[0])
    return _nll(x, y, _validate_temperature(temperature))


def nll_log_temperature_derivatives(
    logits: NDArray[np.floating[Any]], labels: NDArray[np.integer[Any]], log_temperature: float
) -> tuple[float, float]:
    """``(dNLL/dlogT, d2NLL/dlogT2)`` of the mean NLL at ``log T`` for ``logits`` [N, K], ``labels`` [N].

    ``dNLL/dlogT = mean(z_y - sum_k p_k z_k)`` with ``z = logits / T``, ``p = softmax(z)``: a positive
    value means a larger T would raise the NLL.  Exposed so tests can check it against finite
    differences.
    """
    x = _validate_logits(logits)
    y = validate_labels(labels, n_classes=x.shape[1], n_samples=x.shape[0])
    u = float(log_temperature)
    if not math.isfinite(u):
        raise ValueError(f"log_temperature must be finite, got {log_temperature!r}")
    return _derivatives(x, y, u)


@dataclass(frozen=True, slots=True)
class TemperatureFit:
    """Fitted temperature and the held-out NLL before (T = 1) and after scaling."""

    temperature: float
    log_temperature: float
    nll_before: float
    nll_after: float
    iterations: int
    at_bound: bool


def fit_temperature(
    logits: NDArray[np.floating[Any]],
    labels: NDArray[np.integer[Any]],
    log_t_bounds: tuple[float, float] = (-6.0, 6.0),
    tol: float = 1e-10,
    max_iter: int = 200,
) -> TemperatureFit:
    """Fit ``T = exp(u)`` minimising mean NLL of ``softmax(logits / T)`` on held-out data (Guo et al. 2017).

    Input: ``logits`` [N, K] (float32 or float64; *logits*, not probabilities), ``labels`` [N] ints.
    Because the NLL is unimodal in ``u = log T`` (see the module docstring), we bracket the sign change
    of the analytic derivative ``dNLL/du`` within ``log_t_bounds`` and solve it with Newton steps that
    fall back to bisection whenever a step would leave the bracket; this converges to ``tol`` in ``u``.
    If the derivative does not change sign inside the bounds, the minimum is at a bound and that bound is
    returned with ``at_bound=True`` (e.g. a perfectly separable, always-correct set drives T to the lower
    bound).  T may come out below 1 (under-confident, e.g. label-smoothed models on easy data) or above
    1 (over-confident); nothing here assumes either.  If the NLL is flat in T (e.g. all logits equal
    per row), T = 1 (clipped to the bounds) is returned.
    """
    x = _validate_logits(logits)
    y = validate_labels(labels, n_classes=x.shape[1], n_samples=x.shape[0])
    lo, hi = float(log_t_bounds[0]), float(log_t_bounds[1])
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"log_t_bounds must be finite with lower < upper, got {log_t_bounds!r}")
    if not (tol > 0.0):
        raise ValueError(f"tol must be > 0, got {tol!r}")
    if isinstance(max_iter, bool) or max_iter < 1:
        raise ValueError(f"max_iter must be a positive integer, got {max_iter!r}")

    nll_before = _nll(x, y, 1.0)
    g_lo, _ = _derivatives(x, y, lo)
    g_hi, _ = _derivatives(x, y, hi)
    iterations = 0
    at_bound = False
    if g_lo >= 0.0 and g_hi <= 0.0:
        # Derivative is zero across the whole interval (unimodality rules out anything else): flat NLL.
        u = min(max(0.0, lo), hi)
    elif g_lo >= 0.0:
        u, at_bound = lo, True
    elif g_hi <= 0.0:
        u, at_bound = hi, True
    else:
        a, b = lo, hi  # invariant: g(a) < 0 < g(b)
        u = min(max(0.0, a), b) if a < 0.0 < b else 0.5 * (a + b)
        prev_step = b - a
        while iterations < max_iter:
            iterations += 1
            g, h = _derivatives(x, y, u)
            if g == 0.0:
                break
            if g < 0.0:
                a = u
            else:
                b = u
            u_new = u - g / h if h > 0.0 else u
            # Safeguard (as in rtsafe): bisect when Newton leaves the bracket or is not halving the step.
            if not (a < u_new < b) or abs(u_new - u) > 0.5 * prev_step:
                u_new = 0.5 * (a + b)
            prev_step = abs(u_new - u)
            u = u_new
            if prev_step < tol or (b - a) < tol:
                break

    temperature = math.exp(u)
    return TemperatureFit(
        temperature=temperature,
        log_temperature=u,
        nll_before=nll_before,
        nll_after=_nll(x, y, temperature),
        iterations=iterations,
        at_bound=at_bound,
    )


# The smallest normal float32: a stored probability below it (or 0, after underflow) has lost its relative
# precision, and its log is clipped here.
FLOAT32_TINY = float(np.finfo(np.float32).tiny)


def logits_from_probabilities(probabilities: NDArray[np.floating[Any]]) -> NDArray[np.float64]:
    """``log p`` of probabilities as a model served them, ``p = softmax(z / T)``: equal to ``z / T`` up to one
    constant per row, which softmax ignores, so a temperature ``t`` fitted on them is a new temperature
    ``T * t`` for the original logits ``z``.

    What float32 storage costs: a stored ``p >= FLOAT32_TINY`` (~1.18e-38) carries a relative error of at most
    2^-24, so its log is off by at most ~6e-8 (absolute), against logit gaps that are ordinarily 1-100: the
    refit on stored probabilities then matches the refit on true logits to ~1e-6 in T (tested). Below it
    (underflow, a class the model ruled out by more than ~87 nats at T), ``log p`` is clipped at
    ``log(FLOAT32_TINY)`` ~ -87.3, so the refit sees that class at most 87.3 nats below the top one: it weighs
    at most ``exp(-87.3 / t)`` (relative to the top class) in the softmax at the new factor ``t``, which is below
    1e-6 while ``t < 6`` and matters only when the refit must flatten the model by more than that. Measured
    (tested): logits of s.d. 60 served at T = 1, most classes underflowed, refit ``t`` ~ 8: 0.17% off the
    refit on true logits.
    """
    p = np.asarray(probabilities, dtype=np.float64)
    return np.log(np.maximum(p, FLOAT32_TINY))


def refit_from_probabilities(
    probabilities: NDArray[np.floating[Any]], labels: NDArray[np.integer[Any]], served_temperature: float
) -> tuple[float, TemperatureFit]:
    """(the new temperature for the original logits, the fit of the factor ``t`` on top of the served one).

    ``probabilities`` [N, K] are what the model served (softmax of its logits at ``served_temperature``),
    e.g. as the prediction log stored them; see :func:`logits_from_probabilities` for why a scale on their
    logarithms is a temperature, and how far float32 storage moves it.
    """
    _validate_temperature(served_temperature)
    fit = fit_temperature(logits_from_probabilities(probabilities), labels)
    return served_temperature * fit.temperature, fit
