"""Running a trained model on batches of images: what evaluation and scoring share.

Every score that is written or compared comes out of the head in float32: on CUDA the backbone
runs under bf16 autocast (faceattr.runtime.autocast), but the final layer is run in float32 on
float32 features, so validation scores, tuned thresholds and borderline labels are not rounded
to bf16's 2^-7 grid and the GPU's labels are the CPU's.
"""
from __future__ import annotations

import numpy as np
import torch

from faceattr import runtime
from faceattr.model import head_name

_FLOAT32_HEAD = "_faceattr_float32_head"  # set on a head whose forward prepare_for_inference wrapped


def prepare_for_inference(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Eval mode on `device`, the head in float32; channels_last and cuDNN autotuning on CUDA,
    where convolutions run faster so."""
    runtime.prepare_cuda(device)
    model = model.to(device).eval()
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    run_head_in_float32(model)
    return model


def run_head_in_float32(model: torch.nn.Module) -> None:
    """Make the final layer (faceattr.model.head_name) run in float32 outside autocast, on its
    input cast to float32. Its parameters and the state dict are unchanged; calling it twice is a no-op."""
    head = _head(model)
    if getattr(head, _FLOAT32_HEAD, False):
        return
    forward = head.forward

    def float32_forward(features: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=features.device.type, enabled=False):
            return forward(features.float())

    head.forward = float32_forward
    setattr(head, _FLOAT32_HEAD, True)


def _head(model: torch.nn.Module) -> torch.nn.Module:
    """The final layer: faceattr.model.head_name's for a torchvision model, else the last Linear
    or Conv2d (a plain Sequential, or a model that is one layer)."""
    try:
        return model.get_submodule(head_name(model))
    except ValueError:
        layers = [m for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
        if not layers:
            raise ValueError(f"{type(model).__name__}: no final Linear or Conv2d layer to run in float32") from None
        return layers[-1]


def queue_scores(model: torch.nn.Module, images: torch.Tensor, device: torch.device,
                 pad_to: int | None = None) -> torch.Tensor:
    """Queue the model on one batch: float32 scores (N x K), left on the device (no wait for them).

    `pad_to`: zero images are added to a shorter batch so that the model always sees the same
    shape (cuDNN's autotuning times every new shape once); only the batch's own rows come back.
    Call inside torch.inference_mode().
    """
    if device.type == "cuda":
        if images.device.type == "cpu":  # PIL-decoded files: pinned, or the copy would wait for the GPU
            images = images.pin_memory()
        images = images.to(device, non_blocking=True, memory_format=torch.channels_last)
    else:
        images = images.to(device)
    rows = len(images)
    if pad_to is not None and rows < pad_to:
        images = torch.cat([images, images.new_zeros((pad_to - rows, *images.shape[1:]))])
        if device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
    with runtime.autocast(device):
        return model(images)[:rows].float()


def score_loader(model: torch.nn.Module, loader, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """Scores (N x K float32) and labels (N x K int8) of every (images, labels) batch of `loader`.

    The scores stay on the device until the last batch is queued, then come back in one copy
    (no wait per batch). On CUDA a shorter last batch is padded to the first batch's size.
    """
    model = prepare_for_inference(model, device)
    all_scores, all_labels = [], []
    batch_rows = None
    with torch.inference_mode():
        for images, labels in loader:
            batch_rows = batch_rows or len(images)
            pad_to = batch_rows if device.type == "cuda" else None
            all_scores.append(queue_scores(model, images, device, pad_to=pad_to))
            all_labels.append(labels.numpy().astype(np.int8))
        if not all_scores:
            raise ValueError("score_loader: the loader yielded no batches")
        scores = torch.cat(all_scores).cpu().numpy()
    return scores, np.concatenate(all_labels)
