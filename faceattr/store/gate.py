"""The publish gate's comparison: which figures decide whether a published run beats the champion.

    same evaluation set   (split strategy, seed unless official, sha256 of the label file and of the
                          sorted test image ids): the two recorded test mean accuracies.
    another set           (new data, another split): both models scored again on the challenger's
                          test images that the champion never trained or validated on (its
                          split.csv says which), by the `rescore` function the caller gives (the
                          engine's; the store never imports it). Fewer than `min_images` such
                          images: no comparison, the run stays a challenger and says so.

Every decision carries a `comparison` record: the rule, the image count and both figures (or why
none were measured); the registry stores it on the model and its event.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Callable

from faceattr.data.versions import run_labels_file
from faceattr.fsutil import read_json, sha256_of
from faceattr.run.layout import RunLayout

# (model.pt path, the run folder whose data and labels to read, image ids) -> mean accuracy.
Rescore = Callable[[Path, Path, list[str]], float]

GATE_MIN_IMAGES = 200  # the DAG param gate_min_images / --gate-min-images defaults to this
SAME_SET_RULE = "test mean accuracy on the same evaluation set"
SHARED_RULE = ("mean accuracy of both models on the challenger's test images that the champion never trained "
               "or validated on")
HAND_RULE = "changed by hand: no comparison was made"

EVAL_SET_FIELDS = {"split": "split strategy", "seed": "seed", "data_sha256": "source data sha256",
                   "test_ids_sha256": "test images sha256"}


# -- the evaluation set --------------------------------------------------------------------------
def evaluation_set(run_dir: str | Path) -> dict[str, Any]:
    """What a run's test accuracy was measured on: split strategy, seed, the sha256 of the label
    file of the run's data version and of the sorted test image ids in RUN/split.csv (fixed for a
    run). A part that cannot be read here is None: then nothing is comparable."""
    config = read_json(RunLayout(run_dir).config)
    try:
        data_sha256 = sha256_of(run_labels_file(run_dir, config.get("root") or "."))
    except OSError:
        data_sha256 = None
    test = _split_ids(Path(run_dir), ("test",))
    test_sha256 = None if test is None else hashlib.sha256("\n".join(sorted(test)).encode()).hexdigest()
    return {"split": config.get("split"), "seed": config.get("seed"), "data_sha256": data_sha256,
            "test_ids_sha256": test_sha256}


def set_difference(new: dict | None, old: dict | None) -> str | None:
    """None when the two evaluation sets are the same and known; else what differs. The one rule of
    comparability: the publish gate and the UI's "compare with care" note use it. The seed counts
    only for split strategies that use it (not `official`)."""
    if not new or not old:
        return "the champion's evaluation set was not recorded" if new else "this run's evaluation set is unknown"
    if new.get("data_sha256") is None or old.get("data_sha256") is None:
        return "the source data checksum is unknown (label file not readable when published)"
    if new.get("test_ids_sha256") is None or old.get("test_ids_sha256") is None:
        return "the test images are unknown (RUN/split.csv not readable when published)"
    keys = [key for key in EVAL_SET_FIELDS if key != "seed" or new.get("split") != "official"]
    differ = [f"{EVAL_SET_FIELDS[key]} {new.get(key)!r} vs {old.get(key)!r}" for key in keys
              if new.get(key) != old.get(key)]
    return "; ".join(differ) or None


def _split_ids(run_dir: Path, parts: tuple[str, ...]) -> list[str] | None:
    try:
        from faceattr.data.split import read_split  # pandas: not at DAG parse time (registry imports this)

        split = read_split(run_dir)
    except (OSError, ValueError):
        return None
    return sorted(split.index[split.isin(parts)])


def shared_test_images(challenger_dir: str | Path, champion_dir: str | Path) -> list[str] | None:
    """The challenger's test images the champion never trained or validated on; None when either
    split.csv is not readable here."""
    test = _split_ids(Path(challenger_dir), ("test",))
    seen = _split_ids(Path(champion_dir), ("train", "val"))
    if test is None or seen is None:
        return None
    seen_set = set(seen)
    return [image_id for image_id in test if image_id not in seen_set]


# -- the decision ------------------------------------------------------------------------------
def compare(model: dict, model_dir: Path, champion: dict, champion_dir: str | None, *, min_gain: float,
            min_images: int, rescore: Rescore | None) -> tuple[str, str, dict[str, Any]]:
    """(state, reason, comparison) for `model` against the champion: "champion" when it beats it."""
    who = champion["run_id"]
    difference = set_difference(model.get("eval_set"), champion.get("eval_set"))
    if not difference:
        new, old = model["test_mean_accuracy"], champion["test_mean_accuracy"]
        comparison = {"rule": SAME_SET_RULE, "challenger": new, "champion": old}
        return (*_decide(new, old, who, min_gain, "test mean accuracy"), comparison)
    not_compared = f"not compared with champion run {who}: evaluation sets differ ({difference})"
    if rescore is None:
        return "challenger", not_compared + "; publish with promote: force to promote it anyway", \
            {"rule": "not compared: evaluation sets differ", "difference": difference}
    shared = shared_test_images(model_dir, champion_dir) if champion_dir else None
    if shared is None:
        return "challenger", not_compared + f"; the champion's split.csv is not readable in {champion_dir}", \
            {"rule": "not compared: the champion's split is unknown", "difference": difference}
    if len(shared) < min_images:
        return "challenger", (f"{not_compared}, and only {len(shared)} of this run's test images are unseen by the "
                              f"champion (gate_min_images {min_images})"), \
            {"rule": SHARED_RULE, "images": len(shared), "min_images": min_images, "difference": difference}
    recorded = champion.get("sha256")
    if recorded is not None and (not Path(champion["path"]).is_file() or sha256_of(champion["path"]) != recorded):
        return "challenger", (f"{not_compared}; the champion's model {champion['path']} is missing or changed since "
                              f"it was published: re-run select and test for run {who}"), \
            {"rule": "not compared: the champion's model file changed", "difference": difference}
    new = float(rescore(Path(model["path"]), model_dir, shared))
    old = float(rescore(Path(champion["path"]), model_dir, shared))
    comparison = {"rule": SHARED_RULE, "images": len(shared), "challenger": new, "champion": old,
                  "difference": difference}
    state, reason = _decide(new, old, who, min_gain, f"mean accuracy on {len(shared)} shared test images")
    return state, reason, comparison


def _decide(new: float, old: float, who: str, min_gain: float, measure: str) -> tuple[str, str]:
    gain = new - old
    versus = f": {measure} {new:.4f} vs {old:.4f} (gain {gain:+.4f})"
    if gain > 0 and gain >= min_gain:
        return "champion", f"beats run {who}{versus}"
    needed = "above 0" + (f" and at least {min_gain:g}" if min_gain else "")
    return "challenger", f"does not beat champion run {who}{versus}; the gain must be {needed}"
