"""DDP training: rank-sharded batches, and one epoch over 2 gloo processes on CPU against one process.

What "matches" means here. The ranks see exactly the single-process run's global batches (same
shuffle, each batch split over the ranks) and DDP averages their gradients, but three things
legitimately differ: flips and crops are drawn per rank; BatchNorm in train mode normalises each
rank's half batch with its own statistics; and rank 0's BatchNorm running statistics are saved.
So the comparison is: exact where it must be (images seen, frozen weights, one writer), and for
what was learned, the trained head's update (new weights minus the common initial ones) must
point the same way as the single-process update (cosine > 0.8) and differ from it by less than
60% of its size, and the epoch's mean loss and accuracy must agree within 0.05 and 0.02.
Adamax's first steps are nearly sign steps, so updates decorrelate quickly when the batches
differ. The negative control shows the comparison can fail: the same two ranks without DDP (each
trains alone on its half of every batch, no gradient is averaged) must fail it. The test prints
both sets of figures (pytest -s); the commit log records them.
"""
from __future__ import annotations

import pytest
import torch

from faceattr.run.config import RunConfig
from faceattr.engine import distributed, parallel
from faceattr.engine.distributed import world_size_for
from faceattr.engine.parallel import Rank, RankBatches, expected_images


# -- rank-sharded batches ---------------------------------------------------------------------------
class Indices(torch.utils.data.Dataset):
    def __init__(self, size: int):
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> int:
        return index


def _loader(size: int, batch: int, seed: int):
    """A loader built like faceattr.data.loaders.make_loader's train loader: shuffled with a seeded generator."""
    generator = torch.Generator()
    generator.manual_seed(seed)
    return torch.utils.data.DataLoader(Indices(size), batch_size=batch, shuffle=True, generator=generator)


@pytest.mark.parametrize("size,batch,world", [(100, 16, 2), (101, 16, 2), (97, 16, 3), (33, 16, 2), (17, 16, 2)])
def test_ranks_split_the_single_process_batches_exactly(size, batch, world):
    single = [b.tolist() for b in _loader(size, batch, seed=5)]
    config = RunConfig(seed=5)
    per_rank = [[b.tolist() for b in parallel.shard_loader(_loader(size, batch, seed=5), config, 1, Rank(rank, world))]
                for rank in range(world)]
    assert len({len(batches) for batches in per_rank}) == 1, "every rank must run the same number of steps"
    kept = [b for b in single if len(b) >= world]
    assert len(per_rank[0]) == len(kept)
    for step, expected in enumerate(kept):
        shares = [per_rank[rank][step] for rank in range(world)]
        assert all(shares), f"step {step}: a rank got no image"
        # Together the ranks see exactly the single-process global batch.
        assert sorted(i for share in shares for i in share) == sorted(expected)
    seen = [i for batches in per_rank for b in batches for i in b]
    assert len(seen) == len(set(seen)) == expected_images(size, batch, world)


def test_rank_batches_refuse_bad_arguments():
    batches = torch.utils.data.BatchSampler(range(10), 4, drop_last=False)
    with pytest.raises(ValueError, match="rank: 2"):
        RankBatches(batches, Rank(2, 2))
    with pytest.raises(ValueError, match="batch_size: 1 cannot be split over 2"):
        RankBatches(torch.utils.data.BatchSampler(range(10), 1, drop_last=False), Rank(0, 2))


def test_a_single_rank_leaves_everything_as_it_is():
    single = Rank.single()
    assert single.is_main and not single.distributed and Rank(1, 2).distributed and not Rank(1, 2).is_main
    loader, model, stats = _loader(10, 4, 0), torch.nn.Linear(2, 2), {"loss": 1.0}
    assert parallel.shard_loader(loader, RunConfig(), 1, single) is loader
    assert parallel.wrap_model(model, torch.device("cpu"), single) is model
    assert parallel.reduce_stats(stats, torch.device("cpu"), single) is stats
    assert parallel.rank_device(torch.device("cpu"), Rank(1, 2)) == torch.device("cpu")


def test_world_size_setting(monkeypatch):
    cpu = RunConfig(device="cpu")
    monkeypatch.delenv(distributed.ENV, raising=False)
    expected_auto = torch.cuda.device_count() if torch.cuda.device_count() > 1 else 1
    assert world_size_for(RunConfig(device="auto")) == expected_auto
    assert world_size_for(cpu) == 1
    monkeypatch.setenv(distributed.ENV, "2")
    assert world_size_for(cpu) == 2
    assert distributed.backend_for(cpu) == "gloo"
    with pytest.raises(ValueError, match="names one GPU"):
        world_size_for(RunConfig(device="cuda:0"))
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv(distributed.ENV, bad)
        with pytest.raises(ValueError, match="FACEATTR_WORLD_SIZE"):
            world_size_for(cpu)


# -- one epoch, 1 process vs 2 gloo processes ---------------------------------------------------------
HEAD = ("fc.weight", "fc.bias")


@pytest.fixture(scope="module")
def small_root(synthetic_root):
    """100 synthetic images (80 to train on): two CPU epochs of resnet18 stay short on 2 cores."""
    return synthetic_root(100, 1)


