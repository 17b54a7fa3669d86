"""faceattr_train on Airflow's own distributed engine: CeleryExecutor, PostgreSQL, Redis, two workers.

One cluster (tests/integration/celery_env.py) serves both tests: api-server, scheduler, dag-processor and two
Celery workers, on the queues `default` and `gpu`, against the machine's PostgreSQL and Redis.
Two runs with the same conf are triggered over the REST API and go side by side:

1. The reference run succeeds, and its GPU-bound tasks (train, validate, test) ran from the `gpu`
   queue on a gpu worker, the rest from `default` on the default worker.
2. In the other run the gpu worker is SIGKILLed (with every process it forked) while epoch 2
   trains. The task stops heartbeating; the scheduler fails it after [scheduler]
   task_instance_heartbeat_timeout (20 s here) and, since the train tasks have a retry, queues it
   again; a replacement worker retrains epoch 2 from epoch 1's checkpoint. Epoch 2's checkpoint
   (model and optimizer) must equal the reference run's bit for bit (CPU, same seed and data,
   same worker settings), and the run store must hold exactly one row per run, epoch, model and
   attribute metric.

Data are tiny (80 synthetic images, resnet18 from scratch, 2 epochs). The wait for the retry is
the heartbeat timeout plus the train task's retry_delay (FACEATTR_GPU_RETRY_DELAY_S, 5 s here
instead of a minute). Outside CI the cluster tests skip when PostgreSQL or Redis is unreachable; under CI they fail.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from celery_env import REDIS_DB, REPO, Cluster, redis_keys, require_redis
from support import postgres_database

EPOCHS = 2
GPU_TASKS = {"cache_images", "epoch_01.train", "epoch_02.train", "epoch_01.validate", "epoch_02.validate", "test"}
CPU_TASKS = {"download", "split", "select_best", "report", "publish_model", "announce_champion", "score_private"}


def test_example_config_names_installed_database_drivers():
    """Each database URL of airflow.cfg.example loads its driver here; a plain postgresql:// means
    psycopg 3 to SQLAlchemy 2.1, which the celery extra does not install (psycopg2 it does)."""
    import configparser

    from sqlalchemy.engine import make_url

    parser = configparser.ConfigParser(interpolation=None)
    parser.read(REPO / "airflow.cfg.example")
    for section, key in (("database", "sql_alchemy_conn"), ("celery", "result_backend")):
        value = parser.get(section, key)
        try:
            make_url(value.removeprefix("db+")).get_dialect().import_dbapi()
        except ImportError as exc:
            pytest.fail(f"airflow.cfg.example [{section}] {key} = {value}: its driver is not installed ({exc}); "
                        "name an installed one, e.g. postgresql+psycopg2://")


def test_celery_executor_imports(tmp_path):
    """The Celery provider works with the installed celery (celery 5.7 removed what provider 3.26 imports)."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}, "AIRFLOW_HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", "import airflow.providers.celery.executors.celery_executor"],
                          env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, "the CeleryExecutor does not import:\n" + done.stderr[-2000:]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    require_redis()
    with postgres_database("faceattr_airflow") as airflow_db, postgres_database("faceattr_store") as store_db:
        yield from _cluster(tmp_path_factory, (airflow_db, store_db))


def _cluster(tmp_path_factory, databases: tuple[str, str]):
    from faceattr.synth.files import generate

    home = tmp_path_factory.mktemp("celery-cluster")
    source = home / "source"
    generate(source, n=80, seed=11)
    data = home / "data"
    data.mkdir()
    cluster = Cluster(home, {
        "FACEATTR_HOME": str(data),
        "FACEATTR_DATA_ROOTS": f"{data}:{source}",
        "FACEATTR_MAX_EPOCHS": str(EPOCHS),
        "FACEATTR_GPU_RETRY_DELAY_S": "5",
    }, databases)
    cluster.source, cluster.data = source, data
    try:
        cluster.create()
        cluster.start()
        cluster.login()
        cluster.wait_for("faceattr_train to be parsed",
                         lambda: cluster.request("GET", "/api/v2/dags/faceattr_train")[0] == 200, timeout=180)
        # A published model would start faceattr_score on the (unset) standing set: keep it out of the way.
        cluster.wait_for("faceattr_score to be parsed",
                         lambda: cluster.request("GET", "/api/v2/dags/faceattr_score")[0] == 200, timeout=60)
        status, body = cluster.request("PATCH", "/api/v2/dags/faceattr_score", {"is_paused": True})
        assert status == 200, (status, body)
        yield cluster
    finally:
        cluster.stop()
        cluster.destroy()


