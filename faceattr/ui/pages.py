"""HTML of the Runs and Run pages, and what every faceattr page shares (style, script, tables).

compare.py draws the Compare page, model_pages.py the Models and Scoring jobs pages.

Plain server-side HTML with inline SVG charts and a few lines of JavaScript (sorting, filtering,
picking runs to compare, promote/rollback requests, and refreshing a running run's figures), so nothing is loaded from
outside the API server. Every value from the store or a run folder is escaped.
"""
from __future__ import annotations

import datetime as dt
import html
from typing import Any, Iterable
from urllib.parse import quote

from faceattr.run.timing import duration
from faceattr.ui.charts import PALETTE, Series, line_chart

PREFIX = "/faceattr"
STYLE = """
body{font:13px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2933;margin:0;padding:16px 20px;background:#fff}
h1{font-size:20px;margin:0 0 4px} h2{font-size:15px;margin:22px 0 8px;border-bottom:1px solid #e4e7eb;padding-bottom:4px}
a{color:#0b66c3;text-decoration:none} a:hover{text-decoration:underline}
table{border-collapse:collapse;font-variant-numeric:tabular-nums} th,td{padding:4px 9px;text-align:left;border-bottom:1px solid #eef0f2}
th{background:#f5f7fa;font-weight:600;white-space:nowrap} th[data-sort]{cursor:pointer} th[data-sort]:after{content:" \\2195";color:#9aa5b1}
td.num,th.num{text-align:right} tr.winner td{background:#e8f5e9;font-weight:600}
.muted{color:#616e7c} .badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600}
.success{background:#e3f9e5;color:#1f7a2e} .running{background:#e6f0ff;color:#0b4fa3} .failed{background:#ffe3e3;color:#a61b1b}
.queued,.none{background:#f0f0f0;color:#52606d} .current{color:#b7791f;font-weight:700}
.charts{display:flex;flex-wrap:wrap;gap:8px} .chart{border:1px solid #e4e7eb;border-radius:6px;background:#fff}
.chart .grid{stroke:#eef0f2} .chart .axis{stroke:#9aa5b1} .chart text{font:11px system-ui,sans-serif;fill:#52606d}
.chart .chart-title{font-weight:600;font-size:12px;fill:#1f2933} .chart .legend{fill:#1f2933}
.bar{position:relative;display:inline-block;width:100px;height:10px;background:#eef0f2;border-radius:2px;vertical-align:middle}
.bar>span{position:absolute;left:0;top:0;height:10px;background:#0072B2;border-radius:2px}
.bar>i{position:absolute;top:-3px;width:2px;height:16px;background:#1f2933}
.progress{height:14px;background:#eef0f2;border-radius:7px;width:360px;overflow:hidden;display:inline-block;vertical-align:middle}
.progress>span{display:block;height:100%;background:#0072B2}
.kpis{display:flex;gap:10px;flex-wrap:wrap;margin:10px 0} .kpi{border:1px solid #e4e7eb;border-radius:6px;padding:6px 12px;min-width:120px}
.kpi b{display:block;font-size:18px} .kpi span{color:#616e7c;font-size:12px}
.downloads a{margin-right:14px} .downloads span.off{margin-right:14px;color:#9aa5b1}
.pos{color:#1f7a2e} .neg{color:#a61b1b} .note{background:#fffbea;border:1px solid #f7e3a1;padding:6px 10px;border-radius:4px}
input[type=search]{padding:4px 8px;width:260px} button{padding:4px 12px}
.scroll{overflow-x:auto;max-width:100%} a.name{white-space:nowrap} .sub{display:block;font-size:11px;color:#7b8794;word-break:break-all;max-width:260px}
nav.top{margin:0 0 10px;font-size:13px} nav.top a{margin-right:14px} nav.top b{margin-right:14px}
.msg{padding:6px 10px;border-radius:4px;margin:8px 0} .msg:empty{display:none}
.msg.ok{background:#e3f9e5;color:#1f7a2e} .msg.bad{background:#ffe3e3;color:#a61b1b} .msg.info{background:#e6f0ff;color:#0b4fa3}
.champion{color:#b7791f;font-weight:700} .challenger{color:#0b4fa3} .retired{color:#7b8794}
tr.flagged td{background:#fff4e5} dl.details{margin:0;font-size:12px} dl.details dt{display:inline;color:#616e7c}
dl.details dd{display:inline;margin:0 10px 0 2px}
"""
SCRIPT = """
function sortTable(th){const table=th.closest('table'),body=table.tBodies[0],i=[...th.parentNode.children].indexOf(th);
 const dir=th.dataset.dir==='asc'?'desc':'asc';th.dataset.dir=dir;const numeric=th.classList.contains('num');
 const key=r=>{const c=r.children[i];const v=(c.dataset.value??c.textContent).trim();
  if(numeric){const n=parseFloat(v);return isNaN(n)?null:n}return v===''||v==='\u2013'?null:v.toLowerCase()};
 [...body.rows].sort((a,b)=>{const x=key(a),y=key(b);if(x===null||y===null)return x===y?0:(x===null?1:-1);
  return (x>y?1:x<y?-1:0)*(dir==='asc'?1:-1)}).forEach(r=>body.appendChild(r))}
document.addEventListener('click',e=>{const th=e.target.closest('th[data-sort]');if(th)sortTable(th)});
function say(text,kind){const box=document.getElementById('notice');if(!box)return;box.textContent=text;box.className='msg '+(kind||'info')}
function filterRows(input){const q=input.value.toLowerCase();for(const r of document.querySelectorAll(input.dataset.rows))
 r.style.display=r.textContent.toLowerCase().includes(q)?'':'none'}
function compare(){const ids=[...document.querySelectorAll('input.pick:checked')].map(c=>'run='+encodeURIComponent(c.value));
 if(ids.length<2){say('Tick two or more runs, then press Compare.','bad');return}location.href='PREFIX/compare?'+ids.join('&')}
function act(button){if(button.dataset.armed!=='1'){button.dataset.armed='1';button.dataset.label=button.textContent;
  button.textContent='Confirm: '+button.dataset.what;say('Press again to '+button.dataset.what+'.','info');return}
 button.disabled=true;fetch(button.dataset.url,{method:'POST',credentials:'same-origin',body:button.dataset.body||'{}',
  headers:{'Content-Type':'application/json','X-Faceattr-Action':'1'}})
 .then(r=>r.json().catch(()=>({})).then(j=>({ok:r.ok,status:r.status,j})))
 .then(({ok,status,j})=>{if(ok){say(j.message||'done','ok');setTimeout(()=>location.reload(),1500);return}
  say((status===403?'Not allowed ('+status+'): ':'Refused ('+status+'): ')+(j.detail||''),'bad');
  button.disabled=false;button.dataset.armed='';button.textContent=button.dataset.label})
 .catch(e=>{say('Request failed: '+e,'bad');button.disabled=false})}
function live(){const box=document.getElementById('live');if(!box||box.dataset.status!=='running')return;
 setTimeout(()=>fetch(box.dataset.url,{credentials:'same-origin'}).then(r=>r.json()).then(j=>{
  if(j.status!=='running'){location.reload();return}box.innerHTML=j.html;live()}).catch(()=>live()),5000)}
live();
""".replace("PREFIX", PREFIX)


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def num(value: float | None, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def signed(value: float | None) -> str:
    if value is None:
        return "–"
    return f'<span class="{"pos" if value > 0 else "neg" if value < 0 else "muted"}">{100 * value:+.2f}</span>'


def when(value: dt.datetime | None) -> str:
    # Non-breaking hyphens and spaces: a date never wraps inside a table cell.
    return "–" if value is None else value.astimezone(dt.timezone.utc).strftime("%Y\u2011%m\u2011%d\u00a0%H:%M\u00a0UTC")


def span(seconds: float | None) -> str:

    return "–" if seconds is None else duration(seconds)


def badge(status: str | None) -> str:
    return f'<span class="badge {esc(status or "none")}">{esc(status or "not started")}</span>'


def run_url(run_id: str) -> str:
    return f"{PREFIX}/runs/{quote(run_id, safe='')}"


NAV = (("runs", "Runs", "/"), ("models", "Models", "/models"), ("jobs", "Scoring jobs", "/jobs"))


def nav(here: str = "") -> str:
    """The links between the faceattr pages; `here` is shown, not linked."""
    return '<nav class="top">' + "".join(f"<b>{label}</b>" if key == here else f'<a href="{PREFIX}{path}">{label}</a>'
                                         for key, label, path in NAV) + "</nav>"


def page(title: str, body: str, here: str = "") -> str:
    """A whole page: the nav, an (empty) line for messages, then `body`."""
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f'<style>{STYLE}</style></head><body>{nav(here)}<p id="notice" class="msg" role="status"></p>{body}'
            f"<script>{SCRIPT}</script></body></html>")


