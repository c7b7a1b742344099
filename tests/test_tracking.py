"""--log tensorboard / wandb: every metrics row once (across a resume), the settings, the grid, the results."""

import glob
import json
import os
import shutil
import struct

import numpy as np
import pytest

from jaxdd import distillation as distill_lib
from jaxdd.errors import JaxddError


def _run(digits, tiny, out, steps, track, **kw):
    return distill_lib.distill(digits, "rat-bptt", ipc=1, steps=steps, out=out, progress=False, seed=3, track=track,
                               track_images_every=2, **{**tiny, "checkpoint_every": 3, **kw})


def _killed_after(digits, tiny, out, steps, track):
    """A run stopped after `steps` steps whose newest checkpoint is at step 3 (as after a kill)."""
    _run(digits, tiny, out, steps, track, final_eval=False)
    for folder in glob.glob(os.path.join(out, "checkpoints", "*")):
        if os.path.basename(folder).isdigit() and int(os.path.basename(folder)) > 3:
            shutil.rmtree(folder)


def read_events(folder):
    """(tag, step, value) of every scalar, and the image tags, in tensorboardX's event files (TFRecords)."""
    from tensorboardX.proto import event_pb2

    scalars, images, texts = [], [], []
    for file in sorted(glob.glob(os.path.join(folder, "events.out.tfevents.*"))):
        data = open(file, "rb").read()
        i = 0
        while i < len(data):
            (n,) = struct.unpack("<Q", data[i:i + 8])
            event = event_pb2.Event.FromString(data[i + 12:i + 12 + n])
            i += 12 + n + 4
            for v in event.summary.value:
                if v.HasField("image"):
                    images.append((v.tag, event.step))
                elif v.metadata.plugin_data.plugin_name == "text":
                    texts.append(v.tag)
                else:
                    scalars.append((v.tag, event.step, v.simple_value))
    return scalars, images, texts


def test_tensorboard_logs_every_row_once_across_a_resume(digits, tiny, tmp_path):
    pytest.importorskip("tensorboardX")
    out = str(tmp_path / "run")
    _killed_after(digits, tiny, out, 5, "tensorboard")
    result = _run(digits, tiny, out, 6, "tensorboard", resume=True)
    scalars, images, texts = read_events(os.path.join(out, "tensorboard"))
    loss = [(step, v) for tag, step, v in scalars if tag == "loss"]
    assert [s for s, _ in loss] == [1, 2, 3, 4, 5, 6]
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    np.testing.assert_allclose([v for _, v in loss], [r["loss"] for r in rows], rtol=1e-6)
    assert [s for _, s in images] == [2, 4, 5, 6]  # every 2 steps and each session's last and texts == ["settings/text_summary"]
    final = {tag: v for tag, _, v in scalars if tag.startswith("final/")}
    assert final["final/test_accuracy"] == pytest.approx(result.evaluation["accuracy_mean"], rel=1e-6)


def wandb_records(file):
    """The records of a .wandb file: a 7-byte W&B header, then LevelDB's log format (32 KiB blocks of chunks
    with a 7-byte header: crc32, length, type 1 full / 2 first / 3 middle / 4 last). wandb has no public reader."""
    data, pos, block, parts = open(file, "rb").read(), 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # the block's tail is padding
            pos += block - pos % block
            continue
        (length,), kind = struct.unpack("<H", data[pos + 4:pos + 6]), data[pos + 6]
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 0:
            break
        parts = chunk if kind in (1, 2) else parts + chunk
        if kind in (1, 4):
            yield parts


def test_wandb_offline_logs_every_row_once_across_a_resume(digits, tiny, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from wandb.proto import wandb_internal_pb2

    monkeypatch.setenv("WANDB_MODE", "offline")
    out = str(tmp_path / "run")
    _killed_after(digits, tiny, out, 5, "wandb")
    _run(digits, tiny, out, 6, "wandb", resume=True, final_eval=False)
    runs = sorted(glob.glob(os.path.join(out, "wandb", "wandb", "offline-run-*")))
    assert len(runs) == 2 and len({r.rsplit("-", 1)[1] for r in runs}) == 1  # one run id, two sessions
    steps = []
    for run in runs:
        for data in wandb_records(glob.glob(os.path.join(run, "*.wandb"))[0]):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(data)
            if record.WhichOneof("record_type") == "history":
                items = {i.key or ".".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
                if "loss" in items:
                    steps.append(items["_step"])
    assert steps == [1, 2, 3, 4, 5, 6]


def test_missing_or_unknown_backend_is_one_line(digits, tiny, tmp_path, monkeypatch):
    with pytest.raises(JaxddError, match="unknown --log"):
        _run(digits, tiny, str(tmp_path / "a"), 1, "mlflow")
    with pytest.raises(JaxddError, match="needs a run folder"):
        distill_lib.distill(digits, "rat-bptt", ipc=1, steps=1, progress=False, track="tensorboard", **tiny)
    monkeypatch.setitem(__import__("sys").modules, "tensorboardX", None)
    with pytest.raises(JaxddError, match=r"pip install 'jaxdd\[tensorboard\]'"):
        _run(digits, tiny, str(tmp_path / "b"), 1, "tensorboard")
    assert not os.path.exists(tmp_path / "b")


def test_curves_moving_average():
    from jaxdd.viz import moving_average, moving_average_span

    np.testing.assert_allclose(moving_average([1.0, 2.0, 3.0, 7.0], 2), [1.5, 2.5, 5.0])
    assert moving_average_span(100) == 5 and moving_average_span(10) == 1
