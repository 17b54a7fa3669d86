"""The trigger forms of the DAGs: faceattr_train's Params from RunConfig's schema, faceattr_score's.

Imported when the DAG files are parsed: light on purpose (no torch or pandas; the registry,
which imports SQLAlchemy, to list the published models in the scoring form).
"""
from __future__ import annotations

from typing import Any, Mapping

from faceattr import settings
from faceattr.run.config import KNOWN_ARCHS, ConfigError, RunConfig
from faceattr.store.gate import GATE_MIN_IMAGES
from faceattr.store.registry import published_run_ids

# The form's sections, in order. A field RunConfig adds must be placed here (train_params checks).
SECTIONS = {
    "Data": ("source", "root", "split", "seed"),
    "Model": ("arch", "weights", "freeze_children", "loss"),
    "Training": ("epochs", "batch_size", "lr", "weight_decay", "optimizer", "schedule", "patience",
                 "pos_weight", "tune_thresholds", "recalibrate_bn"),
    "Execution": ("device", "num_workers", "data_path", "compile"),
    "Outputs": ("output", "private_images"),
    "Publishing": ("promote", "promote_min_gain", "gate_min_images"),
}
# Used where RunConfig's schema carries no "description" of its own; the form-only fields (source,
# output, private_images, promote, promote_min_gain, gate_min_images) are not RunConfig's and always take theirs from here.
DESCRIPTIONS = {
    "source": "Where to fetch CelebA from: a local folder in the official layout, an http(s) mirror, or 'gdrive'. "
              "Empty: use the dataset already in the root.",
    "root": "Dataset root: ROOT/celeba/{img_align_celeba/, list_attr_celeba.txt, ...} (torchvision's layout).",
    "split": "random: 80/10/10 with sklearn train_test_split (the write-up); official: CelebA's partition; "
             "identity: no person in two splits.",
    "seed": "Seeds the split, the initialisation and the shuffle.",
    "arch": "torchvision classification architecture; the write-up used resnext50_32x4d.",
    "weights": "imagenet (pretrained, as the write-up), none (from scratch), or the path of a state dict.",
    "freeze_children": "How many of the model's first children are frozen; empty: 6 (the write-up) with imagenet "
                       "or file weights, 0 with weights none.",
    "loss": "mse on ±1 labels with threshold 0 (the write-up), or bce on logits.",
    "epochs": "Epochs to train; the DAG has epoch groups up to FACEATTR_MAX_EPOCHS, the rest are skipped.",
    "batch_size": "Images per batch.",
    "lr": "Learning rate.",
    "weight_decay": "Weight decay.",
    "optimizer": "adamax (the write-up) or adamw.",
    "schedule": "Learning-rate schedule over the epochs.",
    "patience": "Stop after this many validated epochs without a better validation mean accuracy (0: never).",
    "pos_weight": "Weight each attribute's positives by its negatives/positives ratio (full) or its square root "
                  "(sqrt), for rare attributes; none: the write-up's unweighted loss.",
    "tune_thresholds": "Choose per-attribute thresholds on validation instead of 0.",
    "recalibrate_bn": "After each epoch, recompute BatchNorm statistics on this many unaugmented train images "
                      "(0: off). Fits them to evaluation's unzoomed images; costs a forward pass over them. "
                      "Empty: 0 (the write-up) with imagenet or file weights, 1024 with weights none.",
    "device": "auto (CUDA when available), cpu, cuda or cuda:N.",
    "num_workers": "DataLoader workers; -1: one per core, at most 8.",
    "data_path": "How images are read: auto, pil (decode each epoch) or cache (decoded once).",
    "compile": "torch.compile the model; empty: on for CUDA, off on CPU.",
    "output": "Folder of run folders; this run writes <output>/<run id>/.",
    "private_images": "A folder or .zip of unlabelled images to predict with the chosen model (empty: skip).",
    "promote": "auto: the model becomes champion (what scoring uses) only if its test mean accuracy beats the "
               "champion's on the same evaluation set (split, seed, data, test images); force: it becomes champion anyway.",
    "promote_min_gain": "With promote auto: the least gain in test mean accuracy over the champion (0: any gain).",
    "gate_min_images": "When the champion was tested on other data: both models are scored again on this run's test "
                       "images the champion never trained or validated on; with fewer such images than this, no "
                       "comparison is made and the run stays a challenger.",
}


