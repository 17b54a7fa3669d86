"""The faceattr plugin in a real Airflow API server, with a real training run, seen by a real browser.

A tiny faceattr_train run (synthetic data, resnet18 head on the CPU, 2 of 3 epoch groups) runs
under dag.test(), and a worse copy of it is published beside it (a challenger, with the gate's
reason); then `airflow api-server` serves the same metadata DB, run store and data roots, with
the plugin found through its entry point. The HTTP checks need no browser: every plugin route
refuses a missing (401) or bad (403) credential, downloads never leave the run folder, and a
viewer cannot promote. The browser checks drive Debian's Chromium through Python playwright
(`executable_path`; nothing is downloaded): log in, open the faceattr nav page and the run's
"Training report" tab, compare the figures shown with the run folder's, download model.pt and a
scoring CSV, sort every column, compare two runs, promote and roll back from the Models page,
and save screenshots.

Screenshots: test-artifacts/ui/*.png in the checkout (FACEATTR_TEST_ARTIFACTS=DIR puts them in DIR/ui).
Without Chromium (FACEATTR_CHROMIUM, default /usr/bin/chromium) or playwright the browser test
skips with the reason, except under CI (.ci/run installs both), where it fails.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

import pytest
from sqlalchemy import delete

from airflow_env import AIRFLOW, DAGS, REPO, AirflowClient, airflow_environ, configure, free_port, migrate, \
    synthetic_source, unlabelled_faces
from support import missing

configure()  # before airflow is imported

from airflow.dag_processing.dagbag import DagBag  # noqa: E402

from faceattr.attributes import ATTRIBUTES  # noqa: E402
from faceattr.engine.evaluate import evaluate_epoch  # noqa: E402
from faceattr.engine.selection import select_best  # noqa: E402
from faceattr.run import metrics  # noqa: E402
from faceattr.run.layout import RunLayout, sanitize_run_id  # noqa: E402
from faceattr.store import queries, registry  # noqa: E402
from faceattr.store.schema import Epoch  # noqa: E402
from faceattr.store.store import Store  # noqa: E402

pytestmark = pytest.mark.slow

CHROMIUM = Path(os.environ.get("FACEATTR_CHROMIUM", "/usr/bin/chromium"))
SHOTS = Path(os.environ.get("FACEATTR_TEST_ARTIFACTS") or REPO / "test-artifacts") / "ui"
# Clicks every sortable header of a table twice and says where a column is not in order (missing
# values, shown as "–", always last): the page's own sort must agree with a plain comparison.
SORT_CHECK = """table => { const problems = [];
  [...table.tHead.rows[0].cells].forEach((th, i) => { if (!th.hasAttribute('data-sort')) return;
    for (const dir of ['asc', 'desc']) { th.click();
      const numeric = th.classList.contains('num');
      const keys = [...table.tBodies[0].rows].map(r => { const c = r.children[i];
        const v = (c.dataset.value ?? c.textContent).trim();
        if (numeric) { const n = parseFloat(v); return isNaN(n) ? null : n; }
        return v === '' || v === '\u2013' ? null : v.toLowerCase(); });
      const present = keys.filter(k => k !== null);
      if (keys.slice(present.length).some(k => k !== null)) problems.push(th.textContent + ' ' + dir + ': a gap first');
      for (let k = 1; k < present.length; k++)
        if (dir === 'asc' ? present[k - 1] > present[k] : present[k - 1] < present[k])
          problems.push(th.textContent + ' ' + dir + ': ' + present[k - 1] + ' before ' + present[k]); } });
  return problems; }"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """FACEATTR_HOME with one finished faceattr_train run (2 epochs, private images scored)."""
    home = tmp_path_factory.mktemp("faceattr-ui")
    source = synthetic_source(home / "source")
    private = unlabelled_faces(source, home / "private", 3)
    (private / "broken.jpg").write_bytes(b"not a JPEG")
    env = {"FACEATTR_HOME": str(home), "FACEATTR_DATA_ROOTS": str(home),
           "FACEATTR_DB_URL": f"sqlite:///{home / 'faceattr.db'}"}
    conf = {"source": str(source), "root": str(home / "root"), "output": str(home / "runs"), "arch": "resnet18",
            "weights": "none", "freeze_children": 9, "epochs": 2, "batch_size": 16, "lr": 3e-3, "device": "cpu",
            "num_workers": 0, "seed": 3, "private_images": str(private)}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        migrate(configure())
        bag = DagBag(dag_folder=str(DAGS), known_pools={"default_pool", "gpu"})
        assert bag.import_errors == {}
        dag_run = bag.dags["faceattr_train"].test(run_conf=conf)
        assert getattr(dag_run.state, "value", dag_run.state) == "success"
        run_dir = home / "runs" / sanitize_run_id(dag_run.run_id)
        # Past the run's 2 epochs, the third group is skipped by Airflow without starting a task.
        third = [ti for ti in dag_run.get_task_instances() if ti.task_id.startswith("epoch_03.")]
        assert {state(ti.state) for ti in third} == {"skipped"} and not any(ti.hostname for ti in third), \
            [(ti.task_id, ti.hostname) for ti in third]
        worse = publish_a_worse_copy(run_dir)
        yield {"home": home, "env": env, "dag_run_id": dag_run.run_id, "run_id": run_dir.name, "run_dir": run_dir,
               "worse_id": worse.name}


def state(value) -> str | None:
    return getattr(value, "value", value)


def publish_a_worse_copy(run_dir: Path) -> Path:
    """A second run, the first's folder with test figures 3 points lower: the gate keeps it a challenger.
    Its model.pt is exported and tested again, so the registry takes it as this run's own."""
    worse = run_dir.parent / "manual__worse_copy"
    shutil.copytree(run_dir, worse)
    select_best(worse)
    evaluate_epoch(worse, "best", "test", device="cpu")
    tested = metrics.read_epoch_metrics(worse, "test", metrics.read_best(worse)["epoch"])
    tested["mean_accuracy"] -= 0.03
    metrics.write_epoch_metrics(worse, "test", tested["epoch"], tested)
    with Store.from_env() as store:
        store.sync_run_dir(worse.name, worse, status="success", dag_run_id=worse.name,
                           started_at=datetime.now(timezone.utc))  # the newer run: first on the Runs page
        published = registry.publish(store, worse, actor=f"faceattr_train {worse.name}")
    assert published["state"] == "challenger" and "does not beat" in published["reason"], published
    return worse


