"""faceattr.engine.train: losses, optimizer, and epochs that checkpoint, repeat exactly and resume."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from faceattr.run.config import ConfigError, RunConfig
from faceattr.engine.train import AttributeLoss, make_loss, make_optimizer, make_scheduler, positive_weights, train_epoch


CHECKPOINT_KEYS = {"model", "optimizer", "scheduler", "rng", "epoch", "config", "train"}
TRAIN_KEYS = {"loss", "accuracy", "images", "seconds", "images_per_second", "warmup_s", "loop_s", "loop_images_per_second",
              "batches", "batch_losses"}
# What an epoch task cost besides the loop, in the metrics file (see train_epoch).
TASK_PARTS = {"startup_s", "load_s", "upload_s", "compile_s", "recalibration_s", "save_s", "task_s"}


# -- runtime ------------------------------------------------------------------------------------
def test_runtime_device_workers_and_seeds(monkeypatch):
    from faceattr import runtime

    assert runtime.resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert runtime.resolve_device("auto") == torch.device("cpu")
    assert runtime.resolve_device(None) == torch.device("cpu")
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        runtime.resolve_device("cuda:0")
    with pytest.raises(ValueError, match="device"):
        runtime.resolve_device("tpu")
    with runtime.autocast(torch.device("cpu")):
        assert not torch.is_autocast_enabled("cpu")  # fp32 on the CPU
    monkeypatch.setattr(runtime.os, "cpu_count", lambda: 32)
    assert runtime.resolve_num_workers(-1) == 8 and runtime.resolve_num_workers(0) == 0
    assert runtime.should_compile(None, torch.device("cpu")) is False
    assert runtime.should_compile(None, torch.device("cuda")) is True
    assert runtime.should_compile(True, torch.device("cpu")) is True
    assert runtime.derive_seed(0, 1) == runtime.derive_seed(0, 1) != runtime.derive_seed(0, 2)
    runtime.seed_everything(4)
    first = torch.rand(3)
    runtime.seed_everything(4)
    assert torch.equal(first, torch.rand(3))
    state = runtime.rng_state()
    expected = torch.rand(3)
    runtime.set_rng_state(state)
    assert torch.equal(torch.rand(3), expected)


# -- losses -------------------------------------------------------------------------------------
def _outputs_and_targets(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    outputs = torch.randn(8, 40, generator=g) * 2
    targets = torch.randint(0, 2, (8, 40), generator=g).float() * 2 - 1
    return outputs, targets


def test_mse_loss_compares_outputs_with_pm1_labels():
    outputs, targets = _outputs_and_targets()
    expected = ((outputs - targets) ** 2).mean()
    assert torch.allclose(AttributeLoss("mse")(outputs, targets), expected)
    # A perfect -1/+1 prediction costs nothing.
    assert AttributeLoss("mse")(targets, targets).item() == 0.0


def test_bce_loss_uses_01_targets_and_pos_weight():
    outputs, targets = _outputs_and_targets()
    y = (targets + 1) / 2
    p = torch.sigmoid(outputs)
    plain = -(y * p.log() + (1 - y) * (1 - p).log()).mean()
    assert torch.allclose(AttributeLoss("bce")(outputs, targets), plain, atol=1e-5)
    weights = torch.linspace(0.5, 5.0, 40)
    weighted = -(weights * y * p.log() + (1 - y) * (1 - p).log()).mean()
    assert torch.allclose(AttributeLoss("bce", weights)(outputs, targets), weighted, atol=1e-5)


def test_mse_loss_weights_positive_labels_only():
    outputs, targets = _outputs_and_targets()
    weights = torch.linspace(0.5, 5.0, 40)
    expected = (torch.where(targets > 0, weights, torch.ones(40)) * (outputs - targets) ** 2).mean()
    assert torch.allclose(AttributeLoss("mse", weights)(outputs, targets), expected)
    # Weights of 1 are the plain loss.
    assert torch.allclose(AttributeLoss("mse", torch.ones(40))(outputs, targets), AttributeLoss("mse")(outputs, targets))


def test_loss_and_config_reject_unknown_kinds():
    with pytest.raises(ValueError, match="loss"):
        AttributeLoss("l1")
    with pytest.raises(ConfigError, match="pos_weight"):
        RunConfig(pos_weight="half")
    with pytest.raises(ValueError, match="pos_weight"):
        positive_weights(np.ones((2, 40)), "half")


def test_old_boolean_pos_weight_configs_still_load():
    assert RunConfig.from_dict({"loss": "bce", "pos_weight": True}).pos_weight == "full"
    assert RunConfig.from_dict({"pos_weight": False}).pos_weight == "none"


def test_positive_weights_are_negatives_over_positives():
    labels = -np.ones((10, 40), np.int8)
    labels[:2, 0] = 1  # 2 positives, 8 negatives
    labels[:5, 1] = 1  # 5 and 5
    labels[:, 2] = 1  # no negatives
    weights = positive_weights(labels)
    assert weights.dtype == torch.float32 and weights.shape == (40,)
    assert weights[0].item() == pytest.approx(4.0)
    assert weights[1].item() == pytest.approx(1.0)
    assert weights[2].item() == 0.0
    assert weights[3].item() == pytest.approx(10.0)  # no positives: divided by 1, not by 0
    assert torch.allclose(positive_weights(labels, "sqrt"), weights.sqrt())


def test_make_loss_follows_the_config():
    labels = np.where(np.random.default_rng(0).random((50, 40)) < 0.2, 1, -1).astype(np.int8)
    assert make_loss(RunConfig()).kind == "mse"
    assert make_loss(RunConfig()).pos_weight is None
    bce = make_loss(RunConfig(loss="bce"), labels)
    assert bce.kind == "bce" and bce.pos_weight is None
    weighted = make_loss(RunConfig(loss="bce", pos_weight="full"), labels)
    assert torch.equal(weighted.pos_weight, positive_weights(labels))
    gentle = make_loss(RunConfig(pos_weight="sqrt"), labels)
    assert gentle.kind == "mse" and torch.equal(gentle.pos_weight, positive_weights(labels, "sqrt"))
    with pytest.raises(ValueError, match="train split"):
        make_loss(RunConfig(loss="bce", pos_weight="full"))


# -- optimizer and schedule ---------------------------------------------------------------------
def test_optimizer_holds_only_trainable_parameters():
    from faceattr.model import build_model

    model = build_model("resnet18", weights="none", freeze_children=6)
    frozen = {id(p) for child in list(model.children())[:6] for p in child.parameters()}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert frozen and trainable and not frozen & trainable
    for name, kind in (("adamax", torch.optim.Adamax), ("adamw", torch.optim.AdamW)):
        optimizer = make_optimizer(model, RunConfig(optimizer=name, lr=0.01, weight_decay=0.1))
        assert isinstance(optimizer, kind)
        in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
        assert in_optimizer == trainable
        assert optimizer.param_groups[0]["lr"] == 0.01 and optimizer.param_groups[0]["weight_decay"] == 0.1


def test_schedules_step_per_epoch():
    param = torch.nn.Parameter(torch.zeros(1))

    def lrs(schedule: str) -> list[float]:
        optimizer = torch.optim.Adamax([param], lr=1.0)
        scheduler = make_scheduler(optimizer, RunConfig(schedule=schedule, epochs=6))
        rates = []
        for _ in range(6):
            rates.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
        return rates

    assert lrs("none") == [1.0] * 6
    cosine = lrs("cosine")
    assert cosine[0] == 1.0 and all(a > b for a, b in zip(cosine, cosine[1:]))
    assert lrs("step") == pytest.approx([1.0, 1.0, 0.1, 0.1, 0.01, 0.01])


# -- one pass ----------------------------------------------------------------------------------
class _SlowStart:
    """A loader whose first batch takes `seconds` to arrive, as worker processes starting up do."""

    def __init__(self, loader, seconds: float):
        self.loader, self.dataset, self.seconds = loader, loader.dataset, seconds

    def __iter__(self):
        time.sleep(self.seconds)
        yield from self.loader


def _tiny_pass(lr: float, *, slow_start_s: float = 0.0, share: int = 20,
               **options) -> tuple[dict, torch.nn.Module, torch.Tensor, torch.Tensor]:
    """One pass over 20 images, of which the loader yields the first `share` (a DDP rank's share)."""
    from torch.utils.data import DataLoader, TensorDataset

    from faceattr.engine.train import train_one_epoch

    g = torch.Generator().manual_seed(0)
    images = torch.randn(20, 3, 4, 4, generator=g)
    targets = torch.randint(0, 2, (20, 40), generator=g).float() * 2 - 1
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 40))
    loader = DataLoader(TensorDataset(images, targets), batch_size=8, sampler=range(share))
    if slow_start_s:
        loader = _SlowStart(loader, slow_start_s)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    stats = train_one_epoch(model, loader, AttributeLoss("mse"), optimizer, torch.device("cpu"), log_every_s=0,
                            **options)
    return stats, model, images, targets


