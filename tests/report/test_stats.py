"""The report's statistics against Student's t table and Welch's test worked by hand."""

import pytest

from rlhf_lab.report.stats import Spread, t_quantile, t_two_sided_p, welch


@pytest.mark.parametrize("df, t975", [(1, 12.706), (2, 4.303), (4, 2.776), (10, 2.228), (1000, 1.962)])
def test_t_quantiles_match_the_table(df, t975):
    assert t_quantile(0.975, df) == pytest.approx(t975, abs=1e-3)
    assert t_two_sided_p(t975, df) == pytest.approx(0.05, abs=2e-4)


def test_spread_over_three_seeds_by_hand():
    # mean 0.6, sd sqrt((0.01 + 0.01 + 0) / 2) = 0.1, 95% half-width t_{0.975,2} * 0.1 / sqrt(3) = 4.3027 * 0.057735 = 0.24841
    s = Spread.of([0.5, 0.7, 0.6])
    assert (s.mean, s.sd, s.n) == (pytest.approx(0.6), pytest.approx(0.1), 3)
    assert s.half_width == pytest.approx(0.24841, abs=1e-5)
    assert Spread.of([0.3]).half_width == 0.0


def test_welch_by_hand():
    # means 2 and 5, variances 1 and 1: t = -3 / sqrt(1/3 + 1/3) = -3.6742;
    # df = (2/3)^2 / ((1/3)^2 / 2 + (1/3)^2 / 2) = 4; the table puts |t| = 3.674 at df 4 between
    # p = 0.05 (2.776) and p = 0.02 (3.747): p = 0.0213
    t, df, p = welch([1, 2, 3], [4, 5, 6])
    assert t == pytest.approx(-3.67423, abs=1e-5) and df == pytest.approx(4.0)
    assert p == pytest.approx(0.02131, abs=1e-5)
    assert welch([0.5, 0.7, 0.6], [0.55, 0.9, 0.4])[2] > 0.9  # within the noise
    assert welch([1.0, 1.0], [1.0, 1.0])[2] == 1.0 and welch([1.0, 1.0], [2.0, 2.0])[2] == 0.0
