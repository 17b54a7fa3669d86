"""The classifier: a torchvision backbone with a 40-output head, early children frozen.

The write-up's model is ImageNet-pretrained ResNeXt50 (32x4d) with `fc` replaced by
Linear(2048, 40) and the first 6 children (conv1, bn1, relu, maxpool, layer1, layer2) frozen.
`build_model` makes that by default and any torchvision classification model by name.

Frozen BatchNorm: freezing sets `requires_grad=False` only. When the model is in train() mode
the BatchNorm layers inside frozen children still normalise with batch statistics and still
update their running mean/variance; only their affine weight and bias stay fixed. That is what
the write-up did (it only set requires_grad), so it is kept as the default: the running
statistics adapt to CelebA faces while the learned filters stay ImageNet's. To freeze them
completely, a training loop would call `.eval()` on the frozen children after `model.train()`.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any
from urllib.error import URLError

import numpy as np
import torch
from torch import nn
from torchvision import models

from faceattr.attributes import ATTRIBUTES
from faceattr.checkpoint import load_checkpoint, save_checkpoint
from faceattr.data.images import IMAGE_SIZE, MEAN, STD
from faceattr.run.config import RunConfig


log = logging.getLogger(__name__)

DEFAULT_ARCH = "resnext50_32x4d"
# Models with auxiliary classifiers: keep only the main head (one output tensor in train mode),
# and skip their slow legacy initialisation.
_ARCH_KWARGS: dict[str, dict[str, Any]] = {
    "googlenet": {"aux_logits": False, "init_weights": False},
    "inception_v3": {"aux_logits": False, "init_weights": False},
}
# Prefixes that wrappers add to state-dict keys: DataParallel and torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# Keys in model.pt / a training checkpoint that hold the model's state dict.
_STATE_DICT_KEYS = ("state_dict", "model")
MODEL_FILE_KEYS = (
    "state_dict", "arch", "attributes", "thresholds", "mean", "std", "image_size", "loss", "epoch", "run",
    "val_mean_accuracy",
)


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights are not cached and cannot be downloaded (e.g. offline)."""


def build_model(
    arch: str = DEFAULT_ARCH,
    weights: str = "imagenet",
    freeze_children: int = 6,
    num_outputs: int = len(ATTRIBUTES),
) -> "torch.nn.Module":
    """A torchvision classification model with a `num_outputs` head and its first children frozen.

    `weights`: "imagenet" (torchvision's DEFAULT weights for `arch`, cached under
    torch.hub.get_dir()/checkpoints), "none" (random initialisation), or the path of a state
    dict: a whole model's (head included when its shape fits) or a backbone's.
    """
    known = models.list_models(module=models)
    if arch not in known:
        raise ValueError(f"arch: {arch!r} is not a torchvision classification model; known: {', '.join(known)}")
    if num_outputs < 1:
        raise ValueError(f"num_outputs: {num_outputs} must be at least 1")
    kwargs = dict(_ARCH_KWARGS.get(arch, {}))

    if weights == "imagenet":
        model = _imagenet_model(arch, kwargs)
    elif weights == "none":
        model = models.get_model(arch, weights=None, **kwargs)
    else:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"weights: {weights!r} is not 'imagenet', 'none' or an existing state-dict file")
        model = models.get_model(arch, weights=None, **kwargs)

    head = replace_head(model, num_outputs)
    if weights not in ("imagenet", "none"):
        _load_weights_file(model, Path(weights), head)
    _freeze(model, arch, freeze_children)
    return model


def model_from_config(config: "RunConfig") -> "torch.nn.Module":
    return build_model(config.arch, config.weights, config.freeze_children, len(ATTRIBUTES))


def trainable_parameters(model: "torch.nn.Module") -> list:
    """The parameters the optimizer should update: those not frozen."""
    return [p for p in model.parameters() if p.requires_grad]


