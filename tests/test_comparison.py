"""textenv.comparison: IQM, stratified bootstrap CIs, performance profiles and normalisation, against hand values."""

from __future__ import annotations

import numpy as np
import pytest

from textenv.comparison import iqm, normalise, performance_profile, stratified_bootstrap_ci
from textenv.validation import InputError


def test_iqm_is_the_mean_of_the_middle_half():
    assert iqm(np.arange(1.0, 9.0)) == pytest.approx(np.mean([3, 4, 5, 6]))
    # over the whole (runs, tasks) matrix, not per task: 12 values, 3 dropped from each end
    matrix = np.array([[0.0, 10.0, 5.0], [1.0, 11.0, 6.0], [2.0, 100.0, 7.0], [-50.0, 12.0, 8.0]])
    middle = np.sort(matrix.reshape(-1))[3:9]
    assert iqm(matrix) == pytest.approx(middle.mean())


def test_iqm_ignores_one_outlier_run_that_moves_the_mean():
    scores = np.array([0.5, 0.6, 0.55, 0.52, 0.58, 0.61, 0.57, 25.0])
    assert iqm(scores) == pytest.approx(np.mean(np.sort(scores)[2:6]))
    assert iqm(scores) < 0.7 < scores.mean()


def test_the_bootstrap_is_stratified_by_task():
    # task 0 always scores 0, task 1 always 1: resampling seeds within each task keeps the mean at 0.5 exactly,
    # while resampling (run, task) cells freely would not
    matrix = np.array([[0.0, 1.0]] * 5)
    assert stratified_bootstrap_ci(matrix, lambda m: float(m.mean()), repetitions=300) == (0.5, 0.5)


def test_the_interval_holds_the_estimate_narrows_with_seeds_and_repeats_with_its_seed():
    rng = np.random.default_rng(1)
    few, many = rng.normal(0.5, 0.2, size=(5, 4)), rng.normal(0.5, 0.2, size=(80, 4))
    low, high = stratified_bootstrap_ci(few, seed=3)
    assert low <= iqm(few) <= high
    many_low, many_high = stratified_bootstrap_ci(many, seed=3)
    assert many_high - many_low < high - low
    assert stratified_bootstrap_ci(few, seed=3) == (low, high)
    assert stratified_bootstrap_ci(few, seed=4) != (low, high)


def test_performance_profile_counts_scores_above_each_threshold():
    matrix = np.array([[0.1, 0.9], [0.5, 0.7]])
    assert performance_profile(matrix, np.array([0.0, 0.5, 0.8, 1.0])).tolist() == [1.0, 0.5, 0.25, 0.0]


def test_normalise_maps_untrained_to_zero_and_best_to_one():
    assert normalise(np.array([0.2, 0.6, 1.0]), low=0.2, high=1.0).tolist() == pytest.approx([0.0, 0.5, 1.0])
    assert normalise(-0.5, low=0.0, high=-1.0) == pytest.approx(0.5)  # a task whose best is lower (a cost)


@pytest.mark.bad_input
@pytest.mark.parametrize("call, words", [
    (lambda: iqm([]), "non-empty"),
    (lambda: iqm([[0.1, float("nan")]]), "NaN"),
    (lambda: stratified_bootstrap_ci([[0.1]], confidence=1.5), "confidence"),
    (lambda: stratified_bootstrap_ci([[0.1]], repetitions=0), "repetitions"),
    (lambda: normalise(0.3, low=0.2, high=0.2), "low=0.2 and high=0.2"),
])
def test_bad_scores_are_refused_with_the_argument_named(call, words):
    with pytest.raises(InputError, match=words):
        call()
