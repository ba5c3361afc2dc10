"""The shared argument checks: each bad value names the argument and the allowed range."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from textenv.validation import check_choice, check_int, check_number, check_positive


@pytest.mark.parametrize("value", [0, -3, 1.5, True, "2", None])
def test_check_int_rejects(value):
    with pytest.raises(ValueError, match=r"n_epochs=.* must be an integer >= 1"):
        check_int("n_epochs", value, 1)


@pytest.mark.parametrize("value", [1, 7, np.int64(3)])
def test_check_int_accepts(value):
    check_int("n_epochs", value, 1)


@pytest.mark.parametrize(
    ("value", "kwargs", "message"),
    [
        (math.nan, {}, "must be a finite number"),
        (math.inf, {"low": 0}, "must be a finite number >= 0"),
        (-0.1, {"low": 0}, ">= 0"),
        (0.0, {"low": 0, "low_open": True}, "> 0"),
        (1.5, {"low": 0, "high": 1}, ">= 0 and <= 1"),
        (1.0, {"low": 0, "high": 1, "high_open": True}, ">= 0 and < 1"),
        (None, {"low": 0}, ">= 0"),
        (True, {}, "must be a finite number"),
    ],
)
def test_check_number_rejects(value, kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)) as error:
        check_number("gamma", value, **kwargs)
    assert str(error.value).startswith(f"gamma={value!r} must be a finite number")


def test_check_number_accepts_bounds_and_none():
    check_number("gamma", 1.0, low=0.0, high=1.0)
    check_number("gamma", 0.0, low=0.0, high=1.0)
    check_number("target_kl", None, low=0.0, low_open=True, none_ok=True)
    with pytest.raises(ValueError, match=r"\(or None\)"):
        check_number("target_kl", -1.0, low=0.0, low_open=True, none_ok=True)


def test_check_positive_and_choice():
    check_positive("learning_rate", 1e-5)
    with pytest.raises(ValueError, match="learning_rate=0 must be a finite number > 0"):
        check_positive("learning_rate", 0)
    check_choice("kl_estimator", "k3", ("k1", "k3"))
    with pytest.raises(ValueError, match=r"kl_estimator='k2' is not one of \['k1', 'k3'\]"):
        check_choice("kl_estimator", "k2", ("k1", "k3"))