def table(headers: Iterable[tuple[str, str]], rows: Iterable[str], table_id: str = "") -> str:
    """headers: (label, "num" or ""); rows: rendered <tr>s. Every column sorts on a click."""
    head = "".join(f'<th{" data-sort" if label else ""} class="{kind}">{label}</th>' for label, kind in headers)
    attrs = f' id="{table_id}"' if table_id else ""
    return f'<div class="scroll"><table{attrs}><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'


def td(value: Any, *, sort: Any = None, numeric: bool = False, raw: bool = False) -> str:
    data = f' data-value="{esc(sort)}"' if sort is not None else ""
    return f'<td{data}{" class=num" if numeric else ""}>{value if raw else esc(value)}</td>'


def iso(value: dt.datetime | None) -> str:
    """A time as the sort key of its cell: ISO 8601 in UTC sorts as text."""
    return "" if value is None else value.astimezone(dt.timezone.utc).isoformat()


def state_mark(state: str | None) -> str:
    """A model's registry state as a short word: ★ champion, challenger, retired, or – (not published)."""
    if not state:
        return '<span class="muted">–</span>'
    return f'<span class="{esc(state)}">{"★ " if state == "champion" else ""}{esc(state)}</span>'


def run_cell(run_id: str, name: str | None) -> str:
    """A run's link by its name, with its id (the run folder's name) below."""
    return (f'<a class="name" href="{run_url(run_id)}" title="{esc(run_id)}">{esc(name or run_id)}</a>'
            + (f'<span class="sub">{esc(run_id)}</span>' if name and name != run_id else ""))