def _conf(cluster) -> dict:
    # Epoch 2 trains layer3 onwards, so it lasts long enough to be interrupted on purpose.
    return {"source": str(cluster.source), "root": str(cluster.data), "output": str(cluster.data / "runs"),
            "arch": "resnet18", "weights": "none", "freeze_children": 6, "epochs": EPOCHS, "batch_size": 16,
            "seed": 3, "device": "cpu", "num_workers": 0}


def _run_dir(cluster, run_id: str) -> Path:
    from faceattr.run.layout import sanitize_run_id

    return cluster.data / "runs" / sanitize_run_id(run_id)


def _attempt_log(cluster, run_id: str, task_id: str, attempt: int) -> Path:
    return cluster.home / "logs" / "dag_id=faceattr_train" / f"run_id={run_id}" / f"task_id={task_id}" / \
        f"attempt={attempt}.log"


@pytest.fixture(scope="module")
def runs(cluster) -> dict:
    """Two runs with the same conf, side by side: "reference" untouched, "faulty" loses its gpu worker.

    The gpu pool has one slot, so when epoch 2 of the faulty run trains it is the only GPU task
    queued or running anywhere: the kill takes nothing else with it. The faulty run is triggered
    first so its GPU tasks go first, and the reference run's overlap the wait for the retry.
    """
    faulty = cluster.trigger("faceattr_train", _conf(cluster))
    reference = cluster.trigger("faceattr_train", _conf(cluster))

    # Kill once epoch 2's training loop has started: train_epoch logs "epoch 2: N train images ..."
    # right before the first batch.
    log = _attempt_log(cluster, faulty, "epoch_02.train", 1)
    cluster.wait_for("the faulty run's epoch 2 to start training",
                     lambda: log.is_file() and "epoch 2: " in log.read_text(errors="replace"), timeout=360, every=0.2)
    cluster.kill("worker-gpu")
    killed_at = time.monotonic()
    saved_before_kill = (_run_dir(cluster, faulty) / "checkpoints" / "epoch_2.pt").exists()
    cluster.start_worker("worker-gpu-2", "gpu", concurrency=1)

    states = {run: cluster.wait_finished("faceattr_train", run, timeout=420) for run in (reference, faulty)}
    print(f"both runs finished {time.monotonic() - killed_at:.0f} s after the kill")
    for run, state in states.items():
        tis = cluster.task_instances("faceattr_train", run)
        assert state == "success", f"{run}: { {k: v['state'] for k, v in tis.items()} }\n{cluster.logs()}"
    return {"reference": reference, "faulty": faulty, "saved_before_kill": saved_before_kill}


@pytest.mark.slow
@pytest.mark.services
def test_train_dag_runs_on_celery_workers(cluster, runs):
    from faceattr.store import registry
    from faceattr.store.store import Store

    run_id = runs["reference"]
    tis = cluster.task_instances("faceattr_train", run_id)
    assert set(tis) == GPU_TASKS | CPU_TASKS
    # Both runs train the same model; whichever published first is the champion, the other does not
    # beat it. What the registry decided, not the order, says whose announce_champion ran.
    with Store(cluster.env["FACEATTR_DB_URL"]) as store:
        champion = registry.champion(store)["run_id"]
    announced = {run: cluster.task_instances("faceattr_train", run)["announce_champion"]["state"]
                 for run in (runs["reference"], runs["faulty"])}
    assert champion in {_run_dir(cluster, run).name for run in announced}
    assert announced == {run: "success" if _run_dir(cluster, run).name == champion else "skipped"
                         for run in announced}, (champion, announced)
    states = {task: ti["state"] for task, ti in tis.items()}
    assert states == {**{t: "success" for t in GPU_TASKS | CPU_TASKS}, "score_private": "skipped",
                      "announce_champion": announced[run_id]}, states
    gpu_workers = {"worker-gpu", "worker-gpu-2"}  # the second replaced the first mid-run
    for task in GPU_TASKS:
        assert tis[task]["queue"] == "gpu" and tis[task]["hostname"] in gpu_workers, (task, tis[task])
    for task in CPU_TASKS - {"score_private"}:
        assert (tis[task]["queue"], tis[task]["hostname"]) == ("default", "worker-default"), (task, tis[task])

    # And the worker that reported the hostname logged executing exactly that task instance.
    for task, ti in tis.items():
        if ti["state"] == "success":
            log = cluster.logfiles[ti["hostname"]].read_text(errors="replace")
            assert f"id=UUID('{ti['id']}'), task_id='{task}'" in log, (task, ti["hostname"])

    run_dir = _run_dir(cluster, run_id)
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("epoch_*.pt")) == ["epoch_1.pt", "epoch_2.pt"]
    assert (run_dir / "model.pt").is_file() and (run_dir / "report" / "index.html").is_file()
    # The queues lived under this cluster's own Redis key prefix (kombu's bindings of both queues).
    keys = redis_keys(REDIS_DB, cluster.redis_prefix)
    assert any(key.endswith("binding.gpu") for key in keys) and any(key.endswith("binding.default") for key in keys), keys


