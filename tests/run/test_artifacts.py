"""Run folders through an object store: faceattr.run.artifacts against moto's S3 server on loopback."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from faceattr.run import artifacts
from faceattr.run.artifacts import ArtifactError, pull, push

BUCKET = "faceattr-artifacts"


@pytest.fixture(scope="module")
def s3_server():
    """moto's S3 on 127.0.0.1, reached the way a deployment reaches S3: AWS_* variables and an s3:// URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
                                             "AWS_ENDPOINT_URL")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
                      AWS_ENDPOINT_URL=f"http://{host}:{port}")
    import boto3

    boto3.client("s3").create_bucket(Bucket=BUCKET)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def url(s3_server, request) -> str:
    """A fresh prefix per test, so tests do not see each other's runs."""
    return f"s3://{BUCKET}/{request.node.name}"


def _objects(prefix: str) -> dict[str, bytes]:
    import boto3

    s3 = boto3.client("s3")
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    return {o["Key"][len(prefix):]: s3.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read() for o in listed}


def _make_run(parent: Path, name: str = "manual__run-1") -> Path:
    run = parent / name
    (run / "checkpoints").mkdir(parents=True)
    (run / "metrics").mkdir()
    (run / "cache").mkdir()
    (run / "config.json").write_text('{"seed": 0}\n')
    (run / "checkpoints" / "epoch_1.pt").write_bytes(os.urandom(300_000))
    (run / "metrics" / "train_epoch_1.json").write_text('{"epoch": 1}\n')
    (run / "checkpoints" / ".epoch_2.pt.tmp-abc").write_bytes(b"half a checkpoint")  # a write in progress
    (run / "cache" / "images.npy").write_bytes(b"local only")
    return run


def test_without_a_url_push_and_pull_do_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv(artifacts.ENV, raising=False)
    run = _make_run(tmp_path)
    assert push(run) == {"url": None, "uploaded": 0, "unchanged": 0, "bytes": 0}
    assert pull(tmp_path / "elsewhere" / run.name) == {"url": None, "downloaded": 0, "unchanged": 0}
    assert not (tmp_path / "elsewhere").exists()


def test_push_then_pull_on_another_machine(tmp_path, url):
    run = _make_run(tmp_path / "worker-a")
    pushed = push(run, url)
    assert (pushed["uploaded"], pushed["unchanged"]) == (3, 0)
    assert pushed["url"] == f"{url}/{run.name}"

    stored = _objects(f"{url.removeprefix(f's3://{BUCKET}/')}/{run.name}/")
    assert sorted(stored) == sorted(
        [f"files/{p}" for p in ("config.json", "checkpoints/epoch_1.pt", "metrics/train_epoch_1.json")]
        + [f"manifest/{p}.json" for p in ("config.json", "checkpoints/epoch_1.pt", "metrics/train_epoch_1.json")]
    ), "temporary files, the local cache and upload temp keys must not be in the store"
    entry = json.loads(stored["manifest/checkpoints/epoch_1.pt.json"])
    data = (run / "checkpoints" / "epoch_1.pt").read_bytes()
    assert entry == {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}

    # Nothing changed: nothing is sent again.
    assert push(run, url)["uploaded"] == 0

    other = tmp_path / "worker-b" / run.name
    got = pull(other, url)
    assert (got["downloaded"], got["unchanged"]) == (3, 0)
    for relative in ("config.json", "checkpoints/epoch_1.pt", "metrics/train_epoch_1.json"):
        assert (other / relative).read_bytes() == (run / relative).read_bytes()
    assert not (other / "cache").exists()
    assert sorted(p.name for p in (other / "checkpoints").iterdir()) == ["epoch_1.pt"]  # no temp files left
    assert pull(other, url)["downloaded"] == 0


def test_only_changed_files_move(tmp_path, url):
    run = _make_run(tmp_path / "a")
    push(run, url)
    other = tmp_path / "b" / run.name
    pull(other, url)

    (run / "metrics" / "train_epoch_1.json").write_text('{"epoch": 1, "loss": 0.5}\n')
    (run / "checkpoints" / "epoch_2.pt").write_bytes(b"epoch two")
    pushed = push(run, url)
    assert (pushed["uploaded"], pushed["unchanged"]) == (2, 2)
    assert pushed["bytes"] == len(b"epoch two") + len('{"epoch": 1, "loss": 0.5}\n')
    pulled = pull(other, url)
    assert (pulled["downloaded"], pulled["unchanged"]) == (2, 2)
    assert (other / "metrics" / "train_epoch_1.json").read_text() == '{"epoch": 1, "loss": 0.5}\n'


def _put_remote_file(url: str, run: Path, relative: str, body: bytes) -> None:
    """Write a run file's bytes in the bucket behind faceattr's back (no manifest entry)."""
    import boto3

    prefix = f"{url.removeprefix(f's3://{BUCKET}/')}/{run.name}"
    boto3.client("s3").put_object(Bucket=BUCKET, Key=f"{prefix}/files/{relative}", Body=body)