# -- Runs -----------------------------------------------------------------------------------------
def runs_page(rows: list[dict[str, Any]]) -> str:
    body = [f"<h1>faceattr runs</h1><p class=muted>{len(rows)} run(s) in the run store, newest first. Click a "
            "column to sort; tick two or more runs and press Compare to overlay their curves. Baselines: always "
            "predicting each attribute's most common training value.</p>",
            '<p><input type="search" placeholder="filter: arch, status, run id, note…" data-rows="#runs tbody tr" '
            'oninput="filterRows(this)"> <button onclick="compare()">Compare</button></p>']
    lines = []
    for r in rows:
        done = f"{r['epochs_done']}/{r['epochs_planned'] or '?'}"
        state = r.get("registry_state") or ("champion" if r["current"] else None)
        lines.append(
            "<tr>" + td(f'<input type="checkbox" class="pick" value="{esc(r["id"])}" aria-label="pick {esc(r["id"])}">',
                        raw=True)
            + td(run_cell(r["id"], r.get("name")), sort=r.get("name") or r["id"], raw=True)
            + td(badge(r["status"]), sort=r["status"], raw=True)
            + td(when(r["started_at"]), sort=iso(r["started_at"]))
            + td(span(r["seconds"]), sort=r["seconds"], numeric=True)
            + td(" · ".join(str(r[key]) for key in ("arch", "weights", "split") if r.get(key)))
            + td(done, sort=r["epochs_done"], numeric=True) + td(r["best_epoch"] or "–", numeric=True)
            + td(num(r["val_mean_accuracy"]), numeric=True) + td(num(r["majority_baseline"]), numeric=True)
            + td(num(r["test_mean_accuracy"]), numeric=True) + td(num(r["test_majority_baseline"]), numeric=True)
            + td(state_mark(state), sort=state or "", raw=True) + "</tr>")
    headers = [("", ""), ("Run", ""), ("State", ""), ("Started", ""), ("Duration", "num"),
               ("Arch · weights · split", ""), ("Epochs", "num"), ("Best epoch", "num"), ("Val acc", "num"),
               ("Val baseline", "num"), ("Test acc", "num"), ("Test baseline", "num"), ("Model", "")]
    body.append(table(headers, lines, "runs") if rows else "<p>No runs yet: trigger faceattr_train.</p>")
    return page("faceattr runs", "".join(body), "runs")


