"""The faceattr pages' data, downloads and charts, on a run folder and store made here (no server, no browser).

tests/integration/test_ui_plugin.py serves them from a real Airflow API server to a real browser.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from faceattr.attributes import ATTRIBUTES
from faceattr.engine.metrics import get_accuracy
from faceattr.run import metrics
from faceattr.run.layout import RunLayout
from faceattr.ui import charts, compare, data, pages
from support import published_model_file

VAL = {1: 0.80, 2: 0.86, 3: 0.86}  # the validation figures conftest's made_run writes



def test_run_view_shows_the_run_folder_figures(made_run):
    view = data.run_view(made_run["store"], "manual__ui")
    assert view["curves"]["val_mean_accuracy"] == [(1, 0.80), (2, 0.86), (3, 0.86)]
    assert [y for _, y in view["curves"]["train_loss"]] == pytest.approx([1.0, 0.5, 1 / 3])
    assert (view["selection"]["winner"], view["selection"]["chosen"]) == (2, True)
    assert "tie goes to the earlier epoch" in view["selection"]["rule"]
    tested = metrics.read_epoch_metrics(made_run["run_dir"], "test", 2)
    rows = {r["attribute"]: r for r in view["attributes"]}
    assert list(rows) == list(ATTRIBUTES)
    assert all(rows[a]["accuracy"] == pytest.approx(tested["attributes"][a]["accuracy"]) for a in ATTRIBUTES)
    assert view["current"]["is_this_run"] and all(r["current"] is None for r in view["attributes"])
    assert view["progress"]["validated"] == 3 and view["progress"]["planned"] == 3
    assert all(view["downloads"].values())


def test_subgroup_accuracy_counts_each_group_directly(made_run):
    scores, labels = made_run["scores"], made_run["labels"]
    rows = {r["group"]: r for r in data.subgroups(made_run["run_dir"], 2)}
    assert set(rows) == {"women", "men", "young", "not young"}
    for group, attribute, value in (("women", "Male", -1), ("men", "Male", 1), ("young", "Young", 1),
                                    ("not young", "Young", -1)):
        column = ATTRIBUTES.index(attribute)
        keep = labels[:, column] == value
        others = [k for k in range(len(ATTRIBUTES)) if k != column]
        expected = get_accuracy(scores[keep][:, others], labels[keep][:, others])[1]
        assert rows[group]["images"] == keep.sum()
        assert rows[group]["mean_accuracy"] == pytest.approx(expected)


def test_runs_table_lists_the_run_and_marks_the_current_model(made_run):
    (row,) = data.runs_table(made_run["store"])
    assert (row["id"], row["status"], row["best_epoch"], row["epochs_done"], row["epochs_planned"]) == \
        ("manual__ui", "success", 2, 3, 3)
    assert row["current"] and row["val_mean_accuracy"] == VAL[2] and row["arch"] == "resnet18"


@pytest.mark.parametrize("name", ["../store.db", "report/../config.json", "checkpoints/epoch_1.pt", "split.csv",
                                  "/etc/passwd", "report/.hidden", "report/sub/x.png"])
def test_only_offered_files_can_be_downloaded(made_run, name):
    run = made_run["store"].run("manual__ui")
    with pytest.raises(data.NotFound):
        data.download_path(run, name)


def test_a_symlink_out_of_the_run_folder_is_not_served(made_run):
    outside = made_run["outside"]
    outside.mkdir()
    (outside / "passwords.txt").write_text("secret")
    layout = RunLayout(made_run["run_dir"])
    (layout.report / "leak.txt").symlink_to(outside / "passwords.txt")
    layout.model.unlink()
    layout.model.symlink_to(outside / "passwords.txt")
    run = made_run["store"].run("manual__ui")
    for name in ("report/leak.txt", "model.pt"):
        with pytest.raises(data.NotFound, match="leads out of the run folder"):
            data.download_path(run, name)
    assert data.download_path(run, "config.json") == layout.config.resolve()


def test_a_run_folder_outside_the_data_roots_is_not_read(made_run, monkeypatch, tmp_path):
    monkeypatch.setenv("FACEATTR_DATA_ROOTS", str(tmp_path / "elsewhere"))
    run = made_run["store"].run("manual__ui")
    assert data.run_folder(run) is None
    with pytest.raises(data.NotFound, match="not readable"):
        data.download_path(run, "model.pt")


@pytest.mark.parametrize("run_id", ["../x", "a/b", "", ".hidden", "x" * 251, "run id"])
def test_malformed_run_ids_are_refused(run_id):
    with pytest.raises(ValueError, match="run id"):
        data.check_run_id(run_id)


def test_every_folder_name_of_an_airflow_run_id_is_a_valid_run_id():
    from faceattr.run.layout import sanitize_run_id

    for dag_run_id in ("manual__2025-01-02T03:04:05.678+00:00", "x" * 250, "scheduled__a b/c"):
        assert data.check_run_id(sanitize_run_id(dag_run_id))


def test_pages_show_the_figures_and_escape_what_they_show(made_run):
    store = made_run["store"]
    store.upsert_scoring_job("job-<script>", status="success", model_run_id="manual__ui", model_epoch=2,
                             output_csv="/x/<script>alert(1)</script>.csv")
    html = pages.run_page(data.run_view(store, "manual__ui"))
    assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)" in html
    assert "0.8600" in html and "manual__ui/files/model.pt" in html and "<svg" in html
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")  # nothing loaded from elsewhere


def test_line_chart_draws_every_point_with_its_value():
    svg = charts.line_chart([charts.Series("val", [(1, 0.5), (2, 0.75)])], title="t", x_label="epoch", y_label="acc")
    series = svg[svg.index('<g class="series"'):svg.index("</g>")]
    assert series.count("<circle") == 2 and "epoch 2: 0.7500" in series
    assert "no data yet" in charts.line_chart([charts.Series("val", [])], title="t", x_label="x", y_label="y")
    assert charts.nice_ticks(0.0, 1.0) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]


def test_the_plugin_module_imports_stay_light():
    """Airflow imports the plugin module in every task process: it must not pull in the app or torch."""
    import subprocess
    import sys

    code = "import sys, faceattr.ui.plugin; print(sorted(m for m in ('torch', 'fastapi', 'faceattr.ui.app') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ}, cwd=Path(__file__).parent)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_the_compare_page_overlays_runs_and_lists_the_settings_that_differ(made_run):
    view = data.run_view(made_run["store"], "manual__ui")
    first = {**view["run"], "curves": view["curves"], "config": view["config"]}
    second = {**first, "id": "manual__other", "config": {**first["config"], "lr": 0.01},
              "curves": {key: [(x, y / 2) for x, y in series] for key, series in first["curves"].items()}}
    html = compare.compare_page([first, second])
    val_chart = html[html.index('id="chart-val"'):html.index("</svg>", html.index('id="chart-val"'))]
    assert val_chart.count('class="series"') == 2 and "epoch 2: 0.4300" in val_chart  # the second run's 0.86 / 2
    header = html[html.index('<table id="compare">'):html.index("</thead>", html.index('<table id="compare">'))]
    assert ">lr<" in header and ">arch<" not in header  # only what differs


def test_a_run_folder_in_the_object_store_is_pulled_for_the_pages(made_run, monkeypatch, tmp_path):
    """With FACEATTR_ARTIFACTS the API server has no run folder of its own: the pages pull what they read."""
    import shutil

    from faceattr.run import artifacts

    monkeypatch.setenv("FACEATTR_ARTIFACTS", f"memory://faceattr-ui-test/{tmp_path.name}")  # fsspec's in-process store
    run_dir = made_run["run_dir"]
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "epoch_1.pt").write_bytes(b"a large checkpoint")
    artifacts.push(run_dir)
    model = RunLayout(run_dir).model.read_bytes()
    shutil.rmtree(run_dir)
    monkeypatch.setattr(data, "_pulled", {})
    view = data.run_view(made_run["store"], "manual__ui")
    assert view["folder"] == str(run_dir) and all(view["downloads"].values())
    assert [r["group"] for r in view["subgroups"]] == ["women", "men", "not young", "young"]
    assert data.download_path(made_run["store"].run("manual__ui"), "model.pt").read_bytes() == model
    assert not (run_dir / "checkpoints").exists()  # the pages never need the checkpoints


def test_report_files_are_served_sandboxed(client):
    """The report opens inline on Airflow's origin: it must not run scripts there or be sniffed as html."""
    for name in ("report/index.html", "config.json"):
        response = client.get(f"/runs/manual__ui/files/{name}")
        assert response.status_code == 200
        assert response.headers["content-security-policy"] == "sandbox"
        assert response.headers["x-content-type-options"] == "nosniff"
    assert client.get("/runs/manual__nothing/files/config.json").status_code == 404
    assert client.get("/runs/.bad/files/config.json").status_code == 400


