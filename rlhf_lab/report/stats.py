"""Seeds and noise: a mean over seeds with its 95% interval, and Welch's t-test between two methods.

Student's t distribution comes from the regularised incomplete beta function (a continued fraction,
Numerical Recipes 3rd ed., sec. 6.4), so the report needs the standard library only:

    P(|T| > t) = I_{df / (df + t^2)}(df / 2, 1 / 2)      for T ~ Student's t with df degrees of freedom
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def _continued_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of I_x(a, b), by the modified Lentz method."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        for numerator in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b), for 0 <= x <= 1."""
    if x <= 0.0 or x >= 1.0:
        return 0.0 if x <= 0.0 else 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _continued_fraction(a, b, x) / a
    return 1.0 - front * _continued_fraction(b, a, 1.0 - x) / b


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| > |t|) for Student's t with ``df`` degrees of freedom."""
    return betainc(df / 2.0, 0.5, df / (df + t * t))


def t_quantile(q: float, df: float) -> float:
    """The t with P(T <= t) = q (q > 0.5), by bisection on ``t_two_sided_p``."""
    target, lo, hi = 2.0 * (1.0 - q), 0.0, 1e4
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_two_sided_p(mid, df) > target else (lo, mid)
    return (lo + hi) / 2


@dataclass
class Spread:
    """A metric over seeds: mean, sample standard deviation, count, and the half-width of the 95%
    interval of the mean, t_{0.975, n-1} * sd / sqrt(n) (0 for a single seed)."""

    mean: float
    sd: float
    n: int
    half_width: float

    @classmethod
    def of(cls, values: list[float]) -> Spread:
        n = len(values)
        mean = sum(values) / n
        sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
        return cls(mean, sd, n, t_quantile(0.975, n - 1) * sd / math.sqrt(n) if n > 1 else 0.0)


def welch(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """Welch's t-test of equal means without assuming equal variances: (t, df, two-sided p).

        t = (mean_a - mean_b) / sqrt(s_a^2 / n_a + s_b^2 / n_b)
        df = (s_a^2 / n_a + s_b^2 / n_b)^2 / [(s_a^2 / n_a)^2 / (n_a - 1) + (s_b^2 / n_b)^2 / (n_b - 1)]

    Needs at least 2 values on each side; identical constant samples give p = 1 when the means are
    equal and p = 0 otherwise."""
    sa, sb = Spread.of(a), Spread.of(b)
    va, vb = sa.sd**2 / sa.n, sb.sd**2 / sb.n
    if va + vb == 0:
        return (0.0, math.inf, 1.0) if sa.mean == sb.mean else (math.copysign(math.inf, sa.mean - sb.mean), math.inf, 0.0)
    t = (sa.mean - sb.mean) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (sa.n - 1) + vb**2 / (sb.n - 1))
    return t, df, t_two_sided_p(t, df)
