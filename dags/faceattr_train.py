"""
### faceattr_train

Trains, selects and publishes the 40-attribute CelebA classifier (ResNeXt50 32x4d, MSE on ±1
labels, Adamax, as in the write-up):

download → split → cache_images → epoch_01 (train → validate) → epoch_02 → … → select_best → test →
report → publish_model → score_private (and publish_model → announce_champion)

* One task group per epoch, `epoch_01` … up to `FACEATTR_MAX_EPOCHS` (set when the file is
  parsed), each holding its `train` and `validate` tasks. Each `validate` also decides whether
  the next epoch trains: a run's `epochs` below the slots, or early stopping (`patience`), ends
  training there, and Airflow marks every remaining group **skipped** without starting a
  process for it; the reason is the last line of that `validate` task's log. The run goes on
  to selection.
* GPU tasks take turns: training, validation, test and scoring run in the `gpu` pool
  (`FACEATTR_GPU_POOL`, one slot) on the queue `FACEATTR_GPU_QUEUE`. Epoch K+1 trains after
  epoch K is validated, so early stopping and the curves see every epoch as soon as it ends, and
  the DAG stops at the same epoch as `faceattr fit`.
* Clearing a task redoes only its own outputs; a failed `train` or `validate` is retried once,
  after `FACEATTR_GPU_RETRY_DELAY_S` (60 s), and a retried epoch restarts from the previous
  epoch's checkpoint.
* The run folder is `<output>/<run id>`; `publish_model` records the run in the store
  (`FACEATTR_DB_URL`) and its model in the registry, as champion only if it beats the champion
  (`faceattr models` lists them, and why); `announce_champion` emits the `faceattr/model` asset
  event on a promotion only.
* Paths in the form must lie under `FACEATTR_DATA_ROOTS`.
* Schedule: `FACEATTR_TRAIN_SCHEDULE` (e.g. `@weekly`), and with `FACEATTR_TRAIN_ON_DATA=1` also the
  `faceattr/data` asset (a new data version from faceattr_data): either one starts a run.
* A run reads the data version it was split from (RUN/data_version.json), whatever is downloaded
  later. When the champion was tested on other data, `publish_model` scores both models on this
  run's test images the champion never trained or validated on (at least `gate_min_images`).

All logic is in `faceattr.orchestration` (params: the form; tasks: the task bodies; scoring);
this file is the table of contents.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from airflow.sdk import DAG, Asset, AssetOrTimeSchedule, CronTriggerTimetable, Param, TaskGroup, TriggerRule, task

from faceattr import settings
from faceattr.orchestration import params as forms, scoring, tasks as orchestrate

MAX_EPOCHS = settings.max_epochs()
GPU = {"pool": settings.gpu_pool(), "queue": settings.gpu_queue()}
GPU_RETRY = {"retries": 1, "retry_delay": timedelta(seconds=settings.gpu_retry_delay_s())}
MODEL_ASSET = Asset(orchestrate.MODEL_ASSET_NAME)
EPOCH_GROUPS = orchestrate.epoch_group_ids(MAX_EPOCHS)
DATA_ASSET = Asset(orchestrate.DATA_ASSET_NAME)


def train_schedule():
    """FACEATTR_TRAIN_SCHEDULE's times; with FACEATTR_TRAIN_ON_DATA, also each new data version."""
    times = settings.train_schedule()
    if not settings.train_on_data():
        return times
    if times is None:
        return [DATA_ASSET]
    return AssetOrTimeSchedule(timetable=CronTriggerTimetable(times, timezone="UTC"), assets=[DATA_ASSET])


@task(
    retries=3, retry_delay=timedelta(seconds=30), retry_exponential_backoff=2.0, max_retry_delay=timedelta(minutes=10),
    doc_md="Checks the run's settings (unknown conf keys, paths under FACEATTR_DATA_ROOTS), then fetches and "
           "verifies CelebA into the root; up to date data is left alone. Retries with exponential backoff.",
)
def download(params=None, dag_run=None):
    return orchestrate.download(params, dag_run.conf)


@task(doc_md="Creates the run folder `<output>/<run id>` with config.json and split.csv (80/10/10 by default), "
             "and records the run in the store.")
def split(params=None, run_id=None):
    return orchestrate.split(params, run_id)


@task(queue=GPU["queue"], doc_md="Decodes the split's images once into RUN/cache/ (uint8, memory-mapped) when "
                                 "training reads the fast path (`data_path` cache, or auto on a GPU); otherwise a no-op.")