def test_the_report_tab_shows_only_its_own_dag_runs_folder(client):
    """manual__ui. sanitises to the folder of DAG run manual__ui: its tab must not show that run."""
    page = client.get("/report/faceattr_train/manual__ui.").text
    assert "has no run folder yet" in page and "0.8600" not in page


def test_comparability_with_the_current_model_is_the_registrys_rule(made_run):
    """Two runs whose label file was unreadable: equal evaluation sets, yet the registry would not compare them."""
    import shutil

    from faceattr.store import registry

    store = made_run["store"]
    other = made_run["run_dir"].parent / "manual__other"
    shutil.copytree(made_run["run_dir"], other)
    published_model_file(other)  # its own model file, as select would export it
    store.sync_run_dir("manual__other", other, status="success", dag_run_id="manual__other")
    registry.publish(store, other, actor="test")
    view = data.run_view(store, "manual__other")
    assert view["current"]["comparable"] is False and "checksum is unknown" in view["current"]["difference"]
    assert "Not comparable with the current model" in pages.run_page(view)


def test_without_a_run_store_the_ui_says_which_setting_and_creates_nothing(client, tmp_path, monkeypatch):
    missing = tmp_path / "nowhere" / "faceattr.db"
    monkeypatch.setenv("FACEATTR_DB_URL", f"sqlite:///{missing}")
    response = client.get("/api/runs")
    assert response.status_code == 503 and "FACEATTR_DB_URL" in response.text
    assert not missing.exists()
    empty = tmp_path / "empty.db"  # a file without faceattr's tables: not migrated by a page view either
    empty.touch()
    monkeypatch.setenv("FACEATTR_DB_URL", f"sqlite:///{empty}")
    assert client.get("/api/runs").status_code == 503
    assert empty.stat().st_size == 0
