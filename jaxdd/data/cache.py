"""The decoded-archive cache's files (folders, archives, hf: sources): written with their own checksum, read only
after checking it.

A cache file is an uncompressed ``.npz`` of x_train, y_train, x_test, y_test, class_names and name, plus
``sha256``: a SHA-256 over every array's name, dtype, shape and bytes. `read_cache` returns None, with one
warning, for a file that cannot be read (torn, truncated, foreign), whose sizes or labels disagree, or whose
arrays do not match the checksum; the caller then decodes again and overwrites it.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import numpy as np

from jaxdd.errors import one_line

_KEYS = ("x_train", "y_train", "x_test", "y_test", "class_names", "name")
CHECKSUM = "sha256"  # the cache file's own record of its arrays: names, dtypes, shapes and bytes


def checksum(arrays: dict) -> str:
    """SHA-256 over every cached array's name, dtype, shape and bytes."""
    digest = hashlib.sha256()
    for key in _KEYS:
        a = np.ascontiguousarray(arrays[key])
        digest.update(f"|{key}:{a.dtype.str}:{a.shape}|".encode())
        digest.update(a.data)
    return digest.hexdigest()


def _cache_problem(arrays: dict, recorded: str | None) -> str:
    """What is wrong with cached arrays ('' if nothing): sizes that disagree, labels out of range, or a
    checksum that does not match (a cache without one, from an older jaxdd, is checked for the rest)."""
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim != 4 or len(x) != len(y):
            return f"holds {len(y)} {split} labels for images of shape {x.shape}"
        if len(y) and not (0 <= y.min() and y.max() < len(arrays["class_names"])):
            return f"holds {split} labels outside the {len(arrays['class_names'])} classes"
    if recorded is not None and recorded != checksum(arrays):
        return "does not match its checksum (changed or damaged on disk)"
    return ""


def read_cache(file: Path) -> dict | None:
    """The cached arrays in `file`, or None (with one warning) when it is unreadable, inconsistent or does not
    match its checksum: the caller decodes again and overwrites it."""
    try:
        with open(file, "rb") as f, np.load(f, allow_pickle=False) as z:  # closed even when np.load fails
            arrays = {k: z[k] for k in _KEYS}
            recorded = str(z[CHECKSUM]) if CHECKSUM in z.files else None
    except Exception as e:  # a torn or foreign file: decode again and overwrite it
        warnings.warn(f"jaxdd: ignoring unreadable cache {file} ({one_line(e)}); decoding the images again")
        return None
    problem = _cache_problem(arrays, recorded)
    if problem:
        warnings.warn(f"jaxdd: ignoring the cache {file}: it {problem}; decoding the images again")
        return None
    return arrays


def write_cache(file: Path, arrays: dict) -> None:
    tmp = file.with_name(f".{file.name}.{os.getpid()}.tmp")
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            np.savez(f, **arrays, **{CHECKSUM: checksum(arrays)})
        os.replace(tmp, file)
    except OSError as e:
        warnings.warn(f"jaxdd: could not write the cache {file} ({one_line(e)}); set cache_dir or JAXDD_CACHE_DIR")
        try:
            tmp.unlink()
        except OSError:
            pass
