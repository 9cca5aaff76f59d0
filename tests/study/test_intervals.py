"""The paired t-interval against a hand computation, and its few-seed edge cases."""

from __future__ import annotations

import math

import pytest

from smoa.study.intervals import paired_t_interval


def test_matches_the_textbook_formula():
    differences = [1.0, 4.0, -2.0, 5.0]
    mean = 2.0
    sd = math.sqrt(sum((d - mean) ** 2 for d in differences) / 3)
    half = 3.182446305284263 * sd / 2  # t_{3, 0.975}
    result = paired_t_interval(differences)
    assert result["mean"] == pytest.approx(mean)
    assert result["low"] == pytest.approx(mean - half) and result["high"] == pytest.approx(mean + half)
    assert result["df"] == 3


def test_three_seeds_are_wider_than_their_range_when_spread():
    result = paired_t_interval([-11.0, 2.0, 15.0])  # t_{2} = 4.30: the interval is far wider than min … max
    assert result["low"] < -11 and result["high"] > 15


def test_one_seed_has_no_interval_and_none_is_an_error():
    assert paired_t_interval([3.0])["low"] is None
    with pytest.raises(ValueError, match="at least one"):
        paired_t_interval([])
