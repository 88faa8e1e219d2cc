"""Statistics of the comparison: mean ± std over seeds, Student-t intervals, paired differences, bootstrap.

Three questions, three tools (all at 95% by default):

- *How well does a run do?* :func:`describe`: mean and sample standard deviation (``ddof=1``) of a
  metric over the seeds, and the Student-t confidence interval of the mean,
  ``mean ± t(1 - α/2, n - 1) · std / sqrt(n)`` (e.g. Wasserman, *All of Statistics*, 2004, §10.2; the
  t quantile from ``scipy.stats.t.ppf``). With one seed there is no interval (reported as such, never
  as ± 0).
- *Is run A better than run B, given the training randomness?* :func:`paired_difference`: the two runs
  share their seeds (same initialisation, data order and batches per seed), so the per-seed differences
  ``d_s = A_s - B_s`` are the paired observations; their mean gets the same t interval
  (the paired t-test; Dietterich 1998, "Approximate statistical tests for comparing supervised
  classification learning algorithms", discusses its use over training runs).
- *Is the difference more than test-set luck?* :func:`paired_bootstrap`: a paired bootstrap over test
  clips (Efron & Tibshirani, *An Introduction to the Bootstrap*, 1993, ch. 13 percentile interval;
  Koehn 2004, "Statistical significance tests for machine translation evaluation", for the paired
  form): resample the test clips with replacement, recompute the difference of the seed-averaged top-1
  of A and B on the same resampled clips, and take the 2.5 / 97.5 percentiles.

A difference is called significant only when its interval excludes zero (:func:`verdict`); otherwise it
is "no significant difference". NaN values (a metric that could not be computed for a seed) are left
out and the count ``n`` says how many values remain.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
from scipy import stats as _st

from xmkd.errors import DataError

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0

WIN = "win"
LOSS = "loss"
NO_DIFFERENCE = "no significant difference"
NO_INTERVAL = "no interval (one seed)"
NO_DATA = "no data"


class _Interval:
    """The interval part shared by :class:`Estimate` and :class:`BootstrapResult` (fields ``ci_low``, ``ci_high``)."""

    ci_low: float
    ci_high: float

    @property
    def half_width(self) -> float:
        """Half-width of the interval (NaN when there is none)."""
        return (self.ci_high - self.ci_low) / 2

    @property
    def has_interval(self) -> bool:
        """True when the interval is defined (finite bounds)."""
        return math.isfinite(self.ci_low) and math.isfinite(self.ci_high)


@dataclass(frozen=True)
class Estimate(_Interval):
    """Mean of a set of values with its spread and confidence interval.

    Attributes:
        mean: mean of the finite values (NaN when there are none).
        std: sample standard deviation, ``ddof=1`` (NaN when ``n < 2``).
        ci_low, ci_high: the confidence interval of the mean (NaN when ``n < 2``).
        n: number of finite values used.
        confidence: the interval's confidence level, e.g. 0.95.
    """

    mean: float
    std: float
    ci_low: float
    ci_high: float
    n: int
    confidence: float = CONFIDENCE


@dataclass(frozen=True)
class PairedDifference:
    """Difference ``a - b`` of two runs over their common seeds (paired), plus an optional bootstrap.

    Attributes:
        a, b: names of the two runs compared.
        metric: metric key, e.g. ``"top1"``.
        seeds: the seeds paired (those where both values are finite), ascending.
        diffs: per-seed differences ``a_s - b_s``, aligned with ``seeds``.
        seed_estimate: :class:`Estimate` of the mean difference over seeds (t interval).
        bootstrap: :class:`BootstrapResult` over test clips, or ``None`` when not computed.
    """

    a: str
    b: str
    metric: str
    seeds: tuple[int, ...]
    diffs: tuple[float, ...]
    seed_estimate: Estimate
    bootstrap: BootstrapResult | None = None

    @property
    def seed_verdict(self) -> str:
        """:func:`verdict` of the seed-paired t interval."""
        return verdict(self.seed_estimate)

    @property
    def bootstrap_verdict(self) -> str:
        """:func:`verdict` of the bootstrap interval (``NO_DATA`` when there is no bootstrap)."""
        return verdict(self.bootstrap) if self.bootstrap is not None else NO_DATA


@dataclass(frozen=True)
class BootstrapResult(_Interval):
    """Paired bootstrap over test clips of the difference of seed-averaged top-1 (fractions).

    Attributes:
        mean: the observed difference on all test clips.
        ci_low, ci_high: percentile interval over the resamples.
        n: number of test clips; resamples: number of bootstrap resamples; seed: their RNG seed.
        confidence: the interval's confidence level.
    """

    mean: float
    ci_low: float
    ci_high: float
    n: int
    resamples: int
    seed: int
    confidence: float = CONFIDENCE


def _finite(values: Iterable[float | None]) -> np.ndarray:
    arr = np.array([np.nan if v is None else float(v) for v in values], dtype=float)
    return arr[np.isfinite(arr)]


def t_quantile(n: int, confidence: float = CONFIDENCE) -> float:
    """Two-sided Student-t quantile ``t(1 - α/2, n - 1)`` for a mean of ``n`` values (``n >= 2``).

    Raises:
        ValueError: ``n < 2`` or ``confidence`` not in (0, 1).
    """
    if n < 2:
        raise ValueError(f"a t interval needs at least 2 values, got n={n}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return float(_st.t.ppf(0.5 + confidence / 2, df=n - 1))


def describe(values: Iterable[float | None], confidence: float = CONFIDENCE) -> Estimate:
    """Mean, std (``ddof=1``) and Student-t confidence interval of the mean of ``values``.

    Args:
        values: per-seed values (any unit; NaN / None are left out).
        confidence: confidence level of the interval.

    Returns:
        An :class:`Estimate`; ``n`` = number of finite values. ``n == 0``: everything NaN. ``n == 1``:
        the value as mean, std and interval NaN (one seed gives no interval).
    """
    x = _finite(values)
    n = len(x)
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, math.nan, 0, confidence)
    mean = float(x.mean())
    if n == 1:
        return Estimate(mean, math.nan, math.nan, math.nan, 1, confidence)
    std = float(x.std(ddof=1))
    half = t_quantile(n, confidence) * std / math.sqrt(n)
    return Estimate(mean, std, mean - half, mean + half, n, confidence)


def verdict(est: Estimate | BootstrapResult | None) -> str:
    """Classify a difference ``a - b`` by its interval.

    Returns:
        ``"win"`` (interval entirely above 0), ``"loss"`` (entirely below 0), ``"no significant
        difference"`` (the interval contains 0), ``"no interval (one seed)"`` (a mean but no interval),
        or ``"no data"`` (no finite value).
    """
    if est is None or not math.isfinite(est.mean):
        return NO_DATA
    if not est.has_interval:
        return NO_INTERVAL
    if est.ci_low > 0:
        return WIN
    if est.ci_high < 0:
        return LOSS
    return NO_DIFFERENCE


def paired_difference(
    a: Mapping[int, float | None],
    b: Mapping[int, float | None],
    names: tuple[str, str] = ("a", "b"),
    metric: str = "",
    confidence: float = CONFIDENCE,
) -> PairedDifference:
    """Paired difference ``a_s - b_s`` over the seeds both runs have a finite value for.

    Args:
        a, b: seed -> metric value of the two runs (same seed = same initialisation and data order).
        names: display names of (a, b). metric: the metric key, for the record.
        confidence: confidence level of the t interval.

    Returns:
        A :class:`PairedDifference` (no bootstrap; attach one with ``dataclasses.replace``). Seeds
        present in only one run, or NaN in either, are left out.
    """

    def ok(v: float | None) -> bool:
        return v is not None and math.isfinite(float(v))

    seeds = tuple(sorted(s for s in a if s in b and ok(a[s]) and ok(b[s])))
    diffs = tuple(float(a[s]) - float(b[s]) for s in seeds)  # type: ignore[arg-type]
    return PairedDifference(names[0], names[1], metric, seeds, diffs, describe(diffs, confidence))


def paired_bootstrap(
    correct_a: np.ndarray,
    correct_b: np.ndarray,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    confidence: float = CONFIDENCE,
    chunk: int = 500,
) -> BootstrapResult:
    """Paired bootstrap over test clips of the difference of seed-averaged top-1.

    For clip ``i``, ``acc_a[i]`` = fraction of A's seeds that classify it correctly (same for B). Each
    resample draws ``N`` clip indices with replacement (``numpy.random.default_rng(seed)``) and takes
    ``mean(acc_a[idx]) - mean(acc_b[idx])``: the same clips for both runs (paired). The interval is the
    percentile interval of the resampled differences.

    Args:
        correct_a: (S_a, N) bool, 1 where seed s of run A predicts clip i correctly.
        correct_b: (S_b, N) bool, same clips in the same order (S_b may differ from S_a).
        resamples: number of bootstrap resamples (10,000 by default).
        seed: RNG seed of the resampling (fixed: the report is reproducible).
        confidence: confidence level of the percentile interval.
        chunk: resamples drawn at a time (memory: chunk x N int64).

    Returns:
        A :class:`BootstrapResult` (fractions; ``mean`` = the difference on all clips).

    Raises:
        DataError: the arrays are not 2-D, hold no clip, or are not on the same number of clips.
    """
    ca, cb = np.asarray(correct_a, dtype=float), np.asarray(correct_b, dtype=float)
    if ca.ndim != 2 or cb.ndim != 2 or ca.shape[1] != cb.shape[1] or ca.shape[1] == 0 or 0 in (len(ca), len(cb)):
        raise DataError(
            f"paired bootstrap needs (seeds, clips) arrays on the same clips, got {ca.shape} and {cb.shape}: "
            "re-run the distill stages of both runs so their predictions cover the same test clips."
        )
    d = ca.mean(axis=0) - cb.mean(axis=0)  # (N,) per-clip difference of seed-averaged correctness
    n = d.shape[0]
    rng = np.random.default_rng(seed)
    out = np.empty(resamples, dtype=float)
    for start in range(0, resamples, chunk):
        m = min(chunk, resamples - start)
        idx = rng.integers(0, n, size=(m, n))  # (m, N)
        out[start : start + m] = d[idx].mean(axis=1)
    alpha = 1.0 - confidence
    lo, hi = np.quantile(out, [alpha / 2, 1 - alpha / 2])
    return BootstrapResult(float(d.mean()), float(lo), float(hi), n, resamples, seed, confidence)


def correctness(pred: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(S, N) bool: ``pred[s, i] == labels[i]``.

    Raises:
        DataError: ``pred`` is not (S, N) with N = ``len(labels)``.
    """
    pred, labels = np.asarray(pred), np.asarray(labels)
    if pred.ndim != 2 or labels.ndim != 1 or pred.shape[1] != labels.shape[0]:
        raise DataError(
            f"predictions must be (seeds, clips) with one label per clip, got {pred.shape} and {labels.shape}."
        )
    return pred == labels[None, :]