def head_name(model: "torch.nn.Module") -> str:
    """Dotted name of the final classification layer: fc, classifier[.N], heads.head or head."""
    for attr in ("fc", "head", "heads", "classifier"):
        module = getattr(model, attr, None)
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            return attr
        if isinstance(module, nn.Sequential):
            # The last Linear (or SqueezeNet's 1x1 Conv2d) of the classifier block.
            for name, child in reversed(list(module.named_children())):
                if isinstance(child, (nn.Linear, nn.Conv2d)):
                    return f"{attr}.{name}"
    raise ValueError(f"{type(model).__name__}: no .fc, .head, .heads or .classifier layer to replace")


def replace_head(model: "torch.nn.Module", num_outputs: int) -> str:
    """Swap the final layer for a freshly initialised one with `num_outputs` outputs; return its name."""
    name = head_name(model)
    parent_name, _, leaf = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, leaf)
    if isinstance(old, nn.Linear):
        new = nn.Linear(old.in_features, num_outputs)
    else:  # SqueezeNet: a 1x1 convolution produces the class scores
        new = nn.Conv2d(old.in_channels, num_outputs, kernel_size=1)
    setattr(parent, leaf, new)
    return name


def load_model_file(path: str | os.PathLike, map_location: Any = "cpu") -> tuple["torch.nn.Module", dict]:
    """The exported RUN/model.pt: (model in eval mode, the file's dict without the state dict)."""
    path = Path(path)
    data = load_checkpoint(path, map_location=map_location)
    missing = [key for key in MODEL_FILE_KEYS if key not in data]
    if missing:
        raise ValueError(f"{path}: not an exported model file; missing key(s) {', '.join(missing)}")
    attributes = list(data["attributes"])
    thresholds = data["thresholds"]
    if len(attributes) != len(thresholds):
        raise ValueError(f"{path}: {len(attributes)} attributes but {len(thresholds)} thresholds")
    model = build_model(data["arch"], weights="none", freeze_children=0, num_outputs=len(attributes))
    state = clean_state_dict(data["state_dict"], path)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(f"{path}: state_dict does not fit {data['arch']}: {_short(str(exc))}") from None
    model.eval()
    info = {key: value for key, value in data.items() if key != "state_dict"}
    return model, info


def check_run_model(info: dict, path: str | os.PathLike, run_dir: str | os.PathLike, *, arch: str, epoch: int) -> None:
    """Refuse a model file that is not this run's selected model: another run's (by its run
    folder's name, which stays the same when a worker pulls the folder elsewhere), another arch's,
    or another epoch's than the one best.json names."""
    found = {"run": Path(str(info.get("run", ""))).name, "arch": info.get("arch"), "epoch": info.get("epoch")}
    expected = {"run": Path(run_dir).resolve().name, "arch": arch, "epoch": epoch}
    wrong = [f"{key} {found[key]!r}, expected {expected[key]!r}" for key in expected if found[key] != expected[key]]
    if wrong:
        raise ValueError(f"{path}: not this run's selected model ({'; '.join(wrong)}); run 'faceattr select "
                         f"--run {run_dir}' to export it again")


def export_model(path: str | os.PathLike, state_dict: dict, config: "RunConfig", *, epoch: int, thresholds,
                 run: str, val_mean_accuracy: float) -> Path:
    """Write the inference artifact (model.pt, read by load_model_file): weights plus everything needed to use them."""
    thresholds = torch.as_tensor(np.asarray(thresholds, dtype=np.float32)).reshape(-1)
    if thresholds.numel() != len(ATTRIBUTES):
        raise ValueError(f"thresholds: expected {len(ATTRIBUTES)} values, got {thresholds.numel()}")
    return save_checkpoint({
        "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
        "arch": config.arch,
        "attributes": list(ATTRIBUTES),
        "thresholds": thresholds,
        "mean": list(MEAN),
        "std": list(STD),
        "image_size": list(IMAGE_SIZE),
        "loss": config.loss,
        "epoch": int(epoch),
        "run": run,
        "val_mean_accuracy": float(val_mean_accuracy),
    }, path)


