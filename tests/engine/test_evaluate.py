"""faceattr.engine.metrics (against sklearn, threshold tuning), engine.inference, and evaluate/select/test on a run folder."""
from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score, f1_score

from faceattr.checkpoint import save_checkpoint
from faceattr.run.config import RunConfig
from faceattr.engine.evaluate import evaluate_epoch
from faceattr.engine.inference import prepare_for_inference, score_loader
from faceattr.engine.metrics import attribute_metrics, get_accuracy, majority_classes, tune_thresholds
from faceattr.engine.selection import select_best
from faceattr.attributes import ATTRIBUTES
from faceattr.run.layout import RunLayout
from faceattr.model import build_model, head_name

ARCH = "mobilenet_v3_small"



def _random_problem(n: int = 300, k: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.where(rng.random((n, k)) < rng.uniform(0.05, 0.6, k), 1, -1).astype(np.int8)
    scores = (labels * rng.uniform(0, 1, k) + rng.normal(0, 1, (n, k)) + rng.normal(0, 0.5, k)).astype(np.float32)
    return scores, labels


# -- metrics ----------------------------------------------------------------------------------
def test_get_accuracy_thresholds_at_zero_like_the_writeup():
    scores = np.array([[0.0, -0.1], [0.7, -2.0], [-0.3, 0.2], [1.0, 5.0]])
    labels = np.array([[1, -1], [1, 1], [1, 1], [-1, 1]])
    per_attribute, mean = get_accuracy(scores, labels)
    # score >= 0 predicts 1: column 0 predicts 1,1,-1,1 (2 right); column 1 predicts -1,-1,1,1 (3 right).
    assert per_attribute.tolist() == [0.5, 0.75]
    assert mean == pytest.approx(0.625)
    per_attribute, _ = get_accuracy(scores, labels, thresholds=[-0.5, -3.0])
    assert per_attribute.tolist() == [0.75, 0.75]


def test_attribute_metrics_agree_with_sklearn():
    scores, labels = _random_problem()
    scores[:, 5] = 10.0  # a column predicted all 1
    labels[:, 7] = -1  # a column with no positives
    metrics = attribute_metrics(scores, labels, 0.0, majority_classes(labels))
    predictions = np.where(scores >= 0, 1, -1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns about the one-class columns, on purpose here
        for j in range(labels.shape[1]):
            assert metrics["balanced_accuracy"][j] == pytest.approx(balanced_accuracy_score(labels[:, j], predictions[:, j]))
            assert metrics["f1"][j] == pytest.approx(f1_score(labels[:, j], predictions[:, j], zero_division=0))
    assert metrics["accuracy"] == pytest.approx(get_accuracy(scores, labels)[0])


def test_majority_baseline_uses_the_train_majority():
    train = np.array([[1, -1, 1], [1, -1, -1], [-1, -1, 1], [1, 1, -1]])  # majorities 1, -1, tie -> 1
    assert majority_classes(train).tolist() == [1, -1, 1]
    labels = np.array([[1, 1, -1], [-1, -1, -1]])
    metrics = attribute_metrics(np.zeros((2, 3)), labels, 0.0, majority_classes(train))
    assert metrics["majority_baseline"].tolist() == [0.5, 0.5, 0.0]


def test_bad_metric_inputs_are_named():
    scores, labels = _random_problem(10, 4)
    with pytest.raises(ValueError, match="labels: shape"):
        get_accuracy(scores, labels[:, :3])
    with pytest.raises(ValueError, match="labels: values must be -1 or 1"):
        get_accuracy(scores, (labels + 1) // 2)
    with pytest.raises(ValueError, match="thresholds: expected a number or 4 values"):
        get_accuracy(scores, labels, thresholds=[0.0, 0.0])
    with pytest.raises(ValueError, match="scores: expected a non-empty"):
        get_accuracy(np.zeros((0, 4)), np.zeros((0, 4)))


def test_tuned_thresholds_reach_the_best_accuracy_of_any_threshold():
    scores, labels = _random_problem(400, 40, seed=3)
    scores[:, 2] = np.round(scores[:, 2])  # many ties
    thresholds = tune_thresholds(scores, labels)
    tuned, tuned_mean = get_accuracy(scores, labels, thresholds)
    for j in range(40):
        candidates = np.append(np.unique(scores[:, j]), np.inf)
        best = max(np.mean(np.where(scores[:, j] >= t, 1, -1) == labels[:, j]) for t in candidates)
        assert tuned[j] == pytest.approx(best), j
    assert tuned_mean > get_accuracy(scores, labels)[1]


def test_tuning_keeps_zero_when_zero_is_already_best():
    scores = np.array([[-2.0], [-1.0], [1.0], [2.0]], dtype=np.float32)
    labels = np.array([[-1], [-1], [1], [1]])
    assert tune_thresholds(scores, labels).tolist() == [0.0]
    # Everything positive: any threshold up to the lowest score works; 0 is the nearest to the default.
    assert tune_thresholds(scores + 5, np.ones((4, 1))).tolist() == [0.0]
    # Everything negative, scores positive: the threshold must sit just above the highest score.
    high = tune_thresholds(scores + 5, -np.ones((4, 1)))[0]
    assert 7.0 < high < 7.001


def test_score_loader_returns_scores_and_int8_labels():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 40))
    images = torch.randn(10, 3, 2, 2)
    labels = torch.where(torch.rand(10, 40) < 0.5, 1.0, -1.0)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, labels), batch_size=4)
    scores, got_labels = score_loader(model, loader, torch.device("cpu"))
    assert scores.dtype == np.float32 and scores.shape == (10, 40)
    assert got_labels.dtype == np.int8 and np.array_equal(got_labels, labels.numpy())
    with torch.no_grad():
        assert np.allclose(scores, model(images).numpy(), atol=1e-6)


