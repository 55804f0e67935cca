"""Statistics over seeds: mean ± standard deviation, and a paired comparison of two methods.

A multi-task method is worth its cost only if it beats equal weighting by more than the
spread between seeds (Kurin et al. 2022; Xin et al. 2022). Runs of two methods that share a
seed share the data order and the initial weights, so their difference is measured *paired*
by seed: ``d_s = x_s - r_s`` for every seed ``s`` both methods ran, and

- the mean difference ``mean(d)`` and its standard error ``sd(d) / sqrt(n)`` (``sd`` with
  ``n - 1`` in the denominator);
- Student's paired t-test: ``t = mean(d) / (sd(d) / sqrt(n))`` with ``n - 1`` degrees of
  freedom, and its two-sided p-value (SciPy's t distribution). It needs at least two pairs; with
  one, only the difference is reported.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Summary:
    """Mean and sample standard deviation (``n - 1``) of one quantity over ``n`` seeds; the
    standard deviation is ``nan`` for one seed."""

    mean: float
    std: float
    n: int

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class PairedDifference:
    """``x - r`` paired by seed: the mean difference, its standard error, Student's paired t
    statistic, its degrees of freedom and two-sided p-value (``nan`` below two pairs)."""

    mean: float
    standard_error: float
    t: float
    df: int
    p_value: float
    n: int
    test: str = "paired t-test over seeds"

    def as_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


def _sample_std(values: Sequence[float], mean: float) -> float:
    if len(values) < 2:
        return math.nan
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def summarize(values: Sequence[float]) -> Summary:
    """Mean ± sample standard deviation of ``values`` (one per seed)."""
    if not values:
        raise ValueError("summarize needs at least one value.")
    mean = sum(values) / len(values)
    return Summary(mean, _sample_std(values, mean), len(values))


def paired_difference(values: Sequence[float], reference: Sequence[float]) -> PairedDifference:
    """The paired comparison of ``values`` with ``reference`` (same length, same seed at the
    same position); see the module docstring."""
    if len(values) != len(reference) or not values:
        raise ValueError(f"A paired comparison needs one reference value per value, got "
                         f"{len(values)} and {len(reference)}.")
    differences = [x - r for x, r in zip(values, reference)]
    n = len(differences)
    mean = sum(differences) / n
    std = _sample_std(differences, mean)
    error = std / math.sqrt(n) if n > 1 else math.nan
    if n < 2:
        t = p_value = math.nan
    elif error == 0.0:
        t = math.copysign(math.inf, mean) if mean else math.nan
        p_value = 0.0 if mean else 1.0
    else:
        from scipy.stats import t as student_t

        t = mean / error
        p_value = float(2.0 * student_t.sf(abs(t), n - 1))
    return PairedDifference(mean, error, t, n - 1, p_value, n)