def _assert_identical(got, want, where: str) -> None:
    """Nested state dicts equal exactly: same keys and lists, tensors equal bit for bit."""
    import torch

    if isinstance(want, dict):
        assert got.keys() == want.keys(), f"{where}: keys {sorted(got)} vs {sorted(want)}"
        for key in want:
            _assert_identical(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want), f"{where}: {len(got)} items vs {len(want)}"
        for i, (a, b) in enumerate(zip(got, want)):
            _assert_identical(a, b, f"{where}[{i}]")
    elif isinstance(want, torch.Tensor):
        assert got.dtype == want.dtype and got.equal(want), f"{where} differs from the uninterrupted run"
    else:
        assert got == want, f"{where}: {got!r} vs {want!r}"


@pytest.mark.slow
@pytest.mark.services
def test_killed_gpu_worker_mid_epoch_is_retried_and_matches(cluster, runs):
    from faceattr.checkpoint import load_checkpoint
    from faceattr.run.layout import sanitize_run_id
    from faceattr.store.store import Store

    run_id = runs["faulty"]
    run_dir = _run_dir(cluster, run_id)
    assert not runs["saved_before_kill"], "the kill came after epoch 2 was saved: it did not interrupt the epoch"
    _, body = cluster.request("GET", f"/api/v2/dags/faceattr_train/dagRuns/{run_id}/taskInstances/epoch_02.train/tries")
    tries = {t["try_number"]: t for t in body["task_instances"]}
    assert sorted(tries) == [1, 2], body
    assert tries[1]["hostname"] == "worker-gpu" and tries[1]["state"] == "failed", tries[1]
    assert tries[2]["hostname"] == "worker-gpu-2" and tries[2]["state"] == "success", tries[2]

    # Epoch 2 restarted from epoch 1's checkpoint; whatever the kill left is a .tmp file no one reads.
    checkpoints = run_dir / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("epoch_*.pt")) == ["epoch_1.pt", "epoch_2.pt"]
    for epoch in (1, 2):
        assert load_checkpoint(checkpoints / f"epoch_{epoch}.pt")["epoch"] == epoch

    # The retried epoch equals the uninterrupted run's, exactly (CPU training here is deterministic):
    # its own checkpoint, since model.pt holds whichever epoch was best.
    got = load_checkpoint(checkpoints / "epoch_2.pt")
    want = load_checkpoint(_run_dir(cluster, runs["reference"]) / "checkpoints" / "epoch_2.pt")
    for part in ("model", "optimizer"):
        _assert_identical(got[part], want[part], f"epoch_2.pt {part}")

    # No duplicate rows: one run row, one per epoch, one model, 40 metrics per scored split/epoch.
    with Store(cluster.env["FACEATTR_DB_URL"]) as store:
        recorded = store.run(sanitize_run_id(run_id))
        assert recorded["status"] == "success"
        assert [e["epoch"] for e in recorded["epochs"]] == [1, 2]
        assert len(recorded["models"]) == 1
        assert store.count("runs") == 2
        assert store.count("epochs") == EPOCHS * 2
        assert store.count("models") == 2
        scored = EPOCHS + 1  # validation of each epoch, test of the best one
        assert store.count("attribute_metrics") == 40 * scored * 2
