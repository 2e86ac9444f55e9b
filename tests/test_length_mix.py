"""The length mix workloads are resampled to: quotas per length bin, and draws that meet them."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trail_scheduler.length_mix import CHAT_MIX, LengthMix


@settings(max_examples=200, deadline=None)
@given(count=st.integers(1, 400), cap=st.integers(2, 4096))
def test_any_count_splits_into_contiguous_bins_from_one_token_to_the_cap(count, cap):
    quotas = CHAT_MIX.quotas(count, cap)
    assert sum(quota for _, _, quota in quotas) == count and all(quota >= 0 for _, _, quota in quotas)
    assert quotas[0][0] == 1 and quotas[-1][:2] == (cap, cap)
    assert all(low <= high for low, high, _ in quotas)
    assert all(high + 1 == low for (_, high, _), (low, _, _) in zip(quotas, quotas[1:]))  # no gap, no overlap
    assert abs(quotas[-1][2] - CHAT_MIX.at_cap * count) < 1  # largest remainders: each quota within one


def test_the_chat_mix_has_chat_traffics_median_and_tail_at_the_cap():
    quotas = CHAT_MIX.quotas(1000, 512)
    assert quotas[-1] == (512, 512, 210)
    below_median = sum(quota for _, high, quota in quotas if high < 243)
    assert 400 < below_median < 500  # the bins' edges round; the median answer is about 243 tokens
    below_cap = [quota for *_, quota in quotas[:-1]]
    assert len(below_cap) == CHAT_MIX.bins and max(below_cap) - min(below_cap) <= 3  # equal mass, but for rounding


@settings(max_examples=50, deadline=None)
@given(count=st.integers(1, 120), seed=st.integers(0, 2**32))
def test_a_draw_meets_every_bins_quota_with_distinct_items_in_a_seeded_order(count, seed):
    pool = list(range(1, 600))  # item = its length; 88 of them at or over the cap
    sample = CHAT_MIX.draw(pool, lambda n: n, count, 512, seed)
    assert sample == CHAT_MIX.draw(pool, lambda n: n, count, 512, seed)
    assert len(set(sample)) == count
    for low, high, quota in CHAT_MIX.quotas(count, 512):
        assert sum(low <= min(n, 512) <= high for n in sample) == quota


def test_draws_differ_by_seed_and_do_not_arrive_in_length_order():
    pool = list(range(1, 600))
    first, second = (CHAT_MIX.draw(pool, lambda n: n, 80, 512, seed) for seed in (0, 1))
    assert first != second and first != sorted(first)


def test_a_pool_short_of_a_bins_quota_is_an_error_naming_the_bin():
    pool = list(range(1, 530))  # 18 at or over the cap
    with pytest.raises(ValueError, match=r"needs 42 answers of 512-512 tokens and the pool has 18"):
        CHAT_MIX.draw(pool, lambda n: n, 200, 512, seed=0)


@pytest.mark.parametrize("median, at_cap", [(0.0, 0.2), (1.0, 0.2), (0.5, 0.0), (0.5, 1.0)])
def test_a_mix_outside_the_cap_is_refused(median, at_cap):
    with pytest.raises(ValueError, match="length mix"):
        LengthMix("bad", median=median, at_cap=at_cap)
    with pytest.raises(ValueError, match="cap of at least 2"):
        CHAT_MIX.quotas(10, 1)
