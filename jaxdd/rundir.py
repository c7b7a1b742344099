"""The run directory: the one module that writes and reads a run's files.

    DIR/settings.json     what the run was made with (method, ipc, seed, data set, steps, settings)
    DIR/metrics.jsonl     one JSON row per outer step (and evaluation numbers where there were any)
    DIR/distilled.npz     images, labels, row_block, lr (where learned), settings JSON, class names
    DIR/grid.png          the images, un-whitened, one row per class
    DIR/curves.png        loss, accuracy, window placement and validation accuracy against meta-steps
    DIR/report.json       a method's extra results (Boost-DD: every prefix's accuracy; report.png plots it)
    DIR/best.npz          with --stop plateau: the set of the best validation evaluation so far, its step
    DIR/checkpoints/      Orbax checkpoints of the whole state (jaxdd/checkpoint.py)
"""

from __future__ import annotations

import contextlib
import json
import os
import zipfile

import numpy as np

from jaxdd.errors import JaxddError, require
from jaxdd.viz import accuracy_by_size, image_grid, learning_curve

SETTINGS, METRICS, DISTILLED, GRID, CURVES = "settings.json", "metrics.jsonl", "distilled.npz", "grid.png", "curves.png"
REPORT, REPORT_PLOT, CHECKPOINTS, BEST = "report.json", "report.png", "checkpoints", "best.npz"
RESULTS = (DISTILLED, GRID, CURVES, REPORT, REPORT_PLOT, METRICS, SETTINGS, BEST)
CURVE_KEYS = ("loss", "accuracy", "prefix", "window", "at_stage", "syn_lr", "val_accuracy")


def path(out: str, name: str) -> str:
    return os.path.join(out, name)


def check_writable(out: str, flag: str = "--out") -> None:
    """One-line errors for an --out that cannot be a run folder (a file, under a file, not writable);
    writability is tried by creating and removing a temporary folder in the nearest existing one."""
    import tempfile

    probe = os.path.abspath(out)
    while probe and not os.path.exists(probe):
        probe = os.path.dirname(probe)
    require(os.path.isdir(probe), f"{flag} {out}: {probe} is a file, not a folder: choose another {flag}")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".jaxdd-probe-", dir=probe))
    except OSError as err:
        raise JaxddError(f"{flag} {out}: cannot write in {probe} ({err.strerror or type(err).__name__}): choose "
                         f"another {flag}") from None


def check_output_file(file: str, overwrite: bool, flag: str = "--out") -> None:
    """One-line errors, before any work, for an output file that cannot be written (a folder, under a file,
    not writable) or that exists already without `overwrite` (a command replaces only what it is told to)."""
    require(not os.path.isdir(file), f"{flag} {file} is a folder: give a file name, e.g. {os.path.join(file, 'out.npz')}")
    require(overwrite or not os.path.lexists(file), f"{flag} {file} already exists: pass --overwrite to replace it, "
                                                    f"or choose another file")
    check_writable(os.path.dirname(os.path.abspath(file)), flag)


def make(out: str) -> None:
    """Create the run folder (and its parents), with a one-line error if that fails."""
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as err:
        raise JaxddError(f"--out {out}: cannot create the folder ({err.strerror or type(err).__name__}): choose "
                         f"another --out") from None


def holds_results(out: str) -> list[str]:
    """The result files already in `out`."""
    return [name for name in RESULTS if os.path.exists(path(out, name))]


def read_settings(out: str) -> dict | None:
    file = path(out, SETTINGS)
    if not os.path.exists(file):
        return None
    try:
        with open(file) as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise JaxddError(f"{file} is damaged (not JSON): restore it or start a new run with another --out") from None


def write_settings(out: str, record: dict) -> None:
    _atomic_write(path(out, SETTINGS), json.dumps(record, indent=1))


def read_metrics(out: str, upto: int) -> list[dict]:
    """The metrics rows of steps <= upto; a torn last line (a kill mid-write) is dropped."""
    file = path(out, METRICS)
    if not os.path.exists(file):
        return []
    rows = []
    with open(file) as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return [r for r in rows if r.get("step", 0) <= upto]


def lost_steps(rows: list[dict], upto: int) -> str:
    """The steps 1..upto without a metrics row, as ranges ('3, 7-9'; '' when none is missing): a checkpoint
    holds the state, not the rows, so what a damaged metrics.jsonl lost can only be reported."""
    missing = sorted(set(range(1, upto + 1)) - {r.get("step") for r in rows})
    spans = []
    for n in missing:
        if spans and spans[-1][1] == n - 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def write_metrics(out: str, rows: list[dict]) -> None:
    _atomic_write(path(out, METRICS), "".join(json.dumps(r) + "\n" for r in rows))


def append_metrics(out: str, row: dict) -> None:
    with _naming(path(out, METRICS)), open(path(out, METRICS), "a") as f:
        f.write(json.dumps(row) + "\n")


@contextlib.contextmanager
def _naming(file: str):
    """An OSError while writing `file` names it (a full disk says which file it was writing)."""
    try:
        yield
    except OSError as err:
        if err.filename:
            raise
        raise OSError(err.errno, err.strerror or str(err), file) from None