# -- Run ------------------------------------------------------------------------------------------
def run_charts(view: dict[str, Any]) -> str:
    c, best = view["curves"], view["selection"]["winner"]
    highlight = {best} if best is not None else set()
    accuracy = line_chart([
        Series("train accuracy", c["train_accuracy"], PALETTE[1], marker="square"),
        Series("val mean accuracy", c["val_mean_accuracy"], PALETTE[0], highlight=highlight),
        Series("majority baseline", c["val_majority_baseline"], "#7b8794", dashed=True, markers=False),
    ], title="Accuracy per epoch (ring: selected epoch)", x_label="epoch", y_label="accuracy", chart_id="chart-accuracy")
    loss = line_chart([Series("train loss", c["train_loss"], PALETTE[5], marker="square"),
                       Series("val loss", c.get("val_loss", []), PALETTE[0], dash="7 4")],
                      title="Loss per epoch: train, and on the validation split", x_label="epoch", y_label="loss",
                      chart_id="chart-loss")
    within = line_chart([Series("train loss (batches since the last point)", c.get("batch_loss", []), PALETTE[5],
                                markers=False)],
                        title="Training loss within each epoch", x_label="epoch", y_label="loss", integer_x=False,
                        chart_id="chart-batch-loss")
    lr = line_chart([Series("learning rate", c.get("lr", []), PALETTE[3])], title="Learning rate per epoch",
                    x_label="epoch", y_label="lr", chart_id="chart-lr")
    fastest = max((y for _, y in c["images_per_second"]), default=1.0)
    speed = line_chart([Series("images/s (train)", c["images_per_second"], PALETTE[2])],
                       title="Training speed per epoch", x_label="epoch", y_label="images / s",
                       y_range=(0.0, fastest * 1.1), chart_id="chart-speed")
    return f'<div class="charts">{accuracy}{loss}{within}{lr}{speed}</div>'


def live_part(view: dict[str, Any]) -> str:
    """The part of the Run page that a running run refreshes every few seconds."""
    p, s = view["progress"], view["selection"]
    fraction = p["fraction"] or 0.0
    running = ", ".join(f"{esc(t['task_id'])} (for {esc(t['for'])})" for t in p["running"]) or "none"
    eta = (f"ETA {esc(p['eta'])}, test, report and publish included (mean epoch {esc(p['mean_epoch'])}; early "
           "stopping may end it sooner)" if p["eta"] else
           ("ETA known once an epoch is trained and validated" if view["run"]["status"] == "running" else ""))
    now_running = ""
    if p.get("current"):
        cur = p["current"]
        share = "" if cur["fraction"] is None else (
            f'<span class="progress" style="width:160px"><span style="width:{100 * cur["fraction"]:.0f}%"></span></span>'
            f' about {100 * cur["fraction"]:.0f}% by the mean {esc(cur["stage"])} pass · ')
        now_running = (f'<br><span id="epoch-progress">Epoch {cur["epoch"]} {esc(cur["stage"])}: {share}'
                       f'{esc(cur["elapsed"])} so far</span>')
    parts = [
        f'<h2>Progress</h2><p><span class="progress"><span style="width:{100 * fraction:.1f}%"></span></span> '
        f'<b id="progress-text">{p["validated"]} of {p["planned"] or "?"} epochs validated</b> · running: {running}'
        f'{now_running}<br><span class=muted id="eta">{eta}</span></p>',
        "<h2>Curves</h2>", run_charts(view),
        f'<h2>Selection</h2><p>Rule: {esc(s["rule"])}. '
        + (f'Chosen: <b>epoch {s["winner"]}</b>.' if s["chosen"] else
           (f"Best so far: epoch {s['winner']} (not chosen yet)." if s["winner"] else "No epoch validated yet.")) + "</p>",
    ]
    rows = []
    for r in s["rows"]:
        extra = td(num(r["ranked_by"]), numeric=True) if s["measure"] != "mean_accuracy" else ""
        rows.append(f'<tr class="{"winner" if r["epoch"] == s["winner"] else ""}">' + td(r["epoch"], numeric=True)
                    + td(num(r["val_mean_accuracy"]), numeric=True) + extra
                    + td(num(r["majority_baseline"]), numeric=True)
                    + td("← winner" if r["epoch"] == s["winner"] else "") + "</tr>")
    headers = [("Epoch", "num"), ("Val mean accuracy", "num")]
    if s["measure"] != "mean_accuracy":
        headers.append((f"Val {esc(s['measure'])} (ranks)", "num"))
    headers += [("Majority baseline", "num"), ("", "")]
    parts.append(table(headers, rows, "selection"))
    return "".join(parts)


