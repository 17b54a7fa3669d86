"""One typed configuration for a training run.

The same `RunConfig` flows from the CLI flags or the Airflow trigger form into every library
function, and is saved as `RUN/config.json`. It imports nothing heavy, so DAG files can build
their Params from it at parse time.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from faceattr.fsutil import write_json
from faceattr.run.layout import RunLayout

SPLIT_STRATEGIES = ("random", "official", "identity")
LOSSES = ("mse", "bce")
POS_WEIGHTS = ("none", "sqrt", "full")
OPTIMIZERS = ("adamax", "adamw")
SCHEDULES = ("none", "cosine", "step")
DATA_PATHS = ("auto", "pil", "cache")
# Offered in the Airflow trigger form; the library accepts any torchvision classification model.
KNOWN_ARCHS = (
    "resnext50_32x4d", "resnet18", "resnet34", "resnet50", "resnet101", "resnext101_32x8d",
    "wide_resnet50_2", "mobilenet_v3_large", "efficientnet_b0", "convnext_tiny", "regnet_y_800mf",
)

FROZEN_PRETRAINED = 6  # the write-up's frozen children
RECALIBRATE_FROM_SCRATCH = 1024  # train images whose BatchNorm statistics a from-scratch epoch ends with

# Fields that may change between epochs of one run: they decide where and how fast it runs,
# not what it learns. Any other difference on resume is an error.
EXECUTION_FIELDS = frozenset({"device", "num_workers", "epochs", "patience", "compile", "data_path"})

# Named presets: RunConfig fields applied over a conf (RunConfig(**{**PRESETS[name], **conf})). The
# defaults stay the write-up's recipe; "gpu" is the batch the fast path is measured at on one GPU
# (benchmarks/gpu_check.py), with the decode-once cache. SCORE_BATCH_SIZES: predict's batch for the
# same preset.
PRESETS = {"gpu": {"batch_size": 256, "data_path": "cache", "device": "cuda"}}
SCORE_BATCH_SIZES = {"gpu": 512}


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the field."""


def _choice(*values: str) -> dict[str, Any]:
    return {"choices": values}


