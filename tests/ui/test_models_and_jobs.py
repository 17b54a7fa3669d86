"""The Models and Scoring jobs pages, registry actions from the pages, downloads and the run page's
new figures, on a store and run folders made here (tests/ui/test_ui.py's made_run fixture)."""
from __future__ import annotations

import datetime as dt
import os
import shutil

import numpy as np
import pytest
from fastapi import HTTPException

from faceattr.attributes import ATTRIBUTES
from faceattr.data import versions
from faceattr.engine.metrics import mean_loss
from faceattr.fsutil import read_json
from faceattr.run import metrics
from faceattr.run.layout import RunLayout
from faceattr.store import queries, registry
from faceattr.ui import data, jobs, model_pages, models, pages
from support import published_model_file


@pytest.fixture
def two_runs(made_run):
    """manual__ui is the champion; manual__worse, tested on the same images but worse, stays a challenger."""
    store, run_dir = made_run["store"], made_run["run_dir"]
    labels = RunLayout(run_dir).root.parent.parent / "celeba"
    labels.mkdir()
    (labels / "list_attr_celeba.txt").write_text("1\n" + " ".join(ATTRIBUTES) + "\nx.jpg " + " ".join(["1"] * 40) + "\n")
    (run_dir / "split.csv").write_text("image_id,split\nx.jpg,train\n")
    with store.write() as conn:  # re-record the champion's evaluation set now that both parts are readable
        from sqlalchemy import update

        from faceattr.store.schema import Model
        conn.execute(update(Model).values(eval_set=registry.evaluation_set(run_dir)))
    worse = run_dir.parent / "manual__worse"
    shutil.copytree(run_dir, worse)
    published_model_file(worse)  # its own model.pt: publish refuses another run's
    test = metrics.read_epoch_metrics(worse, "test", 2)
    test["mean_accuracy"] -= 0.05
    test["attributes"]["Smiling"]["accuracy"] -= 0.2
    metrics.write_epoch_metrics(worse, "test", 2, test)
    store.sync_run_dir("manual__worse", worse, status="success", dag_run_id="manual__worse",
                       started_at=dt.datetime.now(dt.timezone.utc))
    published = registry.publish(store, worse, actor="faceattr_train manual__worse")
    assert published["state"] == "challenger", published
    return {**made_run, "worse": worse}


def test_the_models_view_names_the_champion_and_why_the_other_is_not(two_runs):
    view = models.models_view(two_runs["store"])
    assert view["champion"]["run_id"] == "manual__ui"
    (other,) = [row for row in view["rows"] if not row["champion"]]
    assert other["run_id"] == "manual__worse" and other["state"] == "challenger"
    assert other["reason"].startswith("does not beat champion run manual__ui") and other["comparable_with_champion"]
    smiling = next(r for r in view["attributes"] if r["attribute"] == "Smiling")
    assert smiling["difference"] == pytest.approx(-0.2)
    assert [row["run_id"] for row in view["trend"]] == ["manual__ui", "manual__worse"]
    assert {e["run_id"] for e in view["events"]} == {"manual__ui", "manual__worse"}
    html = model_pages.models_page(view)
    assert "★ champion" in html and "does not beat champion run manual__ui" in html
    assert 'id="chart-trend"' in html and 'data-url="/faceattr/models/promote"' in html


def test_what_else_the_registry_records_with_a_decision_is_shown(two_runs):
    """A column a later migration adds (a re-scored champion, the shared images) needs no page change."""
    row = {"run_id": "r", "reason": "x", "champion_rescored_accuracy": 0.8123, "shared_images": 512, "sha256": "ab"}
    assert models.details(row) == {"champion_rescored_accuracy": 0.8123, "shared_images": 512}
    html = model_pages.details_list(models.details(row))
    assert "champion rescored accuracy" in html and "0.8123" in html and "512" in html


@pytest.fixture
def actions(client, monkeypatch):
    """The app with a signed-in user who may edit faceattr_train (set `allowed` False for a viewer)."""
    from airflow.api_fastapi.core_api.security import get_user

    from faceattr.ui import app

    class User:
        def get_name(self):
            return "alice"

    state = {"allowed": True}

    def may_edit():
        if not state["allowed"]:
            raise HTTPException(403, "Forbidden")

    app.app.dependency_overrides.update({app.may_edit_train_dag: may_edit, get_user: User})
    return client, state