def test_a_file_without_its_manifest_entry_is_not_read(tmp_path, url):
    """An upload whose entry is not written yet (or was cut short) is invisible to readers."""
    run = _make_run(tmp_path / "a")
    push(run, url)
    _put_remote_file(url, run, "checkpoints/epoch_2.pt", b"partial")
    other = tmp_path / "b" / run.name
    pull(other, url)
    assert not (other / "checkpoints" / "epoch_2.pt").exists()


def test_bytes_that_do_not_match_the_manifest_are_refused(tmp_path, url):
    run = _make_run(tmp_path / "a")
    push(run, url)
    _put_remote_file(url, run, "config.json", b"corrupted")
    other = tmp_path / "b" / run.name
    with pytest.raises(ArtifactError, match=r"files/config.json: sha256 .* does not match"):
        pull(other, url)
    assert not (other / "config.json").exists()
    assert not [p for p in other.rglob("*") if p.is_file() and p.name.startswith(".")], "temp file left behind"


def test_a_broken_manifest_entry_names_its_key(tmp_path, url):
    import boto3

    run = _make_run(tmp_path / "a")
    push(run, url)
    prefix = f"{url.removeprefix(f's3://{BUCKET}/')}/{run.name}"
    boto3.client("s3").put_object(Bucket=BUCKET, Key=f"{prefix}/manifest/config.json.json", Body=b"{not json")
    with pytest.raises(ArtifactError, match=r"manifest/config.json.json: not a manifest entry"):
        pull(tmp_path / "b" / run.name, url)


def test_url_must_be_a_url(tmp_path):
    run = _make_run(tmp_path)
    with pytest.raises(ArtifactError, match="FACEATTR_ARTIFACTS"):
        push(run, "/not/a/url")


def test_push_of_a_missing_run_folder_is_an_error(tmp_path, url):
    with pytest.raises(FileNotFoundError, match="no run folder"):
        push(tmp_path / "missing", url)


@pytest.fixture(scope="module")
def small_root(synthetic_root):
    """60 synthetic images: enough for a split and one short CPU epoch."""
    return synthetic_root(60, 2)


def test_pipeline_stages_on_machines_without_a_shared_disk(tmp_path, url, small_root, monkeypatch):
    """The orchestrate task bodies pull before and push after each stage: a run goes through with the
    run folder wiped between stages, as when every task lands on a different worker."""
    import torch

    from faceattr.orchestration import tasks as orchestrate

    output = tmp_path / "runs"
    monkeypatch.setenv(artifacts.ENV, url)
    monkeypatch.setenv("FACEATTR_DATA_ROOTS", f"{tmp_path}:{small_root}")
    monkeypatch.setenv("FACEATTR_DB_URL", f"sqlite:///{tmp_path / 'store.db'}")
    params = {**orchestrate.RunConfig().to_dict(), "root": str(small_root), "output": str(output), "arch": "resnet18",
              "weights": "none", "freeze_children": 9, "epochs": 1, "batch_size": 16, "device": "cpu",
              "num_workers": 0, "source": None, "private_images": None}
    run_id = "manual__artifacts"
    run_dir = output / run_id

    def new_machine():
        shutil.rmtree(run_dir, ignore_errors=True)

    orchestrate.split(params, run_id)
    new_machine()
    orchestrate.train(params, run_id, 1)
    new_machine()
    val = orchestrate.validate(params, run_id, 1)
    assert val["images"] > 0
    new_machine()
    best = orchestrate.select(params, run_id)
    assert best["epoch"] == 1
    new_machine()
    tested = orchestrate.test(params, run_id)
    assert tested["images"] > 0
    new_machine()
    orchestrate.report(params, run_id)
    new_machine()
    assert orchestrate.publish(params, run_id)["epoch"] == 1
    new_machine()
    pull(run_dir)
    for relative in ("config.json", "split.csv", "checkpoints/epoch_1.pt", "metrics/train_epoch_1.json",
                     "metrics/val_epoch_1.json", "metrics/test_epoch_1.json", "best.json", "model.pt",
                     "report/index.html"):
        assert (run_dir / relative).is_file(), relative


@pytest.mark.parametrize("relative", ["../escaped.txt", "metrics/../../escaped.txt", "/tmp/escaped.txt",
                                      "link/escaped.txt"])
def test_pull_never_writes_outside_the_run_folder(tmp_path, relative):
    """The manifest keys come from the bucket: a hostile key must not choose where the UI server writes."""
    import fsspec

    url = f"memory://{tmp_path.name}"
    fs = fsspec.filesystem("memory")
    data = b"planted"
    entry = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    base = f"/{tmp_path.name}/manual__run-1"
    fs.pipe_file(f"{base}/files/{relative}", data)
    fs.pipe_file(f"{base}/manifest/{relative}.json", json.dumps(entry).encode())
    run = tmp_path / "b" / "manual__run-1"
    run.mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (run / "link").symlink_to(outside)  # a subfolder that leads elsewhere is not followed out either
    with pytest.raises(ArtifactError, match="refusing to pull it"):
        pull(run, url)
    assert not [p for p in tmp_path.rglob("escaped.txt")], "a file was written outside the run folder"
    assert not Path("/tmp/escaped.txt").exists()