@dataclass(frozen=True)
class RunConfig:
    # data
    root: str = "data"
    split: str = field(default="random", metadata=_choice(*SPLIT_STRATEGIES))
    seed: int = field(default=0, metadata={"min": 0, "max": 2**32 - 1})  # sklearn's and numpy's seed range
    # model
    arch: str = "resnext50_32x4d"
    weights: str = "imagenet"  # imagenet | none | path to a state dict
    # None: what the weights allow. Frozen random layers never learn, so from scratch nothing is
    # frozen; pretrained (or file) weights keep the write-up's first 6 children.
    freeze_children: int | None = field(default=None, metadata={
        "min": 0, "max": 1000, "default_help": f"{FROZEN_PRETRAINED} with imagenet or file weights, 0 with weights none"})
    # optimisation
    epochs: int = field(default=12, metadata={"min": 1, "max": 1000})
    batch_size: int = field(default=64, metadata={"min": 1, "max": 65536})
    lr: float = field(default=1e-3, metadata={"exclusive_min": 0.0})
    weight_decay: float = field(default=0.0, metadata={"min": 0.0})
    optimizer: str = field(default="adamax", metadata=_choice(*OPTIMIZERS))
    schedule: str = field(default="none", metadata=_choice(*SCHEDULES))
    loss: str = field(default="mse", metadata=_choice(*LOSSES))
    # Weight each attribute's positives by its negatives/positives ratio ("full") or that ratio's
    # square root ("sqrt"), so rare attributes are not drowned by their negatives.
    pos_weight: str = field(default="none", metadata=_choice(*POS_WEIGHTS))
    tune_thresholds: bool = False  # per-attribute thresholds chosen on validation
    patience: int = field(default=0, metadata={"min": 0, "max": 1000})  # 0: no early stopping
    # After each epoch, recompute BatchNorm statistics on this many unaugmented train images (0: off).
    # None: what the weights allow. From scratch the weights move fast, so running averages trail
    # them and were gathered on zoomed training crops; recomputing them on images as evaluation
    # sees them ("precise BN") is then worth a forward pass. Pretrained runs keep the write-up's 0.
    recalibrate_bn: int | None = field(default=None, metadata={
        "min": 0, "max": 10**9,
        "default_help": f"0 with imagenet or file weights, {RECALIBRATE_FROM_SCRATCH} with weights none"})
    # execution
    device: str = field(default="auto", metadata={"pattern": r"auto|cpu|cuda(:\d+)?",
                                                  "hint": "auto, cpu, cuda or cuda:N"})
    num_workers: int = field(default=-1, metadata={"min": -1, "max": 1024})  # -1: one per core, at most 8
    data_path: str = field(default="auto", metadata=_choice(*DATA_PATHS))
    compile: bool | None = None  # None: on for CUDA, off on CPU

    def __post_init__(self) -> None:
        for f in fields(self):
            _check_field(f, getattr(self, f.name))
        if self.freeze_children is None:  # resolved once: config.json records the number that ran
            frozen = 0 if self.weights == "none" else FROZEN_PRETRAINED
            object.__setattr__(self, "freeze_children", frozen)
        if self.recalibrate_bn is None:
            images = RECALIBRATE_FROM_SCRATCH if self.weights == "none" else 0
            object.__setattr__(self, "recalibrate_bn", images)

    # -- conversion ---------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config") -> "RunConfig":
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        if isinstance(data.get("pos_weight"), bool):  # configs written before "sqrt" existed
            data = {**data, "pos_weight": "full" if data["pos_weight"] else "none"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        try:
            return cls(**data)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "RunConfig":
        return dataclasses.replace(self, **changes)

    # -- persistence --------------------------------------------------------------------------
    def save(self, run_dir: str | os.PathLike) -> Path:
        return write_json(RunLayout(run_dir).config, self.to_dict())

    @classmethod
    def load(cls, run_dir: str | os.PathLike) -> "RunConfig":
        path = RunLayout(run_dir).config
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no run config; start the run with 'faceattr split' or 'faceattr fit'")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
        return cls.from_dict(data, source=str(path))

    def check_resumable(self, saved: "RunConfig", where: str = "run") -> None:
        """Refuse to continue a run whose learning settings differ from the saved ones."""
        diffs = [
            f"{f.name}: saved {getattr(saved, f.name)!r}, now {getattr(self, f.name)!r}"
            for f in fields(self)
            if f.name not in EXECUTION_FIELDS and getattr(self, f.name) != getattr(saved, f.name)
        ]
        if diffs:
            raise ConfigError(
                f"{where}: cannot resume with a different configuration ({'; '.join(diffs)}); "
                "start a new run folder instead"
            )

    @classmethod
    def json_schema(cls) -> dict[str, dict[str, Any]]:
        """A JSON schema per field: the Airflow trigger form's Params use it."""
        return {f.name: _field_schema(f) for f in fields(cls)}

    @classmethod
    def declared_defaults(cls) -> dict[str, Any]:
        """Each field's default before resolution (None where it follows other fields): form defaults."""
        return {f.name: f.default for f in fields(cls)}


def check_continues(config: RunConfig, run_dir: str | os.PathLike) -> RunConfig:
    """Refuse `config` if the run has started (a split or an epoch) with other learning settings.
    A folder with neither takes any config: what it saved then led nowhere."""
    layout = RunLayout(run_dir)
    if layout.config.exists() and started(layout):
        config.check_resumable(RunConfig.load(run_dir), where=str(layout.config))
    return config


def save_or_check(config: RunConfig, run_dir: str | os.PathLike) -> RunConfig:
    """Write config.json for a new run, or check that `config` may continue the saved one."""
    check_continues(config, run_dir)
    config.save(run_dir)
    return config


def started(layout: RunLayout) -> bool:
    """Whether a run folder holds work that its config.json describes: a split or a trained epoch."""
    return layout.split.exists() or bool(layout.trained_epochs())


def check_device(device: str) -> None:
    """Refuse a device this machine does not have (cuda on a CPU, cuda:N past the last GPU)."""
    if device in ("auto", "cpu"):
        return
    import torch  # here, not at the top: DAG files import this module at parse time

    if not torch.cuda.is_available():
        raise ConfigError(f"device: {device!r} requested but CUDA is not available on this machine")
    index = int(device.partition(":")[2] or 0)
    if index >= torch.cuda.device_count():
        raise ConfigError(f"device: {device!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")


def _type_name(f: dataclasses.Field) -> str:
    return str(f.type).replace(" ", "")


def field_kind(f: dataclasses.Field) -> str:
    """bool, int, float or str: the type of a field's values other than None (for CLI flags)."""
    return _type_name(f).removesuffix("|None")


_JSON_TYPES = {"bool": "boolean", "int": "integer", "float": "number", "str": "string"}


def _check_field(f: dataclasses.Field, value: Any) -> None:
    kind, base = _type_name(f), field_kind(f)
    meta = f.metadata
    if value is None and base != kind:
        return
    if base == "bool":
        ok = isinstance(value, bool)
    elif base == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif base == "float":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
        ok = isinstance(value, str) and value != ""
    if not ok:
        raise ConfigError(f"{f.name}: expected {kind}, got {value!r}")
    if base == "float" and not math.isfinite(value):  # nan compares False with every bound
        raise ConfigError(f"{f.name}: {value!r} is not a finite number")
    if "pattern" in meta and not re.fullmatch(meta["pattern"], value):
        raise ConfigError(f"{f.name}: {value!r} is not one of {meta['hint']}")
    if "choices" in meta and value not in meta["choices"]:
        raise ConfigError(f"{f.name}: {value!r} is not one of {', '.join(meta['choices'])}")
    if "min" in meta and value < meta["min"]:
        raise ConfigError(f"{f.name}: {value!r} is below the minimum {meta['min']}")
    if "max" in meta and value > meta["max"]:
        raise ConfigError(f"{f.name}: {value!r} is above the maximum {meta['max']}")
    if "exclusive_min" in meta and value <= meta["exclusive_min"]:
        raise ConfigError(f"{f.name}: {value!r} must be greater than {meta['exclusive_min']}")


def _field_schema(f: dataclasses.Field) -> dict[str, Any]:
    kind, base = _type_name(f), field_kind(f)
    schema: dict[str, Any] = {"type": _JSON_TYPES[base] if base == kind else [_JSON_TYPES[base], "null"]}
    if base == "str":
        schema["minLength"] = 1
    meta = f.metadata
    if "pattern" in meta:
        schema["pattern"] = f"^(?:{meta['pattern']})$"
    if "choices" in meta:
        schema["enum"] = list(meta["choices"])
    if "min" in meta:
        schema["minimum"] = meta["min"]
    if "max" in meta:
        schema["maximum"] = meta["max"]
    if "exclusive_min" in meta:
        schema["exclusiveMinimum"] = meta["exclusive_min"]
    return schema