def train_params() -> dict[str, dict[str, Any]]:
    """faceattr_train's params as Param keyword arguments: default, title, description, section, JSON schema.

    Built from RunConfig.json_schema(), so the form and the library agree on every bound; the
    trigger form and `airflow dags test -c` refuse values outside them before any task runs.
    """
    schema = RunConfig.json_schema()
    defaults = RunConfig.declared_defaults()  # freeze_children: None, resolved from the weights
    limit = settings.max_epochs()
    home = settings.home()
    defaults.update(root=str(home), epochs=min(defaults["epochs"], limit),
                    source=settings.source(), output=str(home / "runs"), private_images=None,
                    promote="auto", promote_min_gain=0.0, gate_min_images=GATE_MIN_IMAGES)
    schema["epochs"] = {**schema["epochs"], "maximum": limit}
    schema["arch"] = {**schema["arch"], "enum": list(KNOWN_ARCHS)}
    schema["source"] = {"type": ["string", "null"]}
    schema["output"] = {"type": "string", "minLength": 1}
    schema["private_images"] = {"type": ["string", "null"]}
    schema["promote"] = {"type": "string", "enum": ["auto", "force"]}
    schema["promote_min_gain"] = {"type": "number", "minimum": 0, "maximum": 1}
    schema["gate_min_images"] = {"type": "integer", "minimum": 1}
    params = {}
    for section, names in SECTIONS.items():
        for name in names:
            params[name] = {
                "default": defaults[name],
                "title": name.replace("_", " ").capitalize(),
                "description": DESCRIPTIONS[name],
                "section": section,
                **schema[name],  # RunConfig's own title/description/section, where it gives them
            }
    missing = set(schema) - set(params)
    if missing:  # a field added to RunConfig must get a place in the form
        raise RuntimeError(f"RunConfig field(s) {sorted(missing)} have no section in the faceattr_train form")
    return params


def data_params() -> dict[str, dict[str, Any]]:
    """faceattr_data's params: the source to check and the root it goes into (faceattr_train's defaults)."""
    train = train_params()
    return {name: {key: value for key, value in train[name].items() if key != "section"}
            for name in ("source", "root")}


def score_params() -> dict[str, dict[str, Any]]:
    """faceattr_score's params (images default to the standing set, if one is configured)."""
    images = {
        "type": "string", "minLength": 1, "title": "Images",
        "description": "A folder or .zip of images to score; must lie under FACEATTR_DATA_ROOTS.",
    }
    if settings.standing_set():  # runs started by a new model (no conf) score the standing set
        images["default"] = settings.standing_set()
    return {
        "images": images,
        "output": {
            "default": None, "type": ["string", "null"], "title": "Output CSV",
            "description": "The predictions CSV (errors go beside it as <name>.errors.csv); "
                           "empty: $FACEATTR_HOME/scores/<run id>.csv. Must lie under FACEATTR_DATA_ROOTS.",
        },
        "model": {
            "default": "champion", "type": "string", "minLength": 1, "title": "Model",
            "examples": model_choices(),
            "description": "champion (the registry's champion, what 'faceattr models' lists first; 'latest' is "
                           "the same) or the run id of a published model.",
        },
        "batch_size": {"default": 128, "type": "integer", "minimum": 1, "maximum": 65536, "title": "Batch size",
                       "description": "Images per batch."},
        "device": {"default": "auto", "type": "string", "minLength": 1, "title": "Device",
                   "description": "auto (CUDA when available), cpu, cuda or cuda:N."},
        "scores": {"default": False, "type": "boolean", "title": "Scores",
                   "description": "Add each attribute's raw score as a column."},
    }


def model_choices() -> list[str]:
    """What the scoring form offers for `model`: champion, then each published run (read-only from
    the run store when the DAG is parsed; nothing but champion when it cannot be read)."""
    return ["champion", *published_run_ids()]


def check_conf(conf: Mapping[str, Any] | None, known: set[str]) -> None:
    """Refuse keys in the trigger conf that no param takes: a typo would otherwise be ignored."""
    unknown = sorted(set(conf or {}) - known)
    if unknown:
        raise ConfigError(f"DAG run conf: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