def test_train_one_epoch_reports_loss_and_accuracy_of_what_it_saw(caplog):
    # With lr 0 the model never changes, so the pass's figures are the model's on the whole set.
    with caplog.at_level("INFO", logger="faceattr.progress"):
        stats, model, images, targets = _tiny_pass(lr=0.0)
    with torch.no_grad():
        outputs = model(images)
    assert set(stats) == TRAIN_KEYS and stats["images"] == 20
    # The loss within the epoch: here every batch (3 of 8, 8, 4 images), each point its batch's loss.
    assert stats["batches"] == 3 and [batch for batch, _ in stats["batch_losses"]] == [1, 2, 3]
    for (batch, loss), rows in zip(stats["batch_losses"], (slice(0, 8), slice(8, 16), slice(16, 20))):
        assert loss == pytest.approx(((outputs[rows] - targets[rows]) ** 2).mean().item(), rel=1e-4)
    assert stats["loss"] == pytest.approx(((outputs - targets) ** 2).mean().item(), rel=1e-5)
    assert stats["accuracy"] == pytest.approx(((outputs >= 0) == (targets > 0)).float().mean().item())
    assert stats["images_per_second"] > 0
    # The first of the 3 steps is timed apart; the steady rate counts the 12 images after it.
    assert 0 < stats["warmup_s"] and 0 < stats["loop_s"] and stats["warmup_s"] + stats["loop_s"] <= stats["seconds"]
    assert stats["loop_images_per_second"] == pytest.approx(12 / stats["loop_s"])
    # Not a terminal: progress goes to the log with the rate, the loss and an ETA.
    assert any("img/s" in r.message and "loss" in r.message and "ETA" in r.message for r in caplog.records)