def attribute_part(view: dict[str, Any]) -> str:
    rows, current = view["attributes"], view["current"]
    if not rows:
        return "<h2>Test accuracy per attribute</h2><p class=muted>Not tested yet.</p>"
    against = ""
    if current and current["is_this_run"]:
        against = "<p class=muted>This run's model is the current one.</p>"
    elif current:
        against = f'<p class=muted>Current model: <a href="{run_url(current["run_id"])}">{esc(current["run_id"])}</a>, ' \
                  f'epoch {current["epoch"]}.</p>'
        if current["difference"]:
            against += f'<p class="note">Not comparable with the current model\'s test figures: ' \
                       f'{esc(current["difference"])}.</p>'
    lines = []
    for r in rows:
        gain = r["accuracy"] - r["majority_baseline"]
        versus = None if r["current"] is None else r["accuracy"] - r["current"]
        lines.append("<tr>" + td(r["attribute"])
                     + td(f'{num(r["accuracy"])} <span class="bar" title="bar: accuracy; mark: majority baseline">'
                          f'<span style="width:{100 * r["accuracy"]:.0f}px"></span>'
                          f'<i style="left:{100 * r["majority_baseline"]:.0f}px"></i></span>', sort=r["accuracy"], raw=True)
                     + td(num(r["majority_baseline"]), numeric=True) + td(signed(gain), sort=gain, numeric=True, raw=True)
                     + td(num(r["balanced_accuracy"]), numeric=True)
                     + td(num(r["current"]), numeric=True) + td(signed(versus), sort=versus, numeric=True, raw=True)
                     + "</tr>")
    headers = [("Attribute", ""), ("Test accuracy", ""), ("Majority baseline", "num"), ("vs baseline (points)", "num"),
               ("Balanced accuracy", "num"), ("Current model", "num"), ("vs current (points)", "num")]
    return "<h2>Test accuracy per attribute</h2>" + against + table(headers, lines, "attributes")


def subgroup_part(view: dict[str, Any]) -> str:
    rows = view["subgroups"]
    head = "<h2>Accuracy per subgroup (test split)</h2>"
    if rows is None:
        return head + "<p class=muted>Needs the test split's scores (RUN/metrics/test_epoch_K.npz) in a run folder " \
                      "this server can read.</p>"
    lines = ["<tr>" + td(r["group"]) + td(f"{r['attribute']} = {'-1' if r['group'] in ('women', 'not young') else '1'}")
             + td(r["images"], numeric=True) + td(num(r["mean_accuracy"]), numeric=True)
             + td(signed(None if r["mean_accuracy"] is None else r["mean_accuracy"] - r["all_images"]), raw=True,
                  numeric=True) + "</tr>" for r in rows]
    return (head + "<p class=muted>Mean accuracy over the other 39 attributes of the test images in each group "
            "(the grouping attribute itself is left out), and its difference from all test images.</p>"
            + table([("Group", ""), ("Defined by", ""), ("Images", "num"), ("Mean accuracy", "num"),
                     ("vs all images (points)", "num")], lines, "subgroups"))


def job_url(job_id: str) -> str:
    return f"{PREFIX}/jobs/{quote(job_id, safe='')}"


def jobs_part(view: dict[str, Any]) -> str:
    jobs = view["scoring_jobs"]
    if not jobs:
        return "<h2>Scoring jobs with this model</h2><p class=muted>None yet.</p>"
    lines = ["<tr>" + td(f'<a href="{job_url(j["id"])}">{esc(j["id"])}</a>', sort=j["id"], raw=True)
             + td(badge(j["status"]), sort=j["status"], raw=True) + td(when(j.get("started_at")), sort=iso(j.get("started_at")))
             + td(j.get("images"), numeric=True) + td(j.get("rows"), numeric=True) + td(j.get("errors"), numeric=True)
             + td(j.get("output_csv")) + "</tr>" for j in jobs]
    return (f'<h2>Scoring jobs with this model</h2><p class=muted>Downloads and the prediction summary are on each '
            f'job\'s page (<a href="{PREFIX}/jobs">all scoring jobs</a>).</p>' + table(
                [("Job", ""), ("State", ""), ("Started", ""), ("Images", "num"), ("Rows", "num"), ("Errors", "num"),
                 ("Output CSV", "")], lines, "jobs"))