def clean_state_dict(state: Any, source: str | os.PathLike) -> dict:
    """Check a state dict holds only tensors and strip DataParallel/torch.compile key prefixes."""
    if not isinstance(state, dict) or not state:
        raise ValueError(f"{source}: expected a non-empty state dict, got {type(state).__name__}")
    cleaned = {}
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise ValueError(f"{source}: state dict entry {key!r} is not a named tensor")
        # Wrappers nest in either order (compile(DDP(m)) saves "_orig_mod.module.x"): strip until none is left.
        while key.startswith(_WRAPPER_PREFIXES):
            key = key.removeprefix(next(p for p in _WRAPPER_PREFIXES if key.startswith(p)))
        cleaned[key] = value
    return cleaned


# -- helpers ----------------------------------------------------------------------------------
def _imagenet_model(arch: str, kwargs: dict[str, Any]) -> "torch.nn.Module":
    """get_model with the DEFAULT ImageNet weights; a clear error when they cannot be fetched."""
    weights_enum = models.get_model_weights(arch).DEFAULT
    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    cached = checkpoints / os.path.basename(weights_enum.url)
    try:
        return models.get_model(arch, weights=weights_enum, **kwargs)
    except (URLError, ConnectionError, TimeoutError) as exc:
        raise WeightsUnavailableError(
            f"weights 'imagenet' for {arch}: {cached} is not cached and the download failed "
            f"({getattr(exc, 'reason', exc)}). Pre-download it where there is internet access: "
            f"fetch {weights_enum.url} into {checkpoints}/ (e.g. curl -L -o {cached} {weights_enum.url}, "
            "or point TORCH_HOME at a cache that has it), or use weights 'none' or a state-dict file."
        ) from None


def _load_weights_file(model: "torch.nn.Module", path: Path, head: str) -> None:
    """Load a state dict file into `model`: a full model's, or a backbone's (head left fresh)."""
    data = load_checkpoint(path)
    for key in _STATE_DICT_KEYS:  # model.pt or a training checkpoint: take the model's part
        if isinstance(data.get(key), dict):
            data = data[key]
            break
    state = clean_state_dict(data, path)
    expected = model.state_dict()
    head_prefix = head + "."

    unexpected = sorted(k for k in state if k not in expected)
    if unexpected:
        raise ValueError(
            f"{path}: {len(unexpected)} key(s) do not belong to this model "
            f"(e.g. {', '.join(unexpected[:5])}); is it a state dict of another architecture?"
        )
    # The head may come from a model with another number of outputs (e.g. ImageNet's 1000).
    skipped_head = [k for k in state if k.startswith(head_prefix) and state[k].shape != expected[k].shape]
    for key in skipped_head:
        del state[key]
    wrong_shape = [
        f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
        for k in state if state[k].shape != expected[k].shape
    ]
    if wrong_shape:
        raise ValueError(f"{path}: tensor shapes do not fit this model: {'; '.join(wrong_shape[:5])}")
    missing = sorted(
        k for k in expected
        if k not in state and not k.startswith(head_prefix) and not k.endswith("num_batches_tracked")
    )
    if missing:
        raise ValueError(
            f"{path}: {len(missing)} backbone key(s) are missing (e.g. {', '.join(missing[:5])}); "
            "is it a state dict of another architecture?"
        )
    model.load_state_dict(state, strict=False)
    if any(k.startswith(head_prefix) for k in state):
        log.info("weights: loaded %s (%d tensors, head included)", path, len(state))
    else:
        log.info("weights: loaded backbone from %s (%d tensors); head %s initialised randomly", path, len(state), head)


def _freeze(model: "torch.nn.Module", arch: str, freeze_children: int) -> None:
    children = list(model.named_children())
    if freeze_children < 0 or freeze_children > len(children):
        names = ", ".join(name for name, _ in children)
        raise ValueError(
            f"freeze_children: {freeze_children} is not between 0 and the {len(children)} "
            f"top-level children of {arch} ({names})"
        )
    for _, child in children[:freeze_children]:
        for parameter in child.parameters():
            parameter.requires_grad_(False)
    if not trainable_parameters(model):
        raise ValueError(f"freeze_children: {freeze_children} freezes every parameter of {arch}, head included")


def _short(text: str, limit: int = 400) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."
