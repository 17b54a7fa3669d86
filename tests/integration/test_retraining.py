"""Scheduled retraining on data that changes, through the library (no Airflow): three weeks of data,
three runs, the publish gate comparing each new run with the champion on the images the champion
never saw, and a week-1 run that keeps reading week-1 files after week 3's download.
test_retraining_dags.py tells the same story through the DAGs."""
from __future__ import annotations

import pytest

from faceattr.data import versions
from faceattr.data.download import acquire
from faceattr.data.loaders import load_split_frame
from faceattr.engine.evaluate import evaluate_epoch
from faceattr.engine.rescore import mean_accuracy_on
from faceattr.pipeline import fit
from faceattr.run.config import RunConfig
from faceattr.store import registry
from faceattr.store.gate import SHARED_RULE
from faceattr.store.store import Store
from weekly_data import GATE_MIN_IMAGES, TRAINING, WEEK1, WEEK2_ADDED, WEEK3_ADDED, weekly_sources

pytestmark = pytest.mark.slow


def test_three_weeks_of_data_through_the_library(tmp_path, capsys):
    weeks = weekly_sources(tmp_path / "sources")
    root, runs = tmp_path / "root", tmp_path / "runs"
    found: dict = {}
    with Store(f"sqlite:///{tmp_path / 'store.db'}") as store:
        for week in (1, 2, 3):
            downloaded = acquire(str(weeks[week]), root)
            assert downloaded["status"] == "downloaded"
            run_dir = runs / f"week{week}"
            fit(RunConfig(root=str(root), **TRAINING), run_dir)
            found[week] = {"version": downloaded["version"], "changes": downloaded["changes"],
                           "run_version": versions.run_version(run_dir),
                           "published": registry.publish(store, run_dir, actor="test", rescore=mean_accuracy_on,
                                                         min_images=GATE_MIN_IMAGES)}
        champion = registry.resolve(store, "champion")
    with capsys.disabled():  # the measured story, for the record
        for week, seen in found.items():
            published = seen["published"]
            print(f"\nweek {week}: version {seen['version']} {seen['changes']}: {published['state']}: "
                  f"{published['reason']} {published['comparison']}")

    assert [found[week]["run_version"] for week in (1, 2, 3)] == [found[week]["version"] for week in (1, 2, 3)]
    assert (found[2]["changes"]["images_added"], found[3]["changes"]["images_added"]) == (WEEK2_ADDED, WEEK3_ADDED)
    first, second, third = (found[week]["published"] for week in (1, 2, 3))
    assert (first["state"], first["reason"]) == ("champion", "first published model")

    # Week 2: new data, another evaluation set: both models scored on week 2's test images week 1 never saw.
    compared = second["comparison"]
    assert compared["rule"] == SHARED_RULE and compared["images"] >= GATE_MIN_IMAGES
    assert second["promoted"] and compared["challenger"] > compared["champion"], second["reason"]
    assert second["reason"].startswith(f"beats run week1: mean accuracy on {compared['images']} shared test images")

    # Week 3: trained on a batch of flipped labels: measurably worse on the images the champion never saw.
    compared = third["comparison"]
    assert third["state"] == "challenger" and compared["rule"] == SHARED_RULE
    assert compared["champion"] - compared["challenger"] > 0.05, third["reason"]
    assert f"does not beat champion run week2: mean accuracy on {compared['images']} shared test images" \
        in third["reason"]
    assert champion["run_id"] == "week2"

    # Week 1's run, resumed after week 3's download, reads week 1's files.
    week1 = runs / "week1"
    frame = load_split_frame(week1, root=root)
    assert len(frame) == WEEK1 and versions.run_dataset_dir(week1, root) == versions.version_dir(root, found[1]["version"])
    before = first["test_mean_accuracy"]
    assert evaluate_epoch(week1, "best", "test", device="cpu")["mean_accuracy"] == pytest.approx(before, abs=1e-9)