def cache_images(params=None, run_id=None):
    return orchestrate.cache_images(params, run_id)


@task(**GPU, **GPU_RETRY)
def train_epoch(epoch: int, params=None, run_id=None):
    return orchestrate.train(params, run_id, epoch)


# A branch: it follows select_best always, and the next epoch's train only if the run goes on. An
# epoch not followed is skipped with every later one by Airflow itself (all_success), unstarted.
@task.branch(**GPU, **GPU_RETRY)
def validate_epoch(epoch: int, params=None, run_id=None):
    orchestrate.validate(params, run_id, epoch)  # its figures are in the log and the store; a branch returns task ids
    return orchestrate.after_validation(params, run_id, epoch, EPOCH_GROUPS, "select_best")


@task(
    trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS,
    doc_md="Picks the best validated epoch by faceattr.run.selection's rule (its log line states it: mean "
           "accuracy, or the tuned one with tune_thresholds; ties: the earlier); writes best.json and the "
           "inference artifact model.pt. Runs when the remaining epochs were skipped.",
)
def select_best(params=None, run_id=None):
    return orchestrate.select(params, run_id)


@task(**GPU, doc_md="Scores the chosen model on the test split (per-attribute accuracy, balanced accuracy, F1 "
                    "and the majority baseline).")
def test(params=None, run_id=None):
    return orchestrate.test(params, run_id)


@task(doc_md="Writes RUN/report/: accuracy per epoch and per-attribute test accuracy plots, the table CSV and an "
             "HTML page; their paths are in the log and the XCom.")
def report(params=None, run_id=None):
    return orchestrate.report(params, run_id)


@task(doc_md="Checks model.pt is this run's tested model, records the run in the store's model registry and lets it "
             "through the gate: it becomes the champion if it is the first model, beats the champion's test accuracy "
             "on the same evaluation set, or, on other data, beats the champion on this run's test images the "
             "champion never saw (params `promote_min_gain`, `gate_min_images`), or the run has `promote: force`; "
             "otherwise it stays a challenger, with the reason and what was compared.")
def publish_model(params=None, run_id=None):
    return orchestrate.publish(params, run_id)


@task(outlets=[MODEL_ASSET], doc_md="Emits the `faceattr/model` asset event (run, epoch, val and test accuracy, the "
                                    "previous champion) when publish_model made the run the champion; skipped "
                                    "otherwise, so scheduled scoring follows the champion only.")
def announce_champion(published: dict, outlet_events=None):
    outlet_events[MODEL_ASSET].extra.update(orchestrate.champion_event(published))


@task(**GPU, doc_md="Predicts the private images (param `private_images`) into RUN/private_predictions.csv; "
                    "skipped when none are given.")
def score_private(params=None, run_id=None):
    return scoring.score_private(params, run_id)


def _record_failure(context):
    orchestrate.record_failure(context["dag_run"].run_id, str(context.get("reason", "")))


with DAG(
    dag_id="faceattr_train",
    description="Train, select and publish the CelebA 40-attribute classifier",
    schedule=train_schedule(),
    start_date=datetime(2024, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    params={name: Param(**spec) for name, spec in forms.train_params().items()},
    doc_md=__doc__,
    tags=["faceattr"],
    on_failure_callback=_record_failure,
):
    epochs = []
    for epoch, group_id in enumerate(EPOCH_GROUPS, start=1):
        with TaskGroup(group_id, tooltip=f"Epoch {epoch}: train, then validate") as group:
            train_epoch.override(
                task_id="train",
                doc_md=f"Trains epoch {epoch} from epoch {epoch - 1}'s checkpoint and writes "
                       f"checkpoints/epoch_{epoch}.pt. Skipped, unstarted, past the run's `epochs` or on early "
                       "stopping: the last validate task that ran says why in its log.",
            )(epoch) >> validate_epoch.override(
                task_id="validate",
                doc_md=f"Scores epoch {epoch}'s checkpoint on the validation split (metrics/val_epoch_{epoch}.json), "
                       "then decides whether the next epoch trains (select_best always follows).",
            )(epoch)
        epochs.append(group)

    download() >> split() >> cache_images() >> epochs[0]
    for previous, following in zip(epochs, epochs[1:]):
        previous >> following  # epoch K+1 trains once epoch K is validated: early stopping reads it
    published = publish_model()
    epochs >> select_best() >> test() >> report() >> published >> score_private()
    announce_champion(published)
