"""Decoding on faceattr's own CUDA stream (faceattr.data.jpeg.DecodeStream): the order of the waits
and records, driven on the CPU by stand-ins that log them; and on a GPU, the hazard it prevents."""
from __future__ import annotations

import io
from contextlib import contextmanager
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from faceattr.data.images import IMAGE_SIZE, MEAN, STD
from faceattr.data.jpeg import DecodeStream, JpegDecoder, RawJpegs
from faceattr.data.transforms import eval_transform


class RecordingCuda:
    """torch.cuda's Stream, Event, current_stream and stream, logging every call in order."""

    def __init__(self):
        self.log: list[tuple] = []
        self.consumer = self.Stream(name="consumer")
        self.current = self.consumer
        self.events = 0

    def Stream(self, device=None, name="decode"):  # noqa: N802 - torch.cuda's name
        cuda = self

        class Stream:
            def wait_event(self, event):
                cuda.log.append((name, "waits", event.name))

        stream = Stream()
        stream.name = name
        return stream

    def Event(self):  # noqa: N802
        cuda = self
        self.events += 1
        number = self.events

        class Event:
            name = f"event{number}"

            def record(self, stream):
                self.stream = stream.name
                cuda.log.append((stream.name, "records", self.name))

            def synchronize(self):
                cuda.log.append(("host", "waits", self.name))

        return Event()

    def current_stream(self, device=None):
        return self.current

    @contextmanager
    def stream(self, stream):
        before, self.current = self.current, stream
        self.log.append(("enter", stream.name))
        try:
            yield
        finally:
            self.current = before
            self.log.append(("leave", stream.name))


class CrossingTensor:
    def __init__(self, cuda: RecordingCuda):
        self.cuda = cuda
        self.device = SimpleNamespace(type="cuda")

    def record_stream(self, stream):
        self.cuda.log.append(("tensor", "used by", stream.name))


def test_decode_is_ordered_both_ways_against_the_consumer_stream():
    cuda = RecordingCuda()
    order = DecodeStream("cuda", cuda=cuda)

    def work():
        cuda.log.append(("work on", cuda.current.name))
        return CrossingTensor(cuda)

    for _ in range(2):
        order.run(work, crossing=lambda tensor: [tensor])
    first = [
        ("consumer", "records", "event1"),  # the consumer's work queued so far ...
        ("decode", "waits", "event1"),  # ... comes before anything the decode stream writes
        ("enter", "decode"), ("work on", "decode"), ("leave", "decode"),  # decode_jpeg allocates from our pool
        ("decode", "records", "event2"),
        ("consumer", "waits", "event2"),  # the model reads the batch only once it is decoded
        ("tensor", "used by", "consumer"),  # its memory is not reused before the model is done with it
    ]
    second = [
        ("host", "waits", "event2"),  # the previous batch's work on our stream is done before nvjpeg writes
        ("consumer", "records", "event3"), ("decode", "waits", "event3"),
        ("enter", "decode"), ("work on", "decode"), ("leave", "decode"),
        ("decode", "records", "event4"), ("consumer", "waits", "event4"), ("tensor", "used by", "consumer"),
    ]
    assert cuda.log == first + second


def _jpegs(n: int) -> list[bytes]:
    rng = np.random.default_rng(3)
    files = []
    for _ in range(n):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (218, 178, 3), dtype=np.uint8)).save(buffer, "JPEG", quality=90)
        files.append(buffer.getvalue())
    return files


def test_the_decoder_runs_decode_jpeg_on_its_stream_and_hands_the_batch_over(monkeypatch):
    """JpegDecoder with a DecodeStream (its CUDA setting), on the CPU with a recording stand-in."""
    cuda = RecordingCuda()
    files = _jpegs(3)
    raw = RawJpegs.pack([0, 1, 2], files)
    plain = JpegDecoder(torch.device("cpu"), IMAGE_SIZE, MEAN, STD, eval_transform())
    assert plain.stream is None  # on the CPU nothing needs ordering
    expected_indices, expected, _ = plain.decode(raw)

    ordered = JpegDecoder(torch.device("cpu"), IMAGE_SIZE, MEAN, STD, eval_transform(),
                          stream=DecodeStream("cuda", cuda=cuda))
    real_decode = JpegDecoder._decode
    monkeypatch.setattr(JpegDecoder, "_decode", lambda self, batch: cuda.log.append(("decode_jpeg on", cuda.current.name))
                        or real_decode(self, batch))
    indices, batch, errors = ordered.decode(raw)

    assert torch.equal(indices, expected_indices) and torch.equal(batch, expected) and errors == []
    assert ("decode_jpeg on", "decode") in cuda.log
    assert cuda.log.index(("decode", "waits", "event1")) < cuda.log.index(("decode_jpeg on", "decode"))
    assert cuda.log[-1] == ("consumer", "waits", "event2")  # a CPU batch: nothing to record_stream


# -- on a GPU: the hazard of pytorch/vision PR 9606 -------------------------------------------------
@pytest.mark.cuda
def test_device_decoded_scores_match_an_idle_decode_while_the_caller_stream_is_busy(monkeypatch):
    """Long kernels queued on the caller's stream write to memory that is then freed; decoding right
    after must not be handed that memory while those kernels still write it. faceattr's decode gives
    exactly the pixels, and the fp32 model exactly the scores, of a decode on an idle device, and
    pixels within the decoders' differences of the CPU's decode."""
    from faceattr.engine.inference import prepare_for_inference
    from faceattr.model import build_model

    device = torch.device("cuda")
    files = _jpegs(16)
    raw = RawJpegs.pack(list(range(16)), files)
    torch.manual_seed(0)
    model = prepare_for_inference(build_model("resnet18", weights="none", freeze_children=0), device)
    model.to(memory_format=torch.contiguous_format)
    # After prepare_for_inference (which turns autotuning on): the same algorithms for every call.
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)

    def scores(batch: torch.Tensor) -> torch.Tensor:  # fp32 throughout: no autocast
        with torch.inference_mode():
            return model(batch.contiguous()).float().cpu()

    idle = JpegDecoder(device, IMAGE_SIZE, MEAN, STD, eval_transform())
    torch.cuda.synchronize()
    _, reference, _ = idle.decode(raw)
    torch.cuda.synchronize()
    reference = reference.clone()
    reference_scores = scores(reference)

    decoder = JpegDecoder(device, IMAGE_SIZE, MEAN, STD, eval_transform())
    big = torch.randn(4096, 4096, device=device)
    for trial in range(30):
        scratch = [torch.empty(3, 218, 178, dtype=torch.uint8, device=device) for _ in range(16)]
        for _ in range(8):
            big = torch.tanh(big @ big)  # keeps the caller's stream busy for a while
        for tensor in scratch:
            tensor.fill_(7)  # queued behind the matmuls: writes late
        del scratch  # the blocks go back to the caller's stream's pool, the fills still pending
        _, batch, errors = decoder.decode(raw)
        assert errors == []
        assert torch.equal(batch, reference), f"trial {trial}: decoded pixels differ from an idle decode"
        assert torch.equal(scores(batch), reference_scores), f"trial {trial}: scores differ"

    # Against the CPU's (PIL) decode of the same files: nvjpeg and libjpeg differ by a grey level here
    # and there (IDCT, chroma upsampling), never by what a corrupted decode gives.
    cpu_batch = torch.stack([eval_transform()(Image.open(io.BytesIO(data)).convert("RGB")) for data in files])
    one_level = 1 / 255 / min(STD)
    assert float((reference.cpu() - cpu_batch).abs().mean()) <= 3 * one_level
