"""Experiment tracking for `jaxdd distill --log tensorboard|wandb` (optional extras, docs/runs.md "Watch a run").

A `Tracker` gets every metrics row the driver appends to metrics.jsonl (the same numbers, by outer
step), the run's settings once, an image grid every `images_every` steps and at the last step, and the
final evaluation's accuracies. TensorBoard event files go to DIR/tensorboard/ (tensorboardX, no
TensorFlow); Weights & Biases runs to DIR/wandb/ (offline unless WANDB_MODE says otherwise; upload with
`wandb sync`). Each backend keeps the last step it logged in DIR/<backend>/jaxdd-tracking.json: a
resumed run, which recomputes the steps after its checkpoint bit-identically, logs only the steps after
that one, so every step is in the logs once; a run that starts from step 0 starts its logs afresh.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid

from jaxdd.errors import JaxddError, require
from jaxdd.viz import grid_pixels

KINDS = ("tensorboard", "wandb")
MARK = "jaxdd-tracking.json"


class _TensorBoard:
    def __init__(self, folder: str, mark: dict):
        try:
            from tensorboardX import SummaryWriter  # optional: the tensorboard extra
        except ImportError:
            raise JaxddError("--log tensorboard needs tensorboardX: pip install 'jaxdd[tensorboard]'") from None
        self.writer = SummaryWriter(logdir=folder, flush_secs=30)

    def settings(self, record: dict) -> None:
        self.writer.add_text("settings", "```\n" + json.dumps(record, indent=1) + "\n```", 0)

    def scalars(self, values: dict, step: int) -> None:
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)

    def image(self, pixels, step: int) -> None:
        self.writer.add_image("grid", pixels, step, dataformats="HWC")

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class _Wandb:
    def __init__(self, folder: str, mark: dict):
        try:
            import wandb  # optional: the wandb extra
        except ImportError:
            raise JaxddError("--log wandb needs wandb: pip install 'jaxdd[wandb]'") from None
        self.wandb = wandb
        mark.setdefault("wandb_id", uuid.uuid4().hex[:8])  # kept for a resume
        self.run = wandb.init(dir=folder, id=mark["wandb_id"], resume="allow", project="jaxdd",
                              mode=os.environ.get("WANDB_MODE", "offline"),
                              settings=wandb.Settings(silent=True, console="off"))

    def settings(self, record: dict) -> None:
        self.run.config.update(record, allow_val_change=True)

    def scalars(self, values: dict, step: int) -> None:
        self.run.log(values, step=step)

    def image(self, pixels, step: int) -> None:
        self.run.log({"grid": self.wandb.Image(pixels)}, step=step)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.run.finish()


class Tracker:
    """One backend: log(row, arrays) per outer step, results(values, step) at the end, close()."""

    def __init__(self, kind: str, out: str, record: dict, *, start: int, steps: int, images_every: int | None,
                 class_names, preprocessing):
        self.folder = os.path.join(out, kind)
        if start == 0:
            shutil.rmtree(self.folder, ignore_errors=True)
        os.makedirs(self.folder, exist_ok=True)
        self.mark = _read_mark(self.folder)
        self.logged = int(self.mark.get("logged_step", 0)) if start else 0
        self.backend = (_TensorBoard if kind == "tensorboard" else _Wandb)(self.folder, self.mark)
        _write_mark(self.folder, self.mark)  # the W&B run id, for a resume
        self.steps, self.every = steps, images_every or max(1, steps // 10)
        self.class_names, self.preprocessing, self.title = class_names, preprocessing, \
            f"{record.get('method')} IPC {record.get('ipc')} on {record.get('dataset')}"
        if start == 0:
            self.backend.settings(record)

    def log(self, row: dict, arrays) -> None:
        """The metrics row of one step (skipped if logged before a resume); `arrays()`: the set, for the grid."""
        step = int(row["step"])
        if step <= self.logged:
            return
        self.backend.scalars({k: v for k, v in row.items() if k != "step"}, step)
        if step % self.every == 0 or step == self.steps:
            a = arrays()
            self.backend.image(grid_pixels(a["images"], a["labels"], self.class_names,
                                           preprocessing=self.preprocessing, title=f"{self.title}, step {step}"), step)
        self.backend.flush()
        self.logged = step
        self.mark["logged_step"] = step
        _write_mark(self.folder, self.mark)

    def results(self, values: dict, step: int) -> None:
        """The final evaluation's numbers (test accuracy of the set and of random real images)."""
        self.backend.scalars({f"final/{k}": v for k, v in values.items()}, step)
        self.backend.flush()

    def close(self) -> None:
        self.backend.close()


def check(kinds, out) -> list[str]:
    """The kinds asked for, checked before a run writes anything: known, with a run folder, installed."""
    kinds = list(dict.fromkeys([kinds] if isinstance(kinds, str) else list(kinds or ())))
    for kind in kinds:
        require(kind in KINDS, f"unknown --log {kind!r}: use {' or '.join(KINDS)}")
        module = {"tensorboard": "tensorboardX", "wandb": "wandb"}[kind]
        try:
            __import__(module)  # optional extras: only their presence is checked here
        except ImportError:
            raise JaxddError(f"--log {kind} needs {module}: pip install 'jaxdd[{kind}]'") from None
    require(not kinds or out is not None, "--log needs a run folder (--out): the logs are written there")
    return kinds


def open_trackers(kinds, out, record: dict, *, start: int, steps: int, images_every: int | None, class_names,
                  preprocessing) -> list[Tracker]:
    """A Tracker per kind in `kinds` (see `check`)."""
    return [Tracker(k, out, record, start=start, steps=steps, images_every=images_every, class_names=class_names,
                    preprocessing=preprocessing) for k in check(kinds, out)]


def _read_mark(folder: str) -> dict:
    try:
        with open(os.path.join(folder, MARK)) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return {}


def _write_mark(folder: str, mark: dict) -> None:
    tmp = os.path.join(folder, MARK + ".tmp")
    with open(tmp, "w") as f:
        json.dump(mark, f)
    os.replace(tmp, os.path.join(folder, MARK))
