"""Images and labels into batches: the Dataset and DataLoader of a run, and the fast path's
cached loader.
"""
from __future__ import annotations

import copy
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from faceattr.attributes import ATTRIBUTES, SPLITS
from faceattr.data.cache import CacheError, ensure_split_cache, open_cache, upload
from faceattr.data.images import open_image
from faceattr.data.labels import read_attributes
from faceattr.data.layout import ATTR_FILE, IMAGES_DIR
from faceattr.data.split import read_split
from faceattr.data.versions import run_dataset_dir
from faceattr.data.transforms import augment_batch, augment_params, eval_transform, normalise_batch, train_transform
from faceattr.run.config import ConfigError, RunConfig
from faceattr.run.layout import RunLayout
from faceattr.runtime import derive_seed, resolve_num_workers, should_compile, worker_init_fn


class CelebAImages(Dataset):
    """Images `image_dir/<image_id>` with their 40 labels as a float32 tensor of -1/+1.

    `labels` is an N x 40 int8 array of -1/+1 aligned with `image_ids`, or None for unlabelled
    images (the label tensor is then empty).
    """

    def __init__(self, image_dir: str | Path, image_ids: Sequence[str], labels: np.ndarray | None, transform):
        self.image_dir = Path(image_dir)
        self.image_ids = [str(i) for i in image_ids]
        self.transform = transform
        if labels is None:
            self.labels = None
            self._targets = torch.empty(len(self.image_ids), 0)
        else:
            labels = np.asarray(labels)
            if labels.shape != (len(self.image_ids), len(ATTRIBUTES)):
                raise ValueError(
                    f"labels: expected shape ({len(self.image_ids)}, {len(ATTRIBUTES)}) for "
                    f"{len(self.image_ids)} image ids, got {labels.shape}"
                )
            if not np.isin(labels, (-1, 1)).all():
                raise ValueError("labels: values must be -1 or 1")
            self.labels = labels.astype(np.int8, copy=False)
            # Converted once here, so __getitem__ only indexes.
            self._targets = torch.from_numpy(self.labels.astype(np.float32))

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_id = self.image_ids[index]
        image = open_image(self.image_dir / image_id, name=image_id)
        return self.transform(image), self._targets[index]


def load_split_frame(run_dir: str | Path, *, root: str | Path | None = None):
    """RUN/split.csv joined with the attribute labels: index image_id, column "split" + 40 attributes.

    Labels come from `root` (default: the run's config.root). Rows follow split.csv's order.
    """
    if root is None:
        root = RunConfig.load(run_dir).root
    split = read_split(run_dir)
    attr_path = run_dataset_dir(run_dir, root) / ATTR_FILE  # the run's data version
    attributes = read_attributes(attr_path)
    missing = split.index.difference(attributes.index)
    if len(missing):
        examples = ", ".join(missing[:5])
        raise ValueError(
            f"{RunLayout(run_dir).split}: {len(missing)} image id(s) have no labels in {attr_path} "
            f"(e.g. {examples}); was the split made from another dataset root?"
        )
    frame = attributes.loc[split.index]
    frame.insert(0, "split", split.to_numpy())
    return frame


def make_loader(
    run_dir: str | Path,
    config: RunConfig,
    split: str,
    *,
    train: bool,
    device: torch.device,
    batch_size: int | None = None,
    epoch: int = 0,
    frame=None,
) -> DataLoader:
    """A DataLoader over one split of the run (a CachedLoader when config.data_path picks the cache).

    `train=True`: augmented and shuffled; the shuffle order and the augmentation are seeded from
    (config.seed, epoch), so re-running an epoch sees the same batches. `train=False`: the
    evaluation transform, in split.csv order. `frame` reuses a `load_split_frame` result.
    """
    if split not in SPLITS:
        raise ValueError(f"split: {split!r} is not one of {', '.join(SPLITS)}")
    if frame is None:
        frame = load_split_frame(run_dir, root=config.root)
    rows = frame[frame["split"] == split]
    if rows.empty:
        raise ValueError(f"{Path(run_dir) / 'split.csv'}: the {split!r} split has no images")
    data_path, array = _choose_data_path(config, run_dir, split, rows.index.tolist(), device)
    if data_path == "cache":
        return make_cached_loader(run_dir, config, split, rows, train=train, device=device,
                                  batch_size=batch_size, epoch=epoch, array=array)
    dataset = CelebAImages(
        run_dataset_dir(run_dir, config.root) / IMAGES_DIR,  # the run's data version
        rows.index.tolist(),
        rows[list(ATTRIBUTES)].to_numpy(dtype=np.int8),
        train_transform() if train else eval_transform(),
    )
    num_workers = resolve_num_workers(config.num_workers)
    generator = torch.Generator()
    generator.manual_seed(derive_seed(config.seed, epoch))
    batch_size = batch_size or config.batch_size
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        worker_init_fn=worker_init_fn,
        generator=generator,
        persistent_workers=False,
        prefetch_factor=4 if num_workers > 0 else None,
        # A compiled model is compiled again for a new batch shape, so training drops the last
        # partial batch then (the cache path always does); data-parallel ranks then split only
        # full batches too.
        drop_last=train and should_compile(config.compile, device) and len(dataset) > batch_size,
    )