def test_warmup_starts_when_the_first_batch_arrives():
    stats = _tiny_pass(lr=0.0, slow_start_s=0.5)[0]
    assert stats["seconds"] >= 0.5 > stats["warmup_s"]  # the loader's start-up is in the pass, not the warm-up


def test_under_ddp_only_rank_0_shows_progress_against_the_whole_split(caplog):
    from faceattr.engine.parallel import Rank

    with caplog.at_level("INFO", logger="faceattr.progress"):
        _tiny_pass(lr=0.0, share=10, rank=Rank(1, 2))
    assert not caplog.records
    with caplog.at_level("INFO", logger="faceattr.progress"):
        _tiny_pass(lr=0.0, share=10, rank=Rank(0, 2))
    assert "20/20 img (100%)" in caplog.records[-1].message  # its 10 images, times the 2 ranks


def test_train_one_epoch_updates_the_model():
    before, _, _, _ = _tiny_pass(lr=0.0)
    stats, model, images, targets = _tiny_pass(lr=0.5)
    with torch.no_grad():
        after = ((model(images) - targets) ** 2).mean().item()
    assert after < before["loss"]


# -- BatchNorm recalibration --------------------------------------------------------------------
def test_recalibrate_batchnorm_averages_fresh_statistics_and_restores_the_layer():
    from faceattr.engine.train import recalibrate_batchnorm

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.BatchNorm2d(3), torch.nn.Conv2d(3, 2, 1))
    model.eval()
    batches = [(torch.randn(4, 3, 5, 5) * 3 + 7, torch.zeros(4, 40)) for _ in range(3)]
    weight = model[1].weight.clone()
    used = recalibrate_batchnorm(model, batches, torch.device("cpu"), max_images=8)
    assert used == 8  # two whole batches; the third is never read
    seen = torch.cat([images for images, _ in batches[:2]])
    bn = model[0]
    assert torch.allclose(bn.running_mean, seen.mean(dim=(0, 2, 3)), atol=1e-5)
    per_batch_var = torch.stack([images.var(dim=(0, 2, 3)) for images, _ in batches[:2]])  # unbiased, as BatchNorm
    assert torch.allclose(bn.running_var, per_batch_var.mean(dim=0), atol=1e-4)
    assert bn.momentum == 0.1 and not model.training  # left as found
    assert torch.equal(model[1].weight, weight)
    # The last batch is cut to the images asked for (and, as in BatchNorm, each batch counts once).
    assert recalibrate_batchnorm(model, batches, torch.device("cpu"), max_images=6) == 6
    means = [batches[0][0].mean(dim=(0, 2, 3)), batches[1][0][:2].mean(dim=(0, 2, 3))]
    assert torch.allclose(bn.running_mean, (means[0] + means[1]) / 2, atol=1e-5)
    assert recalibrate_batchnorm(torch.nn.Linear(3, 2), batches, torch.device("cpu"), max_images=8) == 0