def test_promote_and_rollback_from_the_page_record_the_user(two_runs, actions):
    client, _ = actions
    headers = {"X-Faceattr-Action": "1"}
    response = client.post("/models/promote", json={"run_id": "manual__worse", "epoch": 2}, headers=headers)
    assert response.status_code == 200, response.text
    assert registry.champion(two_runs["store"])["run_id"] == "manual__worse"
    event = queries.model_events(two_runs["store"])[0]
    assert (event["run_id"], event["state"], event["actor"]) == ("manual__worse", "champion", "alice")
    assert client.post("/models/rollback", headers=headers).status_code == 200
    assert registry.champion(two_runs["store"])["run_id"] == "manual__ui"
    assert queries.model_events(two_runs["store"])[0]["actor"] == "alice"


def test_registry_changes_are_refused_to_viewers_and_other_sites(two_runs, actions):
    client, state = actions
    body = {"run_id": "manual__worse", "epoch": 2}
    assert client.post("/models/promote", json=body).status_code == 403  # no header: a form on another site
    assert client.post("/models/promote", json=body, headers={"X-Faceattr-Action": "1",
                                                              "Origin": "https://evil.example"}).status_code == 403
    assert client.get("/models/promote").status_code == 405
    state["allowed"] = False
    assert client.post("/models/promote", json=body, headers={"X-Faceattr-Action": "1"}).status_code == 403
    assert client.post("/models/rollback", headers={"X-Faceattr-Action": "1"}).status_code == 403
    assert registry.champion(two_runs["store"])["run_id"] == "manual__ui"


def test_scoring_jobs_list_their_files_and_serve_only_those(made_run, client, tmp_path):
    store, run_dir = made_run["store"], made_run["run_dir"]
    out = RunLayout(run_dir).private_predictions
    out.write_text("image_id," + ",".join(ATTRIBUTES) + "\n" + "a.jpg," + ",".join(["1"] * 40) + "\n")
    store.upsert_scoring_job("job-1", status="success", model_run_id="manual__ui", model_epoch=2,
                             output_csv=str(out), errors_csv=str(run_dir / "private_predictions.errors.csv"),
                             images=2, rows=1, errors=1, started_at=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
                             finished_at=dt.datetime(2026, 1, 1, 0, 0, 30, tzinfo=dt.timezone.utc))
    (row,) = jobs.jobs_table(store)
    assert row["seconds"] == 30 and row["files"] == {"predictions.csv": True, "errors.csv": True}
    assert row["model_sha256"] and row["model_sha256"] == registry.champion(store)["sha256"]
    response = client.get("/jobs/job-1/files/predictions.csv")
    assert response.status_code == 200 and response.content == out.read_bytes()
    for name in ("../faceattr.db", "model.pt", "private_predictions.csv"):
        assert client.get(f"/jobs/job-1/files/{name}").status_code == 404
    assert client.get("/jobs/no-such-job/files/predictions.csv").status_code == 404
    outside = tmp_path / "elsewhere.csv"
    outside.write_text("image_id\n")
    store.upsert_scoring_job("job-out", status="success", output_csv=str(outside))
    with pytest.raises(data.NotFound, match="not readable on this server"):
        jobs.job_file(jobs.job(store, "job-out"), "predictions.csv")
    assert "job-1" in client.get("/jobs").text