# -- the fast path: the decode-once cache and augmentation as batched tensor ops ----------------
# data_path (RunConfig):
#   "pil"   the write-up's DataLoader above: decode + augment each image in worker processes.
#   "cache" batches sliced out of RUN/cache/{split}.npy (faceattr.data.cache; built here first when
#           missing) and augmented as batched tensor ops on the training device.
#   "auto"  "cache" when the split's cache is already built, or on CUDA (building it once, about
#           as long as one PIL epoch); "pil" on a CPU without a cache.
# Both paths draw the same augmentation distribution (flip p=0.5, resize to 220x270, uniform
# 178x218 crop) and give the same evaluation pixels; tests/data/test_fast_path.py checks it. Two
# differences: the cache path always drops the last partial training batch (fixed shapes for
# torch.compile; the PIL path drops it only when compiling), and the random draws come from its own
# seeded stream, so the two paths do not see the same flips and crops.
#
class CachedImages:
    """What a loader's `.dataset` offers the training loop: len(), image ids and the int8 labels."""

    def __init__(self, array: np.ndarray, image_ids: Sequence[str], labels: np.ndarray):
        if len(array) != len(image_ids) or labels.shape != (len(image_ids), len(ATTRIBUTES)):
            raise ValueError(
                f"cache: {len(array)} images, {len(image_ids)} ids and labels of shape {labels.shape} do not match"
            )
        self.array = array
        self.image_ids = list(image_ids)
        self.labels = labels.astype(np.int8, copy=False)

    def __len__(self) -> int:
        return len(self.image_ids)