# -- epochs of a tiny run -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def _tiny_template(tmp_path_factory: pytest.TempPathFactory, synthetic_root) -> tuple[Path, RunConfig]:
    """80 synthetic images (64 train), resnet18 from scratch with its first 6 children frozen, batch 16,
    in-process loading: config and split, nothing trained. Tests get copies (tiny_run)."""
    from faceattr.data.split import make_split

    root = synthetic_root(80, 3)
    run = tmp_path_factory.mktemp("tiny-run") / "run"
    config = RunConfig(
        root=str(root), arch="resnet18", weights="none", batch_size=16, num_workers=0,
        device="cpu", epochs=3, schedule="cosine", lr=1e-3,
        freeze_children=6,  # frozen (random) children: fewer weights to train, and a frozen part to check
        recalibrate_bn=0,  # plain epochs; the recalibration tests turn it on
    )
    config.save(run)
    split = make_split(root, "random", 0, run)
    assert split["train"] == 64
    return run, config


@pytest.fixture(scope="module")
def _tiny_template_with_epoch_1(_tiny_template, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny run with epoch 1 trained, once per module; tests get copies (tiny_run_with_epoch_1)."""
    import shutil

    template, config = _tiny_template
    run = tmp_path_factory.mktemp("tiny-run-epoch-1") / "run"
    shutil.copytree(template, run)
    train_epoch(run, 1, config)
    return run


@pytest.fixture
def tiny_run(_tiny_template, tmp_path: Path) -> tuple[Path, RunConfig]:
    """A fresh copy of the tiny run, nothing trained: what one test does to it no other test sees."""
    import shutil

    template, config = _tiny_template
    shutil.copytree(template, tmp_path / "tiny")
    return tmp_path / "tiny", config


@pytest.fixture
def tiny_run_with_epoch_1(_tiny_template, _tiny_template_with_epoch_1, tmp_path: Path) -> tuple[Path, RunConfig]:
    """A fresh copy of the tiny run with epoch 1 trained."""
    import shutil

    shutil.copytree(_tiny_template_with_epoch_1, tmp_path / "tiny")
    return tmp_path / "tiny", _tiny_template[1]


def _load(path: Path) -> dict:
    from faceattr.checkpoint import load_checkpoint

    return load_checkpoint(path)


def _assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs"


def test_epoch_1_writes_the_contract_checkpoint_and_metrics(tiny_run):
    run, config = tiny_run
    result = train_epoch(run, 1, config)
    path = run / "checkpoints" / "epoch_1.pt"
    assert result["checkpoint"] == str(path)
    checkpoint = _load(path)
    assert set(checkpoint) == CHECKPOINT_KEYS
    assert checkpoint["epoch"] == 1
    assert checkpoint["config"] == config.to_dict()
    assert set(checkpoint["train"]) == TRAIN_KEYS and checkpoint["train"]["images"] == 64
    assert np.isfinite(checkpoint["train"]["loss"]) and 0 <= checkpoint["train"]["accuracy"] <= 1
    assert checkpoint["rng"]["torch"].dtype == torch.uint8
    assert checkpoint["scheduler"]["last_epoch"] == 1
    assert any(name.startswith("fc.") for name in checkpoint["model"])
    metrics = json.loads((run / "metrics" / "train_epoch_1.json").read_text())
    parts = {k: metrics.pop(k) for k in TASK_PARTS}
    assert metrics.pop("lr") == pytest.approx(config.lr)  # the rate this epoch trained at
    assert metrics == {"epoch": 1, "split": "train", **checkpoint["train"]}
    assert parts["compile_s"] == 0.0 and parts["recalibration_s"] < 1  # neither compiled nor recalibrated
    assert all(parts[k] >= 0 for k in TASK_PARTS - {"startup_s"})
    assert parts["task_s"] >= parts["load_s"] + parts["upload_s"] + checkpoint["train"]["seconds"] + parts["save_s"]
    assert parts["startup_s"] is None or parts["task_s"] >= parts["startup_s"] > 0


def _assert_same_epoch(before: dict, after: dict) -> None:
    """Two checkpoints of one epoch hold the same weights, optimizer state, RNG state and loss."""
    _assert_same_tensors(before["model"], after["model"])
    assert before["optimizer"]["state"].keys() == after["optimizer"]["state"].keys()
    for key, state in before["optimizer"]["state"].items():
        _assert_same_tensors(state, after["optimizer"]["state"][key])
    assert torch.equal(before["rng"]["torch"], after["rng"]["torch"])
    assert before["train"]["loss"] == after["train"]["loss"]


def test_rerunning_an_epoch_gives_identical_weights(tiny_run_with_epoch_1):
    run, config = tiny_run_with_epoch_1
    path = run / "checkpoints" / "epoch_1.pt"
    before = _load(path)
    train_epoch(run, 1, config)
    _assert_same_epoch(before, _load(path))


def test_rerunning_a_resumed_epoch_gives_identical_weights(tiny_run_with_epoch_1):
    # Epoch 2 starts from epoch 1's checkpoint (weights, optimizer, schedule, RNG): what a retried
    # Airflow task does. Both tries must write the same epoch_2.pt.
    run, config = tiny_run_with_epoch_1
    path = run / "checkpoints" / "epoch_2.pt"
    train_epoch(run, 2, config)
    first = _load(path)
    train_epoch(run, 2, config)
    second = _load(path)
    _assert_same_epoch(first, second)
    assert first["scheduler"] == second["scheduler"]
    assert not torch.equal(first["model"]["fc.weight"], _load(run / "checkpoints" / "epoch_1.pt")["model"]["fc.weight"])


def test_epoch_2_resumes_from_epoch_1(tiny_run_with_epoch_1):
    run, config = tiny_run_with_epoch_1
    first = _load(run / "checkpoints" / "epoch_1.pt")
    clock = time.perf_counter()
    result = train_epoch(run, 2, config)
    took = time.perf_counter() - clock
    second = _load(run / "checkpoints" / "epoch_2.pt")
    assert second["epoch"] == 2
    # This process has trained before (as `faceattr fit` does): its start-up is not this epoch's cost.
    assert result["startup_s"] is None and result["seconds"] < result["task_s"] <= took
    # Adamax counts its steps per parameter: 4 batches per epoch, so 8 after a resumed second epoch.
    steps = [state["step"].item() for state in second["optimizer"]["state"].values()]
    assert steps and all(step == 8 for step in steps)
    assert second["scheduler"]["last_epoch"] == 2
    assert second["optimizer"]["param_groups"][0]["lr"] < first["optimizer"]["param_groups"][0]["lr"]
    changed = [k for k, v in first["model"].items() if v.is_floating_point() and not torch.equal(v, second["model"][k])]
    assert "fc.weight" in changed
    # Frozen children keep their weights (BatchNorm running statistics may move).
    assert torch.equal(first["model"]["conv1.weight"], second["model"]["conv1.weight"])


def test_resuming_with_a_different_lr_is_a_config_error(tiny_run_with_epoch_1):
    run, config = tiny_run_with_epoch_1
    with pytest.raises(ConfigError, match="lr"):
        train_epoch(run, 2, config.replace(lr=0.5))


def test_an_epoch_without_its_previous_checkpoint_is_a_clear_error(tiny_run_with_epoch_1, tmp_path):
    import shutil

    run, config = tiny_run_with_epoch_1
    other = tmp_path / "run"
    shutil.copytree(run, other)
    (other / "checkpoints" / "epoch_2.pt").unlink(missing_ok=True)
    with pytest.raises(FileNotFoundError, match=r"epoch_2\.pt.*trained epochs: 1\).*train epoch 2 first"):
        train_epoch(other, 3, config)
    with pytest.raises(ValueError, match="epoch"):
        train_epoch(other, 0, config)


def test_an_epoch_with_recalibrate_bn_saves_statistics_of_unaugmented_images(tiny_run_with_epoch_1, tmp_path):
    import shutil

    from faceattr.data.loaders import make_loader
    from faceattr.model import build_model
    from faceattr.engine.train import recalibrate_batchnorm

    run, config = tiny_run_with_epoch_1
    plain = _load(run / "checkpoints" / "epoch_1.pt")["model"]
    other = tmp_path / "run"
    other.mkdir()
    shutil.copy(run / "split.csv", other / "split.csv")
    recalibrated = config.replace(recalibrate_bn=40)
    recalibrated.save(other)

    result = train_epoch(other, 1, recalibrated)
    assert result["bn_recalibration_images"] == 40
    saved = _load(other / "checkpoints" / "epoch_1.pt")["model"]
    # The same training (weights equal) but other running statistics ...
    assert torch.equal(saved["conv1.weight"], plain["conv1.weight"]) and torch.equal(saved["fc.weight"], plain["fc.weight"])
    assert not torch.allclose(saved["bn1.running_mean"], plain["bn1.running_mean"])
    # ... namely the ones a fresh pass over the first 40 unaugmented train images gives.
    model = build_model("resnet18", weights="none", freeze_children=0)
    model.load_state_dict(saved)
    loader = make_loader(other, recalibrated, "train", train=False, device=torch.device("cpu"))
    recalibrate_batchnorm(model, loader, torch.device("cpu"), 40)
    for key, value in model.state_dict().items():
        if "running_" in key:
            assert torch.allclose(value, saved[key], rtol=1e-4, atol=1e-5), key


def test_recalibration_on_the_cache_path_reuses_the_training_data(tiny_run, tmp_path, monkeypatch):
    """No second loader (on CUDA: no second upload of the split); the statistics are those of the
    first unaugmented train images, as a separate evaluation loader gives them."""
    import shutil

    import faceattr.data.loaders as loaders
    from faceattr.model import build_model
    from faceattr.engine.train import recalibrate_batchnorm

    run, config = tiny_run
    other = tmp_path / "run"
    other.mkdir()
    shutil.copy(run / "split.csv", other / "split.csv")
    cached = config.replace(data_path="cache", recalibrate_bn=40)
    cached.save(other)
    built = []
    real = loaders.make_cached_loader
    monkeypatch.setattr(loaders, "make_cached_loader", lambda *a, **k: built.append(k["train"]) or real(*a, **k))
    result = train_epoch(other, 1, cached)
    assert built == [True] and result["bn_recalibration_images"] == 40
    saved = _load(other / "checkpoints" / "epoch_1.pt")["model"]
    model = build_model("resnet18", weights="none", freeze_children=0)
    model.load_state_dict(saved)
    frame = loaders.load_split_frame(other)
    plain = real(other, cached, "train", frame[frame["split"] == "train"], train=False, device=torch.device("cpu"))
    recalibrate_batchnorm(model, plain, torch.device("cpu"), 40)
    for key, value in model.state_dict().items():
        if "running_" in key:
            assert torch.allclose(value, saved[key], rtol=1e-4, atol=1e-5), key


@pytest.mark.slow
def test_a_compiled_epoch_saves_plain_keys_and_the_next_epoch_resumes_from_it(tiny_run, tmp_path, monkeypatch):
    """torch.compile really runs (inductor, on the CPU): the checkpoint holds the plain module's keys,
    which the next (compiled) epoch loads strictly; the compile cache goes under FACEATTR_HOME."""
    import shutil

    run, config = tiny_run
    monkeypatch.setenv("FACEATTR_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    other = tmp_path / "run"
    other.mkdir()
    shutil.copy(run / "split.csv", other / "split.csv")
    compiled = config.replace(compile=True, arch="squeezenet1_1", freeze_children=0)  # a small graph compiles fast
    compiled.save(other)

    first = train_epoch(other, 1, compiled)
    keys = set(_load(other / "checkpoints" / "epoch_1.pt")["model"])
    assert keys and not [k for k in keys if k.startswith(("_orig_mod.", "module."))]
    assert first["compile_s"] == first["warmup_s"] > 0
    assert any((tmp_path / "home" / "compile-cache").iterdir())
    second = train_epoch(other, 2, compiled)
    checkpoint = _load(other / "checkpoints" / "epoch_2.pt")
    assert set(checkpoint["model"]) == keys and second["images"] == 64
    steps = [state["step"].item() for state in checkpoint["optimizer"]["state"].values()]
    assert steps and all(step == 8 for step in steps)  # 4 steps per epoch: resumed, not restarted