def _train_ranks_without_averaging(rank: int, world_size: int, rendezvous: str, run_dir: str, config: dict) -> None:
    """One of the negative control's ranks: faceattr's rank code, but the model is not wrapped in DDP,
    so each rank trains alone on its share of every batch (figures are still summed over ranks)."""
    import torch.distributed as dist

    from faceattr.engine import train

    torch.set_num_threads(1)
    parallel.wrap_model = lambda model, device, rank: model  # this spawned process only
    dist.init_process_group("gloo", init_method=rendezvous, rank=rank, world_size=world_size)
    try:
        train.train_epoch(run_dir, 1, RunConfig.from_dict(config), rank=Rank(rank, world_size))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def runs(small_root, tmp_path_factory):
    """The same epoch trained by one process, by 2 DDP processes and by 2 ranks without DDP; the initial weights."""
    import torch.multiprocessing as mp

    from faceattr.checkpoint import load_checkpoint
    from faceattr.fsutil import read_json
    from faceattr.model import model_from_config
    from faceattr.runtime import seed_everything
    from faceattr.data.split import make_split

    # Only the head trains (freeze_children=9 of resnet18's 10 children): a small, clear signal.
    # BatchNorm statistics are recalibrated afterwards (on every rank) over all train images.
    config = RunConfig(root=str(small_root), arch="resnet18", weights="none", freeze_children=9, epochs=1,
                       batch_size=16, lr=0.01, seed=4, device="cpu", num_workers=0, recalibrate_bn=1000)
    out = {}
    for name, size in (("single", 1), ("ddp", 2), ("unaveraged", 2)):
        run_dir = tmp_path_factory.mktemp(f"run-{name}")
        config.save(run_dir)
        make_split(small_root, config.split, config.seed, run_dir)
        if name == "unaveraged":
            rendezvous = f"file://{tmp_path_factory.mktemp('rendezvous') / 'file'}"
            mp.spawn(_train_ranks_without_averaging, args=(size, rendezvous, str(run_dir), config.to_dict()),
                     nprocs=size, join=True)
        else:
            out[name] = {"result": distributed.launch_epoch(run_dir, 1, config, world_size=size)}
        metrics = read_json(run_dir / "metrics" / "train_epoch_1.json")
        out[name] = {
            "result": metrics,
            **out.get(name, {}),
            "run_dir": run_dir,
            "weights": load_checkpoint(run_dir / "checkpoints" / "epoch_1.pt")["model"],
            "metrics": metrics,
        }
    seed_everything(config.seed)
    out["initial"] = model_from_config(config).state_dict()
    out["config"] = config
    return out


def _update(runs, name):
    return torch.cat([(runs[name]["weights"][k] - runs["initial"][k]).flatten() for k in HEAD])


def _compare(runs, name) -> dict[str, float]:
    """How run `name`'s head update and epoch figures differ from the single process's."""
    want, got = _update(runs, "single"), _update(runs, name)
    assert want.norm() > 0, "the single-process epoch did not train the head"
    figures = {
        "cosine": torch.nn.functional.cosine_similarity(got, want, dim=0).item(),
        "relative": ((got - want).norm() / want.norm()).item(),
        "loss": abs(runs[name]["result"]["loss"] - runs["single"]["result"]["loss"]),
        "accuracy": abs(runs[name]["result"]["accuracy"] - runs["single"]["result"]["accuracy"]),
    }
    print(f"{name} vs single process: " + ", ".join(f"{k} {v:.3f}" for k, v in figures.items()))
    return figures


def _matches_single_process(figures: dict[str, float]) -> bool:
    return (figures["cosine"] > 0.8 and figures["relative"] < 0.6 and figures["loss"] < 0.05
            and figures["accuracy"] < 0.02)


@pytest.mark.slow
def test_ddp_epoch_sees_every_image_once_and_rank_0_writes(runs):
    single, ddp = runs["single"], runs["ddp"]
    assert ddp["result"]["world_size"] == 2 and single["result"]["world_size"] == 1
    train_images = single["result"]["images"]
    assert ddp["result"]["images"] == expected_images(train_images, runs["config"].batch_size, 2) == train_images
    assert ddp["metrics"]["images"] == train_images
    def files(run):
        return sorted(p.relative_to(run["run_dir"]).as_posix() for p in run["run_dir"].rglob("*") if p.is_file())

    # One writer: the same files as one process writes, no rank's stray copies.
    assert files(ddp) == files(single)
    assert {"checkpoints/epoch_1.pt", "metrics/train_epoch_1.json"} <= set(files(ddp))


@pytest.mark.slow
def test_ddp_epoch_matches_single_process(runs):
    single, ddp = runs["single"], runs["ddp"]
    # Frozen weights are untouched by both (BatchNorm running statistics are buffers, not compared).
    frozen = [k for k, v in runs["initial"].items() if k not in HEAD and v.is_floating_point()
              and "running_" not in k]
    for key in frozen:
        assert torch.equal(ddp["weights"][key], single["weights"][key]), key
    # Recalibrated on the same unaugmented images through the same frozen layers: the same statistics.
    assert ddp["metrics"]["bn_recalibration_images"] == single["metrics"]["bn_recalibration_images"] > 0
    for key in (k for k in runs["initial"] if "running_" in k):
        assert torch.allclose(ddp["weights"][key], single["weights"][key], rtol=1e-4, atol=1e-5), key
    assert _matches_single_process(_compare(runs, "ddp"))


@pytest.mark.slow
def test_ranks_without_gradient_averaging_fail_the_comparison(runs):
    """The negative control: the comparison above can fail, and does when DDP is left out."""
    assert runs["unaveraged"]["metrics"]["images"] == runs["single"]["result"]["images"]
    assert not _matches_single_process(_compare(runs, "unaveraged"))