# -- run folder: evaluate, select, test -------------------------------------------------------
def _expected_baseline(run_dir: Path, root: Path, split: str) -> float:
    """The majority baseline computed independently from split.csv and the label file."""
    import pandas as pd

    splits = pd.read_csv(run_dir / "split.csv", index_col="image_id")["split"]
    text = (root / "celeba" / "list_attr_celeba.txt").read_text().splitlines()
    rows = [line.split() for line in text[2:] if line.strip()]
    labels = pd.DataFrame([r[1:] for r in rows], index=[r[0] for r in rows], columns=text[1].split()).astype(int)
    train = labels.loc[splits.index[splits == "train"]]
    majority = np.where((train == 1).mean() >= 0.5, 1, -1)
    return float((labels.loc[splits.index[splits == split]] == majority).mean().mean())


def _bias_only_checkpoint(config: RunConfig, epoch: int, bias: np.ndarray) -> dict:
    """A checkpoint whose model ignores the image and outputs `bias`: its predictions are known."""
    torch.manual_seed(epoch)
    model = build_model(config.arch, "none", config.freeze_children)
    head = model.get_submodule(head_name(model))
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))
    return _checkpoint(config, epoch, model)


def _checkpoint(config: RunConfig, epoch: int, model: torch.nn.Module) -> dict:
    return {
        "model": model.state_dict(), "optimizer": {}, "scheduler": None,
        "rng": {"torch": torch.get_rng_state(), "cuda": None}, "epoch": epoch, "config": config.to_dict(),
        "train": {"loss": 1.0, "accuracy": 0.5, "images": 1, "seconds": 1.0, "images_per_second": 1.0},
    }


def _train_majority(run_dir: Path) -> np.ndarray:
    from faceattr.data.loaders import load_split_frame

    frame = load_split_frame(run_dir)
    return majority_classes(frame.loc[frame["split"] == "train", list(ATTRIBUTES)].to_numpy())