def test_the_prediction_summary_sets_scored_rates_beside_the_training_split(made_run, tmp_path):
    store, run_dir = made_run["store"], made_run["run_dir"]
    root = read_json(RunLayout(run_dir).config)["root"]
    celeba = tmp_path / "data" / "celeba"
    assert os.path.realpath(root) == os.path.realpath(tmp_path / "data")
    celeba.mkdir()
    train = [["1" if k == 0 else "-1" for k in range(40)], ["-1"] * 40]  # 5_o_Clock_Shadow on half the training images
    (celeba / "list_attr_celeba.txt").write_text("3\n" + " ".join(ATTRIBUTES) + "\n" + "\n".join(
        f"{name} " + " ".join(values) for name, values in zip(("a.jpg", "b.jpg", "c.jpg"), train + [["1"] * 40])) + "\n")
    (run_dir / "split.csv").write_text("image_id,split\na.jpg,train\nb.jpg,train\nc.jpg,test\n")
    scored = run_dir / "scored.csv"
    scored.write_text("image_id," + ",".join(ATTRIBUTES) + "\n" + "\n".join(
        f"{i}.jpg," + ",".join(["1"] * 40) for i in range(4)) + "\n")  # everything present everywhere
    store.upsert_scoring_job("job-d", status="success", model_run_id="manual__ui", model_epoch=2, output_csv=str(scored))
    summary = jobs.drift(store, jobs.job(store, "job-d"))
    assert summary["problem"] is None
    rows = {r["attribute"]: r for r in summary["rows"]}
    assert rows["5_o_Clock_Shadow"]["training"] == 0.5 and rows["Smiling"]["training"] == 0.0
    assert rows["Smiling"]["moved"] == 1.0 and rows["Smiling"]["scored"] == 1.0
    assert sum(r["flagged"] for r in summary["rows"]) == jobs.FLAG_TOP
    assert not rows["5_o_Clock_Shadow"]["flagged"]  # moved 50 points, but 39 attributes moved 100
    html = model_pages.job_page(jobs.job(store, "job-d"), summary)
    assert html.count('class="flagged"') == jobs.FLAG_TOP


def test_the_training_rates_come_from_the_data_version_the_run_trained_on(made_run, tmp_path):
    store, run_dir = made_run["store"], made_run["run_dir"]
    root = read_json(RunLayout(run_dir).config)["root"]

    def labels(folder, smiling: str) -> None:  # a.jpg and b.jpg, both Smiling or neither
        folder.mkdir(parents=True)
        values = " ".join(smiling if name == "Smiling" else "-1" for name in ATTRIBUTES)
        (folder / "list_attr_celeba.txt").write_text(f"2\n{' '.join(ATTRIBUTES)}\na.jpg {values}\nb.jpg {values}\n")
    labels(tmp_path / "data" / "celeba", "-1")  # today's data: nobody smiles
    labels(versions.version_dir(root, "v-trained"), "1")  # what the run was split from: everybody does
    versions.record_run_version(run_dir, root, "v-trained")
    (run_dir / "split.csv").write_text("image_id,split\na.jpg,train\nb.jpg,train\n")
    scored = run_dir / "scored.csv"
    scored.write_text("image_id," + ",".join(ATTRIBUTES) + "\nz.jpg," + ",".join(["1"] * 40) + "\n")
    store.upsert_scoring_job("job-v", status="success", model_run_id="manual__ui", model_epoch=2, output_csv=str(scored))
    rows = {r["attribute"]: r for r in jobs.drift(store, jobs.job(store, "job-v"))["rows"]}
    assert rows["Smiling"]["training"] == 1.0 and rows["Smiling"]["moved"] == 0.0


def test_model_pt_is_served_as_bytes_without_compression(made_run, client):
    response = client.get("/runs/manual__ui/files/model.pt", headers={"Accept-Encoding": "gzip"})
    assert response.status_code == 200 and response.content == RunLayout(made_run["run_dir"]).model.read_bytes()
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["content-encoding"] == "identity"  # Airflow's GZip middleware passes it through


def test_an_unknown_run_is_a_404_that_names_nothing_else(made_run, client):
    for path in ("/runs/no_such_run", "/api/runs/no_such_run", "/runs/no_such_run/files/model.pt"):
        response = client.get(path)
        assert response.status_code == 404
        assert "manual__ui" not in response.text and "sqlite" not in response.text and "store.db" not in response.text