class CachedLoader:
    """Batches of a split from its decode-once cache: (float32 images on `device`, float32 -1/+1 labels on the CPU).

    Train: shuffled and augmented (augment_batch); eval: in cache order, normalised only. The
    shuffle and the augmentation come from one torch.Generator seeded with `seed`. Training drops
    the last partial batch when there is more than one batch (as timm does): every step then has
    the same shape, so a compiled model is not recompiled for the remainder.
    On CUDA the whole split is copied to GPU memory once when it fits in `resident_fraction` of
    the free memory; otherwise a background thread
    gathers each batch from the memory map into pinned memory, and the copy is non-blocking.
    There is no per-image Python: each batch is one gather, one copy and a few batched ops.
    With `world_size` > 1 (data-parallel training) each rank gets its contiguous slice of every
    global batch (a last batch smaller than the world size is dropped); all ranks draw the same
    shuffle, and the augmentation of rank r's slice from its own stream.
    """

    def __init__(
        self,
        dataset: CachedImages,
        *,
        batch_size: int,
        train: bool,
        device: torch.device,
        seed: int = 0,
        resident: bool | None = None,
        resident_fraction: float = 0.5,
        prefetch: int = 3,
        rank: int = 0,
        world_size: int = 1,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size: {batch_size} must be at least 1")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank: {rank} is not in [0, world_size={world_size})")
        self.rank, self.world_size = rank, world_size
        self.dataset = dataset
        self.batch_size = batch_size
        self.train = train
        self.device = device
        self.seed = seed
        self.prefetch = max(1, prefetch)
        self.num_workers = 0  # for logs: no worker processes
        self._targets = torch.from_numpy(dataset.labels.astype(np.float32))
        if resident is None:
            resident = device.type == "cuda" and dataset.array.nbytes < resident_fraction * torch.cuda.mem_get_info(device)[0]
        self.resident = bool(resident)
        self._on_device = None
        if self.resident:
            self._on_device = upload(dataset.array, device)

    def shard(self, rank: int, world_size: int) -> "CachedLoader":
        """This loader for one data-parallel rank (sharing the cache and any device copy of it)."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank: {rank} is not in [0, world_size={world_size})")
        sharded = copy.copy(self)
        sharded.rank, sharded.world_size = rank, world_size
        return sharded

    def __len__(self) -> int:
        n = len(self.dataset)
        if self.train and n > self.batch_size:
            return n // self.batch_size
        full, rest = divmod(n, self.batch_size)
        return full + (rest >= self.world_size)  # see _batches: a last batch too small to share is dropped

    def _batches(self, generator: torch.Generator) -> list[torch.Tensor]:
        n = len(self.dataset)
        order = torch.randperm(n, generator=generator) if self.train else torch.arange(n)
        if self.train and n > self.batch_size:
            order = order[: n - n % self.batch_size]
        # Data-parallel ranks each take their share of every global batch (rank r: the r-th contiguous
        # slice). A batch smaller than the world size is dropped, as RankBatches does: it would give
        # some rank an empty batch, which BatchNorm in train mode cannot normalise.
        # Sorted within a batch: reads from the memory map go forward; the batch is the same set.
        return [part.tensor_split(self.world_size)[self.rank].sort().values for part in order.split(self.batch_size)
                if len(part) >= self.world_size]

    def _device_indices(self, batches: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """The batches' indices on the device, in one copy from pinned memory.

        A copy from pageable memory waits for the GPU to finish its queue, once per batch.
        """
        flat = torch.cat(batches)
        if self.device.type == "cuda":
            flat = flat.pin_memory()
        return flat.to(self.device, non_blocking=True).split([len(index) for index in batches])

    def _host_batch(self, index: torch.Tensor) -> torch.Tensor:
        """Gather one batch from the memory map (into pinned memory on CUDA); runs in a thread."""
        array = self.dataset.array
        out = torch.empty((len(index), *array.shape[1:]), dtype=torch.uint8, pin_memory=self.device.type == "cuda")
        np.take(array, index.numpy(), axis=0, out=out.numpy(), mode="clip")  # numpy copies without the GIL
        return out

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed)
        batches = self._batches(generator)
        if self.world_size > 1:  # the same shuffle on every rank, but each its own flips and crops
            generator = torch.Generator().manual_seed(derive_seed(self.seed, self.rank))
        if self.resident:
            images_of = (self._on_device.index_select(0, index) for index in self._device_indices(batches))
            yield from self._finish(batches, images_of, generator)
            return

        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="cache-gather") as pool:
            pending = [pool.submit(self._host_batch, index) for index in batches[: self.prefetch]]

            def host_batches():
                for k in range(len(batches)):
                    host = pending[k].result()
                    if k + self.prefetch < len(batches):
                        pending.append(pool.submit(self._host_batch, batches[k + self.prefetch]))
                    pending[k] = None  # drop the reference: the pinned buffer returns to torch's cache
                    yield host.to(self.device, non_blocking=True)

            yield from self._finish(batches, host_batches(), generator)

    def _finish(self, batches, images_of, generator):
        for index, images in zip(batches, images_of):
            if self.train:
                images = augment_batch(images, *augment_params(len(index), generator))
            else:
                images = normalise_batch(images)
            labels = self._targets[index]
            if self.device.type == "cuda":
                labels = labels.pin_memory()  # so the loop's non_blocking copy really is one
            yield images, labels


def resolve_data_path(config: RunConfig, run_dir: str | Path, split: str, image_ids: Sequence[str],
                      device: torch.device) -> str:
    """"pil" or "cache" for config.data_path on `device` (see the rules above make_loader's fast path)."""
    return _choose_data_path(config, run_dir, split, image_ids, device)[0]


def _choose_data_path(config: RunConfig, run_dir: str | Path, split: str, image_ids: Sequence[str],
                      device: torch.device) -> tuple[str, np.ndarray | None]:
    """resolve_data_path's choice, and the cache's memory map when choosing meant checking and opening it."""
    if config.data_path in ("pil", "cache"):
        return config.data_path, None
    if config.data_path != "auto":
        raise ConfigError(f"data_path: {config.data_path!r} is not one of auto, pil, cache")
    if device.type == "cuda":
        return "cache", None
    try:
        return "cache", open_cache(run_dir, split, image_ids, config.root)
    except CacheError:
        return "pil", None


def make_cached_loader(run_dir: str | Path, config: RunConfig, split: str, rows, *, train: bool,
                       device: torch.device, batch_size: int | None = None, epoch: int = 0,
                       array: np.ndarray | None = None) -> CachedLoader:
    """The fast-path loader of one split; `rows` are load_split_frame's rows of that split; `array`
    the split's cache if the caller has just opened it (else it is checked, built if need be, here)."""
    image_ids = rows.index.tolist()
    if array is None:
        array = ensure_split_cache(run_dir, split, image_ids, config.root,
                                   num_workers=resolve_num_workers(config.num_workers))
    dataset = CachedImages(array, image_ids, rows[list(ATTRIBUTES)].to_numpy(dtype=np.int8))
    return CachedLoader(dataset, batch_size=batch_size or config.batch_size, train=train, device=device,
                        seed=derive_seed(config.seed, epoch))