@pytest.fixture(scope="module")
def base_run(synth_root, tmp_path_factory) -> Path:
    from faceattr.data.split import make_split

    run = tmp_path_factory.mktemp("eval-run")
    # mobilenet_v3_small: the smallest torchvision classifier, so scoring stays fast on a shared CPU.
    config = RunConfig(root=str(synth_root), arch=ARCH, weights="none", freeze_children=1, batch_size=16,
                       num_workers=0, device="cpu", epochs=3)
    config.save(run)
    make_split(Path(synth_root), "random", 0, run)
    return run


def _copy_run(base: Path, target: Path, **changes) -> tuple[Path, RunConfig]:
    target.mkdir(parents=True)
    shutil.copy(base / "split.csv", target / "split.csv")
    config = RunConfig.load(base).replace(**changes)
    config.save(target)
    return target, config


def test_evaluate_select_and_test_a_run(base_run, synth_root, tmp_path):
    run, config = _copy_run(base_run, tmp_path / "run")
    layout = RunLayout(run)
    majority = _train_majority(run)
    # Epoch 1 predicts the train majority, epoch 2 its opposite, epoch 3 ties with epoch 1.
    for epoch, bias in ((1, majority), (2, -majority), (3, majority * 2.0)):
        save_checkpoint(_bias_only_checkpoint(config, epoch, bias), layout.checkpoint(epoch))

    with pytest.raises(FileNotFoundError, match=r"no validation metrics for epoch\(s\) 1, 2, 3"):
        select_best(run)
    results = {epoch: evaluate_epoch(run, epoch, "val") for epoch in (1, 2, 3)}

    baseline = _expected_baseline(run, Path(synth_root), "val")
    first = results[1]
    assert first["epoch"] == 1 and first["split"] == "val" and first["images"] == 30
    assert first["majority_baseline"] == pytest.approx(baseline)
    assert first["mean_accuracy"] == pytest.approx(baseline)  # it predicts exactly the majority
    assert results[2]["mean_accuracy"] == pytest.approx(1 - baseline)
    assert results[3]["mean_accuracy"] == pytest.approx(baseline)
    assert set(first["attributes"]) == set(ATTRIBUTES)
    for name, row in first["attributes"].items():
        assert set(row) == {"accuracy", "balanced_accuracy", "f1", "majority_baseline", "threshold"}
        assert row["accuracy"] == pytest.approx(row["majority_baseline"]) and row["threshold"] == 0.0
        # One class always right, the other always wrong; 1.0 where only one class is in the 30 images.
        assert row["balanced_accuracy"] == pytest.approx(0.5 if row["majority_baseline"] < 1 else 1.0)
    on_disk = json.loads(layout.metrics("val", 1).read_text())
    assert on_disk["mean_accuracy"] == first["mean_accuracy"]
    assert not layout.metrics("val", 1).with_suffix(".npz").exists()  # tune_thresholds is off

    best = select_best(run)
    assert best["epoch"] == 1  # the tie with epoch 3 goes to the earlier epoch
    best_json = json.loads(layout.best.read_text())
    assert best_json == {"epoch": 1, "val_mean_accuracy": first["mean_accuracy"],
                         "val_by_epoch": {str(k): results[k]["mean_accuracy"] for k in (1, 2, 3)}}

    exported = torch.load(layout.model, weights_only=True)
    assert set(exported) == {"state_dict", "arch", "attributes", "thresholds", "mean", "std", "image_size", "loss",
                             "epoch", "run", "val_mean_accuracy"}
    assert exported["arch"] == ARCH and exported["epoch"] == 1 and exported["loss"] == "mse"
    assert exported["attributes"] == list(ATTRIBUTES) and exported["image_size"] == [178, 218]
    assert torch.equal(exported["thresholds"], torch.zeros(40))
    assert torch.equal(exported["state_dict"]["classifier.3.bias"], torch.as_tensor(majority, dtype=torch.float32))

    test = evaluate_epoch(run, "best", "test")
    assert test["epoch"] == 1 and test["split"] == "test" and test["images"] == 30
    assert test["mean_accuracy"] == pytest.approx(_expected_baseline(run, Path(synth_root), "test"))
    assert layout.metrics("test", 1).is_file()


