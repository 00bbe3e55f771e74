"""Best-of-n: the closed-form KL, and the unbiased estimate of the pick's value worked by hand."""

import math

import pytest

from rlhf_lab.lab.best_of_n import expected_best_of_n, kl_best_of_n


@pytest.mark.parametrize("n, kl", [(1, 0.0), (2, math.log(2) - 1 / 2), (4, math.log(4) - 3 / 4), (64, 4.158883 - 0.984375)])
def test_kl_of_best_of_n(n, kl):
    assert kl_best_of_n(n) == pytest.approx(kl, abs=1e-6)  # log n - (n - 1) / n


def test_the_pick_by_hand():
    # three draws, proxy 0.1, 0.5, 0.3 and gold 1, 2, 3. Best of 2 over the three 2-subsets:
    # {0.1, 0.5} -> gold 2, {0.1, 0.3} -> gold 3, {0.5, 0.3} -> gold 2: mean 7/3
    proxy, gold = [0.1, 0.5, 0.3], [1.0, 2.0, 3.0]
    assert expected_best_of_n(proxy, gold, 1) == pytest.approx(2.0)  # one draw: the mean
    assert expected_best_of_n(proxy, gold, 2) == pytest.approx(7 / 3)
    assert expected_best_of_n(proxy, gold, 3) == pytest.approx(2.0)  # all three: the proxy's favourite, gold 2
    assert expected_best_of_n(proxy, proxy, 3) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="between 1 and the number of draws 3"):
        expected_best_of_n(proxy, gold, 4)