class ApiServer(AirflowClient):
    def get(self, path: str, *, token: str | None = None, cookie: str | None = None, method: str = "GET",
            headers: dict | None = None) -> tuple[int, bytes]:
        headers = dict(headers or {})
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if cookie:
            headers["Cookie"] = f"_token={cookie}"
        request = urllib.request.Request(self.url + path, headers=headers, method=method,
                                         data=b"{}" if method == "POST" else None)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()


@pytest.fixture(scope="module")
def server(trained):
    home = configure()
    password = secrets.token_urlsafe(12)
    passwords = trained["home"] / "passwords.json"
    viewer_password = secrets.token_urlsafe(12)
    # The simple auth manager keeps a password it finds.
    passwords.write_text(json.dumps({"admin": password, "viewer": viewer_password}))
    secret = secrets.token_urlsafe(32)
    env = {**os.environ, **airflow_environ(home), **trained["env"],
           "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin,viewer:viewer",
           "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
           "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",  # True would let anonymous calls in
           "AIRFLOW__API__SECRET_KEY": secret, "AIRFLOW__API_AUTH__JWT_SECRET": secret}
    # The plugin is found through its entry point; its code must be this checkout's. In a git
    # worktree the installed package points elsewhere, so the checkout goes first on the path; where
    # it is the installed one, adding it would list the entry point twice (its egg-info beside the
    # venv's dist-info) and Airflow would report the second as an import error.
    if installed_faceattr(env) != REPO / "faceattr":
        env["PYTHONPATH"] = str(REPO)
    done = subprocess.run([str(AIRFLOW), "dags", "reserialize"], env=env, capture_output=True, text=True,
                          timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    port = free_port()
    api = ApiServer(trained["home"], env)
    api.url = f"http://127.0.0.1:{port}"
    api.password = password
    api.spawn("api-server", ["api-server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"])
    try:
        api.wait_for("the api-server", lambda: api.get("/api/v2/monitor/health")[0] == 200, timeout=180, every=0.5)
        status, body = api.request("POST", "/auth/token", {"username": "admin", "password": password})
        assert status == 201, body
        api.token = body["access_token"]
        status, body = api.request("POST", "/auth/token", {"username": "viewer", "password": viewer_password})
        assert status == 201, body
        api.viewer_token = body["access_token"]
        yield api
    finally:
        api.stop()


def installed_faceattr(env: dict) -> Path:
    """Where the venv's `import faceattr` leads from outside the checkout, as an Airflow process sees it."""
    env = {k: v for k, v in env.items() if k != "PYTHONPATH"}
    done = subprocess.run([str(AIRFLOW.parent / "python"), "-c", "import faceattr; print(faceattr.__file__)"],
                          env=env, cwd="/", capture_output=True, text=True, check=True)
    return Path(done.stdout.strip()).resolve().parent


def files_url(trained, name: str) -> str:
    return f"/faceattr/runs/{trained['run_id']}/files/{name}"


def test_the_plugin_is_loaded_through_its_entry_point(server):
    status, body = server.request("GET", "/api/v2/plugins")
    assert status == 200, body
    (plugin,) = [p for p in body["plugins"] if p["name"] == "faceattr"]
    assert plugin["source"].startswith("faceattr=="), plugin["source"]
    assert {v["destination"] for v in plugin["external_views"]} == {"nav", "dag_run"}
    errors = server.request("GET", "/api/v2/plugins/importErrors")[1]
    assert errors["total_entries"] == 0, errors


@pytest.mark.parametrize("path", ["/faceattr/", "/faceattr/api/runs", "/faceattr/runs/{run}",
                                  "/faceattr/runs/{run}/files/model.pt", "/faceattr/api/runs/{run}/live",
                                  "/faceattr/report/faceattr_train/{dag_run}", "/faceattr/compare?run={run}&run={run}",
                                  "/faceattr/models", "/faceattr/jobs", "/faceattr/jobs/{run}-private",
                                  "/faceattr/jobs/{run}-private/files/predictions.csv"])
def test_every_plugin_route_needs_an_airflow_login(server, trained, path):
    path = path.format(run=trained["run_id"], dag_run=urllib.parse.quote(trained["dag_run_id"], safe=""))
    assert server.get(path)[0] == 401
    assert server.get(path, token="not-a-jwt")[0] == 403
    assert server.get(path, cookie="not-a-jwt")[0] == 403
    assert server.get(path, cookie=server.token)[0] == 200


def test_the_json_holds_the_run_folder_figures(server, trained):
    status, body = server.get(f"/faceattr/api/runs/{trained['run_id']}", token=server.token)
    assert status == 200
    view = json.loads(body)
    run_dir = trained["run_dir"]
    best = metrics.read_best(run_dir)
    for epoch, value in view["curves"]["val_mean_accuracy"]:
        assert value == pytest.approx(metrics.read_epoch_metrics(run_dir, "val", epoch)["mean_accuracy"])
    assert [e for e, _ in view["curves"]["train_loss"]] == [1, 2]
    assert view["selection"]["winner"] == best["epoch"]
    tested = metrics.read_epoch_metrics(run_dir, "test", best["epoch"])
    assert {r["attribute"]: r["accuracy"] for r in view["attributes"]} == pytest.approx(
        {name: tested["attributes"][name]["accuracy"] for name in ATTRIBUTES})
    assert [r["group"] for r in view["subgroups"]] == ["women", "men", "not young", "young"]
    assert all(view["downloads"].values()), view["downloads"]
    (row,) = [r for r in json.loads(server.get("/faceattr/api/runs", token=server.token)[1]) if r["id"] == trained["run_id"]]
    assert (row["status"], row["epochs_done"], row["epochs_planned"], row["current"]) == ("success", 2, 2, True)


def test_downloads_come_only_from_inside_the_run_folder(server, trained):
    layout = RunLayout(trained["run_dir"])
    status, body = server.get(files_url(trained, "model.pt"), token=server.token)
    assert (status, body) == (200, layout.model.read_bytes())
    assert server.get(files_url(trained, "report/index.html"), token=server.token)[0] == 200
    secret = trained["home"] / "faceattr.db"  # inside the data roots, outside the run folder
    (layout.report / "store.db").symlink_to(secret)
    try:
        for name in ("../../faceattr.db", "%2e%2e/%2e%2e/faceattr.db", "..%2f..%2ffaceattr.db", "report/store.db",
                     "checkpoints/epoch_1.pt", "/etc/passwd", "split.csv"):
            status, body = server.get(files_url(trained, name), token=server.token)
            assert status in (400, 404), (name, status)
            assert body != secret.read_bytes()
    finally:
        (layout.report / "store.db").unlink()
    for run in ("..", "..%2f..%2fetc", "no_such_run"):
        assert server.get(f"/faceattr/runs/{run}/files/model.pt", token=server.token)[0] in (400, 404), run


def test_only_a_user_who_may_edit_the_dag_changes_the_registry(server, trained):
    action = {"X-Faceattr-Action": "1", "Content-Type": "application/json"}
    assert server.get("/faceattr/models/rollback", method="POST", token=server.viewer_token, headers=action)[0] == 403
    assert server.get("/faceattr/models/rollback", method="POST", token=server.token,
                      headers={"Content-Type": "application/json"})[0] == 403  # no header: not from the page
    assert server.get("/faceattr/models", token=server.viewer_token)[0] == 200  # a viewer still sees it


def test_model_pt_downloads_as_bytes_without_compression(server, trained):
    request = urllib.request.Request(server.url + files_url(trained, "model.pt"),
                                     headers={"Authorization": f"Bearer {server.token}", "Accept-Encoding": "gzip"})
    with urllib.request.urlopen(request, timeout=60) as response:  # urllib does not gunzip: the bytes as sent
        assert response.read() == RunLayout(trained["run_dir"]).model.read_bytes()
        assert response.headers["Content-Type"] == "application/octet-stream"
        assert response.headers.get("Content-Encoding") in (None, "identity")


def test_the_tab_on_another_dags_run_says_it_has_no_report(server):
    status, body = server.get("/faceattr/report/faceattr_score/manual__1", token=server.token)
    assert status == 200 and b"faceattr_score is not faceattr_train" in body


def test_in_a_browser(server, trained):
    if not CHROMIUM.exists():
        missing(f"{CHROMIUM} is absent (apt-get install chromium; FACEATTR_CHROMIUM names another)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("the playwright package is absent (pip install playwright; no browser download is needed)")
    if SHOTS.exists():
        shutil.rmtree(SHOTS)
    SHOTS.mkdir(parents=True)
    run_id, run_dir = trained["run_id"], trained["run_dir"]
    best = metrics.read_best(run_dir)
    tested = metrics.read_epoch_metrics(run_dir, "test", best["epoch"])
    dag_run = urllib.parse.quote(trained["dag_run_id"], safe="")
    status, body = server.request("PATCH", f"/api/v2/dags/faceattr_train/dagRuns/{dag_run}", {"note": "first try"})
    assert status == 200, body
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM))
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1000}, accept_downloads=True)
            page.goto(server.url + "/")
            page.wait_for_url("**/auth/login**")
            page.fill("input[name=username]", "admin")
            page.fill("input[name=password]", server.password)
            page.click("button[type=submit]")
            page.wait_for_url(lambda url: "/auth/login" not in url)

            # The nav entry: the Runs page in Airflow's frame.
            page.get_by_role("link", name="faceattr").first.click()
            page.wait_for_url("**/plugin/faceattr")
            frame = page.frame_locator("iframe[title='faceattr']")
            frame.locator(f"#runs a[title='{run_id}']").wait_for()
            row = frame.locator("#runs tbody tr", has_text=run_id)
            assert f"{best['val_mean_accuracy']:.4f}" in row.inner_text()
            assert "manual" in row.inner_text() and "· first try" in row.inner_text()  # the run's name and note
            page.screenshot(path=str(SHOTS / "runs_in_airflow.png"))

            # Every column sorts; Started by time (the older run first when ascending).
            assert frame.locator("#runs").evaluate(SORT_CHECK) == []
            frame.locator("#runs th", has_text="Started").click()
            assert run_id in frame.locator("#runs tbody tr").first.inner_text()
            frame.locator("#runs th", has_text="Started").click()
            assert trained["worse_id"] in frame.locator("#runs tbody tr").first.inner_text()

            # Compare: with one run ticked the page says so in place; with two it overlays them.
            frame.locator(f"input.pick[value='{run_id}']").check()
            frame.get_by_role("button", name="Compare").click()
            assert "Tick two or more runs" in frame.locator("#notice").inner_text()
            frame.locator(f"input.pick[value='{trained['worse_id']}']").check()
            frame.get_by_role("button", name="Compare").click()
            frame.locator("#chart-val").wait_for()
            dashes = frame.locator("#chart-val g.series path").evaluate_all(
                "paths => paths.map(p => p.getAttribute('stroke-dasharray'))")
            assert len(dashes) == 2 and len(set(dashes)) == 2  # equal curves stay visible
            assert frame.locator("#compare-attributes tbody tr").count() == len(ATTRIBUTES)
            page.screenshot(path=str(SHOTS / "compare_two_runs.png"), full_page=True)

            # Models: the champion, and why the other is not; promote it, then roll back, as admin.
            frame.get_by_role("link", name="Models").first.click()
            frame.locator("#models").wait_for()
            challenger = frame.locator("#models tbody tr", has_text=trained["worse_id"])
            assert "challenger" in challenger.inner_text()
            assert f"does not beat champion run {run_id}" in challenger.inner_text()
            assert run_id in frame.locator("#champion").inner_text()
            assert frame.locator("#chart-trend").count() == 1
            page.screenshot(path=str(SHOTS / "models_page.png"), full_page=True)
            challenger.get_by_role("button", name="Promote").click()
            challenger.get_by_role("button", name="Confirm: promote").click()
            frame.locator("#notice", has_text=f"champion is now run {trained['worse_id']}").wait_for()
            frame.locator("#champion", has_text=trained["worse_id"]).wait_for(timeout=20_000)  # after the reload
            assert "admin" in frame.locator("#events tbody tr").first.inner_text()
            assert frame.locator("#models").evaluate(SORT_CHECK) == []
            page.screenshot(path=str(SHOTS / "models_after_promote.png"), full_page=True)
            frame.locator("#rollback").click()
            frame.locator("#rollback").click()
            frame.locator("#champion", has_text=run_id).wait_for(timeout=20_000)
            with Store.from_env() as store:
                assert registry.champion(store)["run_id"] == run_id
                assert [e["actor"] for e in queries.model_events(store)[:2]] == ["admin", "admin"]

            # Scoring jobs: the private images' job, its CSV downloaded, its prediction summary.
            frame.get_by_role("link", name="Scoring jobs").first.click()
            job = frame.locator("#jobs tbody tr", has_text=f"{run_id}-private")
            assert frame.locator("#jobs").evaluate(SORT_CHECK) == []
            with page.expect_download() as download:
                job.get_by_role("link", name="predictions.csv").click()
            assert Path(download.value.path()).read_bytes() == RunLayout(run_dir).private_predictions.read_bytes()
            job.get_by_role("link", name=f"{run_id}-private").click()
            frame.locator("#drift").wait_for()
            assert frame.locator("#drift tbody tr").count() == len(ATTRIBUTES)
            page.screenshot(path=str(SHOTS / "scoring_job_drift.png"), full_page=True)

            # The run's "Training report" tab: figures, selection, per attribute, subgroups.
            page.goto(f"{server.url}/dags/faceattr_train/runs/{dag_run}")
            page.get_by_role("link", name="Training report").click()
            page.wait_for_url("**/plugin/faceattr-training-report")
            frame = page.frame_locator("iframe[title='Training report']")
            frame.locator("#selection").wait_for()
            assert f"{tested['mean_accuracy']:.4f}" in frame.locator(".kpis").inner_text()
            winner = frame.locator("#selection tr.winner").inner_text()
            assert winner.split()[0] == str(best["epoch"]) and f"{best['val_mean_accuracy']:.4f}" in winner
            assert frame.locator("#attributes tbody tr").count() == len(ATTRIBUTES)
            smiling = frame.locator("#attributes tbody tr", has_text="Smiling").inner_text()
            assert f"{tested['attributes']['Smiling']['accuracy']:.4f}" in smiling
            assert frame.locator("#subgroups tbody tr").count() == 4
            assert frame.locator("#chart-accuracy g.series :is(circle, rect)").count() >= 4  # 2 epochs x (train, val)
            page.screenshot(path=str(SHOTS / "training_report_tab.png"))

            assert "champion" in frame.locator("#registry-state").inner_text()
            with page.expect_download() as download:  # the link inside the (sandboxed) frame
                frame.locator(".downloads a", has_text="model.pt").click()
            assert Path(download.value.path()).read_bytes() == RunLayout(run_dir).model.read_bytes()
            # The report opens in the frame: a new window would be a blocked popup.
            with page.expect_event("framenavigated", predicate=lambda f: f.url.endswith("/report/index.html")):
                frame.locator("#report-link").click()

            # The whole Run page at once, and the grid grouped by epoch.
            page.goto(f"{server.url}/faceattr/runs/{run_id}")
            page.screenshot(path=str(SHOTS / "run_page_full.png"), full_page=True)
            page.goto(f"{server.url}/dags/faceattr_train/runs/{dag_run}")
            page.get_by_text("epoch_03").first.wait_for()
            page.screenshot(path=str(SHOTS / "grid_epoch_groups.png"))

            # While a run trains, a new epoch shows up without a reload (the page polls its live part).
            with Store.from_env() as store:
                store.sync_run_dir(run_id, run_dir, status="running")
                page.goto(f"{server.url}/faceattr/runs/{run_id}")
                page.evaluate("window.notReloaded = true")
                assert page.locator("#selection tbody tr").count() == 2
                store.upsert_epoch(run_id, 3, train_loss=0.5, train_accuracy=0.8, val_mean_accuracy=0.6543)
                page.locator("#selection tbody tr", has_text="0.6543").wait_for(timeout=20_000)
                assert page.evaluate("window.notReloaded === true")
                assert page.locator("#chart-accuracy g.series :is(circle, rect)").count() >= 6
                page.screenshot(path=str(SHOTS / "run_page_live_epoch_3.png"))
                with store.write() as conn:  # the other tests of this module read the run as it finished
                    conn.execute(delete(Epoch).where(Epoch.run_id == run_id, Epoch.epoch == 3))
                store.sync_run_dir(run_id, run_dir, status="success")
                page.wait_for_function("window.notReloaded !== true", timeout=20_000)  # finished: one reload
            with Store.from_env() as store:
                assert [e["epoch"] for e in store.run(run_id)["epochs"]] == [1, 2]

            # Without the login cookie, the plugin refuses the browser too.
            page.context.clear_cookies()
            response = page.goto(f"{server.url}/faceattr/runs/{run_id}")
            assert response.status == 401
        finally:
            browser.close()
