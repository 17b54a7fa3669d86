"""faceattr.run.selection: the best-epoch rule, patience, and the ranking figure read from val metrics."""
from __future__ import annotations

import pytest

from faceattr.run.config import RunConfig
from faceattr.run import selection
from faceattr.run import metrics


def test_best_epoch_is_the_highest_and_ties_go_to_the_earlier():
    assert selection.best_epoch({1: 0.8, 2: 0.9, 3: 0.85}) == 2
    assert selection.best_epoch({3: 0.9, 1: 0.9, 2: 0.7}) == 1
    with pytest.raises(ValueError, match="no validated epochs"):
        selection.best_epoch({})


def test_epochs_without_improvement_count_from_the_best():
    assert selection.epochs_without_improvement({}) == 0
    assert selection.epochs_without_improvement({1: 0.8, 2: 0.9}) == 0
    assert selection.epochs_without_improvement({1: 0.8, 2: 0.9, 3: 0.9, 4: 0.85}) == 2  # a tie is no gain
    assert selection.epochs_without_improvement({2: 0.9, 1: 0.95}) == 1  # in epoch order, not insertion order


def test_stop_reason_follows_patience():
    scores = {1: 0.80, 2: 0.85, 3: 0.84, 4: 0.83}
    assert selection.stop_reason(RunConfig(patience=0), scores) is None
    assert selection.stop_reason(RunConfig(patience=3), scores) is None
    reason = selection.stop_reason(RunConfig(patience=2), scores)
    assert reason.startswith("2 validated epoch(s) without beating epoch 2's mean_accuracy 0.8500")
    assert "mean_accuracy_tuned" in selection.stop_reason(RunConfig(patience=2, tune_thresholds=True), scores)


def test_with_tuned_thresholds_the_tuned_accuracy_ranks_epochs(tmp_path):
    # Raw accuracy prefers epoch 2, tuned accuracy epoch 1: the config decides which one counts.
    for epoch, raw, tuned in ((1, 0.80, 0.90), (2, 0.85, 0.88)):
        metrics.write_epoch_metrics(tmp_path, "val", epoch, {"mean_accuracy": raw, "mean_accuracy_tuned": tuned})
    plain, tuned = RunConfig(), RunConfig(tune_thresholds=True)
    assert selection.ranking_measure(plain) == "mean_accuracy"
    assert selection.ranking_measure(tuned) == "mean_accuracy_tuned"
    assert selection.validation_scores(tmp_path, plain, range(1, 4)) == {1: 0.80, 2: 0.85}  # epoch 3: not validated
    assert selection.validation_scores(tmp_path, tuned, range(1, 4)) == {1: 0.90, 2: 0.88}
    assert selection.best_epoch(selection.validation_scores(tmp_path, plain, [1, 2])) == 2
    assert selection.best_epoch(selection.validation_scores(tmp_path, tuned, [1, 2])) == 1
    # Metrics scored before tune_thresholds was set cannot be ranked by it.
    metrics.write_epoch_metrics(tmp_path, "val", 3, {"mean_accuracy": 0.9})
    with pytest.raises(ValueError, match=r"val_epoch_3.json: no mean_accuracy_tuned.*--epoch 3 --split val"):
        selection.validation_scores(tmp_path, tuned, [3])
