"""HTML of the Models page (the registry) and the Scoring jobs pages, from faceattr.ui.models' and
faceattr.ui.jobs' dicts, with faceattr.ui.pages' helpers and style.

Promote and Rollback are buttons whose click the pages' script turns into a POST with the
X-Faceattr-Action header (faceattr.ui.app refuses a registry change without it, and for a user
Airflow does not let edit faceattr_train); the answer is shown on the page.
"""
from __future__ import annotations

import json
from typing import Any

from faceattr.ui.charts import PALETTE, Series, line_chart
from faceattr.ui.pages import PREFIX, badge, esc, iso, job_url, num, page, run_cell, signed, span, state_mark, table, \
    td, when

MODELS_URL = f"{PREFIX}/models"


def details_list(found: dict[str, Any]) -> str:
    """Extra recorded fields (a re-scored champion, shared image count, the rule...) as name: value."""
    if not found:
        return ""
    items = []
    for key, value in found.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in value.items()
                              if v is not None)
        elif isinstance(value, float):
            value = f"{value:.4f}"
        items.append(f"<dt>{esc(key.replace('_', ' '))}</dt><dd>{esc(value)}</dd>")
    return f'<dl class="details">{"".join(items)}</dl>'


def action_button(what: str, url: str, body: dict[str, Any] | None = None, button_id: str = "") -> str:
    attrs = f' id="{esc(button_id)}"' if button_id else ""
    return (f'<button{attrs} type="button" data-what="{esc(what)}" data-url="{esc(url)}" '
            f'data-body="{esc(json.dumps(body or {}))}" onclick="act(this)">{esc(what[:1].upper() + what[1:])}</button>')


def trend_chart(trend: list[dict[str, Any]]) -> str:
    """Each published run's test accuracy in the order the runs started; the champion ringed."""
    points = [(float(i + 1), row["test_mean_accuracy"]) for i, row in enumerate(trend)]
    names = {float(i + 1): f"{row['run_id']} ({row['state']}, started {when(row['started_at'])})"
             for i, row in enumerate(trend)}
    ticks = {float(i + 1): row["started_at"].strftime("%m-%d %H:%M") for i, row in enumerate(trend)}
    champion = {float(i + 1) for i, row in enumerate(trend) if row["champion"]}
    return line_chart([Series("test mean accuracy", points, PALETTE[0], highlight=champion, point_labels=names)],
                      title="Test accuracy of each published run, by start (ring: champion)", x_label="run started",
                      y_label="test mean accuracy", width=620, chart_id="chart-trend", x_tick_labels=ticks)