def registry_part(view: dict[str, Any]) -> str:
    """The run's model in the registry: its state and why, and its history."""
    registry = view.get("registry")
    head = "<h2>Registry</h2>"
    if not registry or not registry["state"]:
        return head + f'<p id="registry-state" class=muted>Not published. <a href="{PREFIX}/models">Models</a></p>'
    line = (f'<p id="registry-state">Epoch {registry["epoch"]}: {state_mark(registry["state"])} — '
            f'{esc(registry["reason"])} <span class=muted>({esc(registry["actor"])}, {when(registry["at"])})</span> · '
            f'<a href="{PREFIX}/models">Models</a></p>')
    events = view.get("events") or []
    rows = ["<tr>" + td(when(e["at"]), sort=iso(e["at"])) + td(state_mark(e["state"]), sort=e["state"], raw=True)
            + td(e["reason"]) + td(e["actor"]) + "</tr>" for e in events]
    return head + line + (table([("When", ""), ("State", ""), ("Why", ""), ("Who", "")], rows, "run-events")
                          if rows else "")


def kpis(view: dict[str, Any]) -> str:
    """The headline figures: selected epoch, validation and test accuracy, baseline, the current model's."""
    run, rows, current = view["run"], view["attributes"], view["current"]
    baseline = sum(r["majority_baseline"] for r in rows) / len(rows) if rows else None
    cards = [("selected epoch", run["best_epoch"] if view["selection"]["chosen"] else "–"),
             ("val mean accuracy", num(run["val_mean_accuracy"])), ("test mean accuracy", num(run["test_mean_accuracy"])),
             ("test majority baseline", num(baseline))]
    if run["test_mean_accuracy"] is not None and baseline is not None:
        cards.append(("vs baseline (points)", signed(run["test_mean_accuracy"] - baseline)))
    if current and not current["is_this_run"] and current.get("test_mean_accuracy") is not None:
        versus = None if run["test_mean_accuracy"] is None else run["test_mean_accuracy"] - current["test_mean_accuracy"]
        cards.append(("vs current model (points)", signed(versus)))
    elif current and current["is_this_run"]:
        cards.append(("model", '<span class="current">★ current</span>'))
    return '<div class="kpis">' + "".join(f'<div class="kpi"><b>{value}</b><span>{label}</span></div>'
                                          for label, value in cards) + "</div>"


def run_page(view: dict[str, Any]) -> str:
    run, config = view["run"], view["config"]
    run_id = run["id"]
    summary = " · ".join(f"{key} <b>{esc(config.get(key))}</b>" for key in
                         ("arch", "weights", "split", "epochs", "batch_size", "lr", "loss", "optimizer", "patience")
                         if key in config)
    links = []
    for name, relative in view["downloads"].items():
        href = f"{run_url(run_id)}/files/{quote(relative)}" if relative else ""
        if not relative:
            links.append(f'<span class="off" title="not written (yet)">{esc(name)}</span>')
        elif name == "report":  # opens in this frame (a new window would be a blocked popup); or saved
            links.append(f'<a href="{href}" id="report-link">report</a>'
                         f'<a href="{href}" download="report.html">report (download)</a>')
        else:
            links.append(f'<a href="{href}" download>{esc(name)}</a>')
    note = f' · note: <b id="run-note">{esc(run["note"])}</b>' if run.get("note") else ""
    header = (f'<h1>Run {esc(run.get("name") or run_id)} {badge(run["status"])}</h1>'
              f'<p class=muted>run {esc(run_id)} · DAG run {esc(run["dag_run_id"])}{note} · started '
              f'{when(run["started_at"])} · finished {when(run["finished_at"])}</p><p>{summary}</p>'
              f'<p class="downloads">Downloads: {"".join(links)}</p>' + kpis(view))
    if view["folder"] is None:
        header += '<p class="note">The run folder is not readable on this server (not under FACEATTR_DATA_ROOTS, ' \
                  "or not pulled from FACEATTR_ARTIFACTS): figures come from the run store; downloads and subgroups " \
                  "need the folder.</p>"
    url = f"{PREFIX}/api/runs/{quote(run_id, safe='')}/live"
    live = f'<div id="live" data-status="{esc(run["status"])}" data-url="{url}">{live_part(view)}</div>'
    body = header + registry_part(view) + live + attribute_part(view) + subgroup_part(view) + jobs_part(view)
    return page(f"faceattr run {run_id}", body, "runs")


def message_page(title: str, text: str) -> str:
    return page(title, f'<h1>{esc(title)}</h1><p id="message">{esc(text)}</p>')