def write_distilled(out: str, arrays: dict, record: dict, class_names, preprocessing=None) -> None:
    """DIR/distilled.npz (arrays + the record as JSON + class names) and DIR/grid.png."""
    payload = dict(arrays, settings=json.dumps(record), class_names=np.asarray(class_names))
    tmp = path(out, DISTILLED + ".tmp.npz")
    try:
        with _naming(path(out, DISTILLED)):
            np.savez(tmp, **payload)
    except OSError:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    os.replace(tmp, path(out, DISTILLED))
    with _naming(path(out, GRID)):
        image_grid(arrays["images"], arrays["labels"], class_names, path(out, GRID), preprocessing=preprocessing,
                   title=f"{record.get('method')} IPC {record.get('ipc')} on {record.get('dataset')}")


def write_best(out: str, step: int, value: float, arrays: dict) -> None:
    """DIR/best.npz: the set of the best validation evaluation so far (step, its validation accuracy)."""
    tmp = path(out, BEST + ".tmp.npz")
    np.savez(tmp, **arrays, best_step=np.int64(step), best_value=np.float64(value))
    os.replace(tmp, path(out, BEST))


def read_best(out: str) -> tuple[int, float, dict] | None:
    """(step, value, arrays) of DIR/best.npz, or None when there is none (or it cannot be read)."""
    try:
        with np.load(path(out, BEST), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        return int(arrays.pop("best_step")), float(arrays.pop("best_value")), arrays
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, EOFError):
        return None


def recorded_scores(out: str, images) -> dict:
    """The accuracies recorded in out/distilled.npz when it holds exactly `images` ({} otherwise): a
    finished run resumed without evaluation writes its set again and keeps them."""
    file = path(out, DISTILLED)
    try:
        with np.load(file, allow_pickle=False) as npz:
            same = np.array_equal(npz["images"], images)
            record = json.loads(str(npz["settings"])) if same else {}
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, EOFError):
        return {}
    return {k: record[k] for k in ("test_accuracy", "random_real_accuracy", "random_real_baseline") if k in record}


def write_curves(out: str, rows: list[dict], keys=CURVE_KEYS) -> None:
    """DIR/curves.png from the metrics rows."""
    with _naming(path(out, CURVES)):
        learning_curve(rows, path(out, CURVES), keys=keys)


def write_report(out: str, report: dict) -> None:
    """DIR/report.json, and DIR/report.png for a table of accuracies by size (rows with 'ipc')."""
    _atomic_write(path(out, REPORT), json.dumps(report, indent=1))
    table = report.get("prefix_table")
    if table:
        accuracy_by_size(table, path(out, REPORT_PLOT))


def read_npz(file, required, *, give: str, save: str) -> dict:
    """Every array of an .npz file; one-line errors for an unreadable file or missing `required` arrays
    (`give`: what to pass instead, `save`: what the file must hold)."""
    try:
        with np.load(file, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise JaxddError(f"cannot read {file} as an .npz file ({type(err).__name__}): give {give}") from None
    missing = [k for k in required if k not in arrays]
    require(not missing, f"{file} has no {' and no '.join(repr(m) for m in missing)} array (it has: "
                         f"{', '.join(sorted(arrays)) or 'nothing'}): save {save}")
    return arrays


def load_distilled(file: str) -> dict:
    """Read a distilled.npz: {'images', 'labels', 'lr' (float or None), 'settings' (dict or None),
    'row_block' (or None), 'path', 'class_names' (or None)}; a run folder is accepted for its distilled.npz."""
    if not os.path.exists(file):
        raise JaxddError(f"no such file: {file}: give the distilled.npz written by 'jaxdd distill'")
    if os.path.isdir(file):
        candidate = path(file, DISTILLED)
        if not os.path.exists(candidate):
            raise JaxddError(f"{file} is a folder without distilled.npz: give the path of the .npz file")
        file = candidate
    arrays = read_npz(file, ("images", "labels"), give="the distilled.npz written by 'jaxdd distill'",
                      save="images [N,H,W,C] and labels [N] or [N,C]")
    lr = None
    if "lr" in arrays:
        lr_arr = np.asarray(arrays["lr"], dtype=np.float64)
        if lr_arr.size != 1 or not np.isfinite(lr_arr).all() or float(lr_arr.reshape(())) <= 0:
            raise JaxddError(f"{file}: 'lr' must be one positive number, got {lr_arr.ravel()[:3].tolist()}")
        lr = float(lr_arr.reshape(()))
    settings = None
    if "settings" in arrays:
        try:
            settings = json.loads(str(arrays["settings"]))
        except json.JSONDecodeError:
            raise JaxddError(f"{file}: 'settings' is not valid JSON: save json.dumps(settings) as a string") from None
    names = arrays.get("class_names")
    return {"images": arrays["images"], "labels": arrays["labels"], "lr": lr, "settings": settings,
            "row_block": arrays.get("row_block"), "path": file,
            "class_names": None if names is None else [str(n) for n in np.asarray(names).ravel()]}


def _atomic_write(file: str, text: str) -> None:
    tmp = file + ".tmp"
    with _naming(file), open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, file)