def models_page(view: dict[str, Any]) -> str:
    champion = view["champion"]
    head = ("<h1>Models</h1><p class=muted>Every published run's model: the champion (what scoring with "
            "<code>champion</code> uses), the challengers that did not beat it or were not comparable, and the "
            "retired ones. Promote and Rollback record your Airflow user name; they need permission to edit "
            "faceattr_train.</p>")
    if champion:
        head += (f'<p id="champion">Champion: {run_cell(champion["run_id"], champion.get("name"))} epoch '
                 f'{champion["epoch"]}, test mean accuracy <b>{num(champion["test_mean_accuracy"])}</b> — '
                 f'{esc(champion["reason"])} {action_button("roll back", f"{MODELS_URL}/rollback", None, "rollback")}</p>')
    else:
        head += '<p id="champion">No champion yet: no run has been published.</p>'
    lines = []
    for row in view["rows"]:
        compare = "" if row["champion"] else (
            f'<a href="{MODELS_URL}?versus={esc(row["run_id"])}#attributes">per attribute</a> · ')
        action = "" if row["champion"] else action_button(
            "promote", f"{MODELS_URL}/promote", {"run_id": row["run_id"], "epoch": row["epoch"]})
        note = "" if row["comparable_with_champion"] else \
            f'<span class="sub">not comparable with the champion: {esc(row["difference"])}</span>'
        lines.append(
            "<tr>" + td(run_cell(row["run_id"], row.get("name")), sort=row["run_id"], raw=True)
            + td(row["epoch"], numeric=True) + td(state_mark(row["state"]), sort=row["state"], raw=True)
            + td(num(row["test_mean_accuracy"]), numeric=True) + td(num(row["val_mean_accuracy"]), numeric=True)
            + td(f'{esc(row["eval_set_text"])}{note}', sort=row["eval_set_text"], raw=True)
            + td(f'{esc(row["reason"])}{details_list(row["details"])}', sort=row["reason"], raw=True)
            + td(f'{esc(row["actor"])}<span class="sub">{when(row["state_at"])}</span>', sort=iso(row["state_at"]),
                 raw=True)
            + td(f"{compare}{action}", raw=True) + "</tr>")
    headers = [("Run", ""), ("Epoch", "num"), ("State", ""), ("Test acc", "num"), ("Val acc", "num"),
               ("Evaluation set", ""), ("Decision and reason", ""), ("By, when", ""), ("", "")]
    body = [head, table(headers, lines, "models") if lines else "<p>No published models yet.</p>"]
    if view["trend"]:
        body.append("<h2>Trend</h2>" + trend_chart(view["trend"]))
    body.append(attribute_part(view))
    events = ["<tr>" + td(when(e["at"]), sort=iso(e["at"])) + td(e["actor"])
              + td(run_cell(e["run_id"], None), sort=e["run_id"], raw=True) + td(e["epoch"], numeric=True)
              + td(state_mark(e["state"]), sort=e["state"], raw=True)
              + td(f'{esc(e["reason"])}{details_list(e["details"])}', sort=e["reason"], raw=True)
              + td("" if e["previous_run_id"] is None else f'{e["previous_run_id"]} epoch {e["previous_epoch"]}')
              + "</tr>" for e in view["events"]]
    body.append("<h2>History</h2>" + (table([("When", ""), ("Who", ""), ("Run", ""), ("Epoch", "num"), ("State", ""),
                                               ("What and why", ""), ("Champion before", "")], events, "events")
                                         if events else "<p class=muted>Nothing recorded yet.</p>"))
    return page("faceattr models", "".join(body), "models")


def attribute_part(view: dict[str, Any]) -> str:
    head = '<h2 id="attributes">Champion vs challenger, per attribute</h2>'
    other = view["versus"]
    if not view["attributes"] or other is None:
        return head + "<p class=muted>Needs a champion and another published model with test figures.</p>"
    lines = ["<tr>" + td(r["attribute"]) + td(num(r["champion"]), numeric=True) + td(num(r["other"]), numeric=True)
             + td(signed(r["difference"]), sort=r["difference"], numeric=True, raw=True) + "</tr>"
             for r in view["attributes"]]
    champion = view["champion"]
    caution = "" if other["comparable_with_champion"] else \
        f'<p class="note">Measured on different evaluation sets ({esc(other["difference"])}): compare with care.</p>'
    return (head + f'<p>{esc(other["run_id"])} (epoch {other["epoch"]}, {esc(other["state"])}) minus the champion '
            f'{esc(champion["run_id"])}, in points of test accuracy; pick another with “per attribute” above.</p>'
            + caution + table([("Attribute", ""), ("Champion", "num"), (esc(other["run_id"][:24]), "num"),
                               ("Difference (points)", "num")], lines, "model-attributes"))


# -- Scoring jobs ---------------------------------------------------------------------------------
def digest(value: str | None) -> str:
    return "–" if not value else f'<span title="{esc(value)}">{esc(value[:12])}…</span>'


def job_links(job: dict[str, Any]) -> str:
    return " ".join(f'<a href="{job_url(job["id"])}/files/{name}" download>{name}</a>' if present
                    else f'<span class="muted" title="not readable here">{name}</span>'
                    for name, present in job["files"].items())


