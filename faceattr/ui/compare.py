"""HTML of the Compare page: two or more runs side by side (faceattr.ui.pages' helpers and style)."""
from __future__ import annotations

from typing import Any

from faceattr.ui.charts import DASHES, MARKERS, PALETTE, Series, line_chart
from faceattr.ui.pages import badge, esc, num, page, run_cell, signed, table, td


def compare_page(runs: list[dict[str, Any]]) -> str:
    """Two or more runs: their curves overlaid (a colour, a line style and a marker each, so equal
    curves stay visible), the settings and data versions in which they differ, and per attribute
    the difference of each run's test accuracy from the first's."""
    labels = {r["id"]: f"{i + 1}: {r.get('name') or r['id']}" for i, r in enumerate(runs)}

    def overlay(key: str, title: str, y_label: str, chart_id: str) -> str:
        # Earlier runs drawn wider, later ones dashed on top: where curves coincide, each still shows.
        return line_chart([Series(labels[r["id"]], r["curves"].get(key, []), PALETTE[i % len(PALETTE)],
                                  dash=DASHES[i % len(DASHES)], marker=MARKERS[i % len(MARKERS)],
                                  width=2.0 + 1.5 * (len(runs) - 1 - i)) for i, r in enumerate(runs)], title=title, x_label="epoch", y_label=y_label,
                          chart_id=chart_id)

    def settings(run: dict[str, Any]) -> dict[str, Any]:
        """The run's config, and the data its model was tested on (the registry's evaluation set)."""
        model = run.get("model") or {}
        found = {key: value for key, value in run["config"].items()}
        found.update({f"data: {key}": value for key, value in (model.get("eval_set") or {}).items()})
        return found

    values = {r["id"]: settings(r) for r in runs}
    keys = sorted({k for found in values.values() for k in found})
    differ = [k for k in keys if len({repr(values[r["id"]].get(k)) for r in runs}) > 1]
    rows = ["<tr>" + td(labels[r["id"]]) + td(run_cell(r["id"], None), raw=True)
            + td(badge(r["status"]), sort=r["status"], raw=True) + td(num(r["val_mean_accuracy"]), numeric=True)
            + td(num(r["test_mean_accuracy"]), numeric=True)
            + "".join(td(_short(values[r["id"]].get(k))) for k in differ) + "</tr>" for r in runs]
    headers = [("#", ""), ("Run", ""), ("State", ""), ("Best val acc", "num"), ("Test acc", "num")]
    headers += [(esc(k), "") for k in differ]
    same = "" if differ else "<p class=muted>Same settings and data.</p>"
    body = (f'<h1>Compare {len(runs)} runs</h1><p class=muted>Each run keeps its colour, line style and marker '
            "in every chart.</p>"
            f'<div class="charts">{overlay("val_mean_accuracy", "Validation mean accuracy", "accuracy", "chart-val")}'
            f'{overlay("train_loss", "Train loss", "loss", "chart-loss")}'
            f'{overlay("val_loss", "Validation loss", "loss", "chart-val-loss")}</div>'
            "<h2>Runs, and the settings and data that differ</h2>" + table(headers, rows, "compare") + same
            + attribute_difference_part(runs, labels))
    return page("faceattr: compare runs", body, "runs")


def _short(value: Any) -> str:
    text = "–" if value is None else str(value)
    return text if len(text) <= 24 else text[:12] + "…" + text[-6:]


def attribute_difference_part(runs: list[dict[str, Any]], labels: dict[str, str]) -> str:
    """Per attribute: the first run's test accuracy, then each other run's and its difference from the first."""
    accuracy = {r["id"]: {a["attribute"]: a["accuracy"] for a in r.get("attributes") or []} for r in runs}
    first, others = runs[0], runs[1:]
    names = [a for a in accuracy[first["id"]] if any(a in accuracy[r["id"]] for r in others)]
    head = "<h2>Test accuracy per attribute</h2>"
    if not names:
        return head + "<p class=muted>Needs test figures of the first run and another one.</p>"
    lines = []
    for name in names:
        base = accuracy[first["id"]][name]
        cells = td(name) + td(num(base), numeric=True)
        for r in others:
            theirs = accuracy[r["id"]].get(name)
            versus = None if theirs is None else theirs - base
            cells += td(num(theirs), numeric=True) + td(signed(versus), sort=versus, numeric=True, raw=True)
        lines.append(f"<tr>{cells}</tr>")
    headers = [("Attribute", ""), (esc(labels[first["id"]]), "num")]
    for r in others:
        headers += [(esc(labels[r["id"]]), "num"), (f"{esc(labels[r['id']].split(':')[0])} − 1 (points)", "num")]
    return head + "<p class=muted>Click a column to sort: the largest differences first.</p>" + table(
        headers, lines, "compare-attributes")