def test_tuned_thresholds_go_into_model_pt_and_the_test(base_run, tmp_path):
    run, config = _copy_run(base_run, tmp_path / "tuned", tune_thresholds=True)
    layout = RunLayout(run)
    torch.manual_seed(0)
    save_checkpoint(_checkpoint(config, 1, build_model(ARCH, "none", 1)), layout.checkpoint(1))
    plain = evaluate_epoch(run, 1, "val")
    with np.load(layout.metrics("val", 1).with_suffix(".npz")) as saved:
        scores, labels = saved["scores"], saved["labels"]
    assert scores.shape == (30, 40) and np.array_equal(get_accuracy(scores, labels)[0],
                                                       [plain["attributes"][n]["accuracy"] for n in ATTRIBUTES])

    best = select_best(run)
    thresholds = torch.load(layout.model, weights_only=True)["thresholds"]
    assert np.array_equal(thresholds.numpy(), tune_thresholds(scores, labels))
    assert best["val_mean_accuracy_tuned"] >= plain["mean_accuracy"]
    test = evaluate_epoch(run, "best", "test")
    assert [test["attributes"][n]["threshold"] for n in ATTRIBUTES] == pytest.approx(thresholds.tolist())


def test_with_tuned_thresholds_epochs_are_ranked_by_their_tuned_accuracy(base_run, tmp_path):
    run, config = _copy_run(base_run, tmp_path / "ranked", tune_thresholds=True)
    layout = RunLayout(run)
    majority = _train_majority(run)
    for epoch, bias in ((1, majority), (2, -majority)):
        save_checkpoint(_bias_only_checkpoint(config, epoch, bias), layout.checkpoint(epoch))
    first, second = (evaluate_epoch(run, epoch, "val") for epoch in (1, 2))
    # A constant score is tuned into whichever constant answer fits validation best: both tie.
    assert second["mean_accuracy"] < first["mean_accuracy"]
    assert second["mean_accuracy_tuned"] == pytest.approx(first["mean_accuracy_tuned"])
    assert select_best(run)["epoch"] == 1
    # Epoch 2 ahead once tuned (as if its scores ranked the images better) wins despite its raw accuracy.
    path = layout.metrics("val", 2)
    path.write_text(json.dumps({**second, "mean_accuracy_tuned": first["mean_accuracy_tuned"] + 0.01}))
    best = select_best(run)
    assert best["epoch"] == 2 and best["val_mean_accuracy"] == second["mean_accuracy"]
    # Metrics written before tune_thresholds was set cannot be ranked that way.
    path.write_text(json.dumps({k: v for k, v in second.items() if k != "mean_accuracy_tuned"}))
    with pytest.raises(ValueError, match="val_epoch_2.json: no mean_accuracy_tuned"):
        select_best(run)


def test_evaluate_and_select_errors_name_what_is_missing(base_run, tmp_path):
    run, config = _copy_run(base_run, tmp_path / "errors")
    with pytest.raises(FileNotFoundError, match="epoch_4.pt: checkpoint not found"):
        evaluate_epoch(run, 4, "val")
    with pytest.raises(ValueError, match="split: 'validation' is not one of"):
        evaluate_epoch(run, 1, "validation")
    with pytest.raises(ValueError, match="epoch: 'last' is not an epoch number"):
        evaluate_epoch(run, "last", "val")
    with pytest.raises(FileNotFoundError, match="best.json: no best epoch chosen yet"):
        evaluate_epoch(run, "best", "test")
    with pytest.raises(FileNotFoundError, match="no epoch_K.pt checkpoints"):
        select_best(run)
    # A checkpoint of another architecture than the one it claims.
    save_checkpoint(_checkpoint(config, 1, build_model("resnet18", "none", 0)), RunLayout(run).checkpoint(1))
    with pytest.raises(ValueError, match=f"epoch_1.pt: model state does not fit {ARCH}"):
        evaluate_epoch(run, 1, "val")