def test_the_run_page_shows_registry_state_losses_and_the_report_in_the_frame(made_run):
    store, run_dir = made_run["store"], made_run["run_dir"]
    val = metrics.read_epoch_metrics(run_dir, "val", 1)
    metrics.write_epoch_metrics(run_dir, "val", 1, {**val, "loss": 0.42})
    train = metrics.read_epoch_metrics(run_dir, "train", 1)
    metrics.write_epoch_metrics(run_dir, "train", 1, {**train, "lr": 0.003, "batches": 4,
                                                      "batch_losses": [[2, 1.5], [4, 1.2]]})
    view = data.run_view(store, "manual__ui")
    assert view["curves"]["val_loss"] == [(1, 0.42)]
    assert view["curves"]["lr"] == [(1, 0.003)] and view["curves"]["batch_loss"] == [(0.5, 1.5), (1.0, 1.2)]
    assert view["registry"]["state"] == "champion" and view["registry"]["reason"] == "first published model"
    html = pages.run_page(view)
    assert 'id="registry-state"' in html and "first published model" in html
    report = html[html.index('id="report-link"') - 200:html.index('id="report-link"') + 10]
    assert "target=" not in report  # a popup is blocked in Airflow's frame: the report opens in it


def test_a_validation_pass_records_its_loss_as_training_counts_it():
    scores, labels = np.array([[0.5, -2.0]]), np.array([[1, -1]])
    assert mean_loss(scores, labels, "mse") == pytest.approx((0.25 + 1.0) / 2)
    assert mean_loss(scores, labels, "bce") == pytest.approx((np.log1p(np.exp(-0.5)) + np.log1p(np.exp(-2.0))) / 2)
    assert mean_loss(np.array([[np.nan, 0.0]]), labels) is None


def test_the_eta_counts_the_stages_after_the_last_epoch(made_run):
    store = made_run["store"]
    store.sync_run_dir("manual__ui", made_run["run_dir"], status="running")
    run = store.run("manual__ui")
    tasks = [{"task_id": f"epoch_0{k}.{stage}", "state": "success"} for k in (1, 2, 3) for stage in ("train", "validate")]
    after_epochs = data.progress(run, data.config_of(run), data.run_folder(run), tasks)
    assert after_epochs["eta_seconds"] > 0  # test, report and publish still to run
    done = tasks + [{"task_id": name, "state": "success"} for name in data.AFTER_EPOCHS]
    assert data.progress(run, data.config_of(run), data.run_folder(run), done)["eta_seconds"] == 0


def test_the_running_epoch_shows_how_far_it_is_by_the_mean_pass(made_run):
    store = made_run["store"]
    store.sync_run_dir("manual__ui", made_run["run_dir"], status="running")
    run = store.run("manual__ui")
    started = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=6)  # mean training pass: 12 s (11, 12, 13)
    running = [{"task_id": "epoch_03.train", "state": "running", "start_date": started}]
    current = data.progress(run, data.config_of(run), data.run_folder(run), running)["current"]
    assert (current["epoch"], current["stage"]) == (3, "train")
    assert 0.45 < current["fraction"] <= 0.99  # capped below 1: a pass may take longer than the mean
    assert "Epoch 3 train" in pages.live_part(data.run_view(store, "manual__ui", running))


def test_runs_have_names_people_tell_apart():
    started = dt.datetime(2026, 12, 7, 5, 53, 10, tzinfo=dt.timezone.utc)
    run = {"dag_run_id": "manual__2026-12-07T05:53:09.123+00:00", "started_at": started, "note": "lower lr"}
    assert data.run_name(run) == "manual 12-07 05:53:10 · lower lr"
    assert data.run_name({"dag_run_id": "x" * 60}).endswith("…")


def test_dates_sort_as_iso_text_and_missing_figures_have_no_sort_number():
    html = pages.runs_page([{
        "id": "a", "name": "a", "dag_run_id": "a", "status": "success", "current": False, "registry_state": None,
        "started_at": dt.datetime(2025, 3, 1, tzinfo=dt.timezone.utc), "finished_at": None, "seconds": None,
        "arch": "r", "weights": "none", "split": "random", "epochs_planned": 2, "epochs_done": 1, "best_epoch": None,
        "val_mean_accuracy": None, "majority_baseline": None, "test_mean_accuracy": None,
        "test_majority_baseline": None}])
    assert 'data-value="2025-03-01T00:00:00+00:00"' in html
    assert 'data-value="0"' not in html  # a missing duration is "–", sorted last, not 0
