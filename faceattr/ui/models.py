"""What the Models page shows: the registry's champion and challengers, why each has its state,
its history, and how a challenger differs from the champion per attribute; no HTML here.

Everything is the registry's record (faceattr.store.registry writes it; faceattr.store.queries
reads it). A column or evaluation-set field the registry records beyond the ones named here is
passed on as `details`, so the page shows it without knowing it.
"""
from __future__ import annotations

from typing import Any

from faceattr.attributes import ATTRIBUTES
from faceattr.store import queries
from faceattr.store.registry import set_difference

# The model columns the page lays out itself; any other recorded column goes to "details".
SHOWN = {"run_id", "epoch", "path", "val_mean_accuracy", "test_mean_accuracy", "is_current", "current", "state",
         "reason", "state_at", "actor", "eval_set", "sha256", "started_at", "dag_run_id", "run_dir", "config"}
EVENT_SHOWN = {"id", "run_id", "epoch", "state", "reason", "actor", "at", "previous_run_id", "previous_epoch"}


def short_digest(value: Any) -> str:
    text = "" if value is None else str(value)
    return text[:12] + "…" if len(text) > 12 else text


def eval_set_text(eval_set: dict | None) -> str:
    """The evaluation set in one line: split and seed, then each digest shortened."""
    if not eval_set:
        return "not recorded"
    parts = [f"{key} {short_digest(value) if 'sha' in key or 'digest' in key else value}"
             for key, value in eval_set.items() if value is not None]
    return ", ".join(parts) or "not recorded"


def details(row: dict[str, Any], shown: set[str] = SHOWN) -> dict[str, Any]:
    """Whatever else the registry recorded with the decision (a re-scored champion, the images
    both were compared on, the rule...): every non-empty column the page does not lay out itself."""
    return {key: value for key, value in row.items() if key not in shown and value not in (None, "", {}, [])}


def test_accuracies(store, run_id: str, epoch: int) -> dict[str, float]:
    """attribute -> test accuracy of one run's model (epoch), from the run store."""
    run = store.run(run_id)
    return {m["attribute"]: m["accuracy"] for m in run["attribute_metrics"]
            if m["split"] == "test" and m["epoch"] == epoch and m["accuracy"] is not None}


def attribute_difference(store, champion: dict[str, Any], other: dict[str, Any]) -> list[dict[str, Any]]:
    """Per attribute: the champion's test accuracy, the other model's, and other minus champion;
    the largest differences first."""
    mine = test_accuracies(store, champion["run_id"], champion["epoch"])
    theirs = test_accuracies(store, other["run_id"], other["epoch"])
    rows = [{"attribute": name, "champion": mine.get(name), "other": theirs.get(name),
             "difference": None if name not in mine or name not in theirs else theirs[name] - mine[name]}
            for name in ATTRIBUTES if name in mine or name in theirs]
    return sorted(rows, key=lambda row: -abs(row["difference"] or 0.0))


def models_view(store, versus: str | None = None) -> dict[str, Any]:
    """The Models page: rows (champion first), events (newest first), the trend of test accuracy
    over the runs' start times, and the per-attribute difference between the champion and
    `versus` (a run id; default the newest other model)."""
    published = queries.published_models(store)
    champion = next((m for m in published if m["state"] == "champion"), None)
    rows = []
    for model in published:
        difference = None
        if champion is not None and model is not champion:
            difference = set_difference(model.get("eval_set"), champion.get("eval_set"))
        rows.append({**{key: model.get(key) for key in SHOWN if key in model},
                     "champion": model["state"] == "champion", "eval_set_text": eval_set_text(model.get("eval_set")),
                     "comparable_with_champion": difference is None, "difference": difference,
                     "details": details(model)})
    others = [row for row in rows if not row["champion"]]
    chosen = next((row for row in others if row["run_id"] == versus), others[0] if others else None)
    # A run's time on the trend: when it started (when it was published, for a run recorded without a start).
    trend = sorted((row for row in rows if row["test_mean_accuracy"] is not None and row.get("state_at")),
                   key=lambda row: row.get("started_at") or row["state_at"])
    return {
        "champion": next((row for row in rows if row["champion"]), None), "rows": rows,
        "events": [{**event, "details": details(event, EVENT_SHOWN)}
                   for event in queries.model_events(store)],
        "trend": [{"run_id": row["run_id"], "started_at": row.get("started_at") or row["state_at"], "test_mean_accuracy":
                   row["test_mean_accuracy"], "champion": row["champion"], "state": row["state"]} for row in trend],
        "versus": chosen,
        "attributes": attribute_difference(store, champion, chosen) if champion and chosen else [],
    }