def test_commands_report_errors_without_a_traceback(base_run, tmp_path, capsys):
    from faceattr.cli import main

    run, _ = _copy_run(base_run, tmp_path / "cli")
    assert main(["evaluate", "--run", str(run), "--epoch", "9", "--split", "val"]) == 2
    assert "faceattr evaluate: error:" in capsys.readouterr().err
    assert main(["select", "--run", str(run)]) == 2
    assert "no epoch_K.pt checkpoints" in capsys.readouterr().err


def test_inference_turns_cudnn_autotuning_on_for_cuda_only(monkeypatch):
    """Evaluation and scoring (prepare_for_inference) get the fast path's cuDNN rule, as training does."""
    from faceattr import runtime

    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    prepare_for_inference(torch.nn.Linear(2, 2), torch.device("cpu"))
    assert torch.backends.cudnn.benchmark is False
    runtime.prepare_cuda(torch.device("cuda"))  # sets a flag only: no CUDA device needed
    assert torch.backends.cudnn.benchmark is True
    asked = []
    monkeypatch.setattr(runtime, "prepare_cuda", asked.append)
    prepare_for_inference(torch.nn.Linear(2, 2), torch.device("cpu"))
    assert asked == [torch.device("cpu")]


# -- inference: the head runs in float32 ------------------------------------------------------
def _bf16_autocast_on_cpu(monkeypatch) -> None:
    """What CUDA gets (bf16 autocast), on the CPU: faceattr.runtime.autocast is a no-op there."""
    from faceattr import runtime

    monkeypatch.setattr(runtime, "autocast", lambda device: torch.autocast(device_type="cpu", dtype=torch.bfloat16))


def test_the_head_runs_in_float32_under_bf16_autocast(monkeypatch):
    _bf16_autocast_on_cpu(monkeypatch)
    torch.manual_seed(0)
    model = build_model("resnet18", weights="none", freeze_children=0)
    seen = []
    model.fc.register_forward_hook(lambda module, inputs, output: seen.append((inputs[0].dtype, output.dtype)))
    images = torch.randn(3, 3, 64, 64)
    loader = [(images, torch.ones(3, 40))]
    scores, _ = score_loader(model, loader, torch.device("cpu"))
    # The backbone ran under bf16 autocast; the head's output is float32 all the same.
    assert seen == [(torch.bfloat16, torch.float32)]
    # The scores are the fp32 head applied to the (bf16) backbone's features, exactly.
    features = []
    model.fc.register_forward_hook(lambda module, inputs, output: features.append(inputs[0]))
    with torch.inference_mode(), torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        model(images)
    expected = torch.nn.functional.linear(features[0].float(), model.fc.weight, model.fc.bias)
    assert np.array_equal(scores, expected.detach().numpy())


def test_without_the_float32_head_bf16_autocast_rounds_the_scores(monkeypatch):
    """The test above can fail: a head left under autocast gives bf16 outputs."""
    _bf16_autocast_on_cpu(monkeypatch)
    model = build_model("resnet18", weights="none", freeze_children=0).eval()
    with torch.inference_mode(), torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        assert model(torch.randn(1, 3, 64, 64)).dtype == torch.bfloat16


def test_float32_head_keeps_the_state_dict_and_is_applied_once():
    model = build_model("resnet18", weights="none", freeze_children=0)
    keys = list(model.state_dict())
    prepare_for_inference(model, torch.device("cpu"))
    wrapped = model.fc.forward
    prepare_for_inference(model, torch.device("cpu"))
    assert list(model.state_dict()) == keys and model.fc.forward is wrapped


def test_padding_a_short_batch_gives_the_same_rows():
    from faceattr.engine.inference import queue_scores

    torch.manual_seed(0)
    model = prepare_for_inference(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 40)), torch.device("cpu"))
    images = torch.randn(3, 3, 2, 2)
    with torch.inference_mode():
        padded = queue_scores(model, images, torch.device("cpu"), pad_to=8)
        plain = queue_scores(model, images, torch.device("cpu"))
    assert padded.shape == (3, 40) and torch.allclose(padded, plain, atol=1e-6)