def jobs_page(rows: list[dict[str, Any]]) -> str:
    lines = ["<tr>" + td(f'<a href="{job_url(j["id"])}">{esc(j["id"])}</a>', sort=j["id"], raw=True)
             + td(badge(j["status"]), sort=j["status"], raw=True)
             + td(f'{esc(j.get("model_run_id") or "–")}<span class="sub">epoch {esc(j.get("model_epoch"))}</span>',
                  sort=j.get("model_run_id") or "", raw=True)
             + td(digest(j["model_sha256"]), sort=j["model_sha256"] or "", raw=True)
             + td(when(j.get("started_at")), sort=iso(j.get("started_at")))
             + td(j.get("images"), numeric=True) + td(j.get("rows"), numeric=True) + td(j.get("errors"), numeric=True)
             + td(span(j["seconds"]), sort=j["seconds"], numeric=True) + td(job_links(j), raw=True) + "</tr>"
             for j in rows]
    headers = [("Job", ""), ("State", ""), ("Model (run, epoch)", ""), ("Model sha256", ""), ("Started", ""),
               ("Images", "num"), ("Rows", "num"), ("Errors", "num"), ("Duration", "num"), ("Downloads", "")]
    body = ("<h1>Scoring jobs</h1><p class=muted>Every scoring run (faceattr_score, and each training run's private "
            "images), newest first. Open a job for its prediction summary.</p>"
            + (table(headers, lines, "jobs") if lines else "<p>No scoring jobs yet.</p>"))
    return page("faceattr scoring jobs", body, "jobs")


def job_page(job: dict[str, Any], drift: dict[str, Any]) -> str:
    facts = (f'<p>{badge(job["status"])} model <b>{esc(job.get("model_run_id"))}</b> epoch {esc(job.get("model_epoch"))} '
             f'(sha256 {digest(job["model_sha256"])}) · {esc(job.get("images"))} images, {esc(job.get("rows"))} rows, '
             f'{esc(job.get("errors"))} errors · started {when(job.get("started_at"))}, took {span(job["seconds"])}</p>'
             f'<p class=muted>images {esc(job.get("input_path") or "–")} → {esc(job.get("output_csv") or "–")}</p>'
             f'<p class="downloads">Downloads: {job_links(job)}</p>')
    if job.get("message"):
        facts += f'<p class="note">{esc(job["message"])}</p>'
    lines = ["<tr" + (' class="flagged"' if r["flagged"] else "") + ">" + td(r["attribute"])
             + td(num(r["scored"], 3), numeric=True) + td(num(r["training"], 3), numeric=True)
             + td(signed(r["moved"]), sort=r["moved"], numeric=True, raw=True)
             + td("⚑ moved most" if r["flagged"] else "") + "</tr>" for r in drift["rows"]]
    summary = ("<h2>Prediction summary</h2><p class=muted>Share of the scored images each attribute was predicted "
               "present in, beside its share among the model's training images; most moved first. Flagged: among the "
               "5 largest moves and at least 5 points — the scored images, or the model on them, differ from what it "
               "learned from.</p>")
    flagged = [r for r in drift["rows"] if r["flagged"]]
    if flagged:
        summary += '<p id="drift-flagged" class="note">Moved most: ' + ", ".join(
            f'{esc(r["attribute"])} {100 * r["scored"]:.0f}% vs {100 * r["training"]:.0f}%' for r in flagged) + "</p>"
    elif drift["rows"] and not drift["problem"]:
        summary += '<p id="drift-flagged">No attribute moved by 5 points or more.</p>'
    if drift["problem"]:
        summary += f'<p class="note">{esc(drift["problem"])}</p>'
    if lines:
        summary += table([("Attribute", ""), ("Scored: predicted present", "num"), ("Training split: present", "num"),
                          ("Moved (points)", "num"), ("", "")], lines, "drift")
    return page(f"faceattr scoring job {job['id']}", f"<h1>Scoring job {esc(job['id'])}</h1>" + facts + summary, "jobs")
