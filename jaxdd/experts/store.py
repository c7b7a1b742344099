"""The expert cache: one folder of expert trajectories, its manifest, and a lazy read-only view of it.

Files (docs/methods/experts.md): ``manifest.json`` (settings, number of parameters D, storage dtype,
the data set's fingerprint, per group its file, experts, epochs done, completeness and per-epoch
loss / accuracy), ``group_GGGG.npy`` (``[experts, epochs + 1, D]`` in the storage dtype; bfloat16 as
its raw uint16 bits), ``group_GGGG.progress.npz`` (a group being trained), ``group_GGGG.forgetting.npy``
and ``forgetting.npz`` (the forgetting scores). Written by jaxdd/experts/training.py.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from jax.flatten_util import ravel_pytree

from jaxdd import models as models_lib
from jaxdd import scores as scores_lib
from jaxdd import training
from jaxdd.data.folder import default_cache_dir
from jaxdd.errors import require

FORMAT = 1
DTYPES = ("float32", "float16", "bfloat16", "float64")
MANIFEST = "manifest.json"


def network(data_info: dict, settings: dict) -> models_lib.Model:
    """The experts' network from a manifest's data set fingerprint and settings."""
    return training.network(settings["model"], data_info["image_shape"], data_info["num_classes"],
                            settings["width"], settings["depth"], settings["norm"])


def fingerprint(dataset) -> dict:
    """What identifies a data set's training split: name, size, image shape, classes, preprocessing
    and a SHA-256 of its int32 labels (in order)."""
    labels = np.ascontiguousarray(np.asarray(dataset.y_train, np.int32))
    pre = getattr(dataset, "preprocessing", None)
    return {"name": str(dataset.name), "num_train": int(labels.size), "image_shape": list(dataset.image_shape),
            "num_classes": int(dataset.num_classes), "preprocessing": getattr(pre, "name", "none"),
            "labels_sha256": hashlib.sha256(labels.tobytes()).hexdigest()}


def default_expert_dir(dataset, settings: dict, cache_dir=None) -> Path:
    """``<cache>/experts/<hash>``, keyed by the data set (a name, or a Dataset: its :func:`fingerprint`)
    and the expert settings. ``<cache>``: ``cache_dir``, else ``$JAXDD_CACHE_DIR``, else ~/.cache/jaxdd."""
    what = dataset if isinstance(dataset, str) else fingerprint(dataset)
    text = json.dumps({"dataset": what, "settings": settings}, sort_keys=True, default=str)
    return default_cache_dir(cache_dir) / "experts" / hashlib.sha256(text.encode()).hexdigest()[:16]


def to_storage(vectors: np.ndarray, dtype: str) -> np.ndarray:
    """float32 vectors -> the stored representation (bfloat16 as raw uint16 bits)."""
    if dtype == "bfloat16":
        return vectors.astype(ml_dtypes.bfloat16).view(np.uint16)
    return vectors.astype(dtype)


def from_storage(rows: np.ndarray, dtype: str) -> np.ndarray:
    """Stored rows -> float32, float64 ones as float64 (a copy; the memory map is only read)."""
    if dtype == "bfloat16":
        rows = np.asarray(rows).view(ml_dtypes.bfloat16)
    return np.array(rows, np.float64 if dtype == "float64" else np.float32)  # a copy, never a view into the map


def storage_dtype(dtype: str):
    return np.uint16 if dtype == "bfloat16" else np.dtype(dtype)


def write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))
    os.replace(tmp, path)


def read_manifest(out_dir: Path) -> dict | None:
    path = out_dir / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError:
        manifest = None
    require(isinstance(manifest, dict) and manifest.get("format") == FORMAT,
            f"{path} is not a jaxdd expert manifest (format {FORMAT}): use another folder or delete it")
    return manifest


class ExpertStore:
    """Read-only, lazy view of the experts in ``out_dir`` (only the groups that are complete).

    Vectors are float32 ``[D]``, the parameters flattened with ``jax.flatten_util.ravel_pytree``;
    :meth:`unravel` turns one back into the model's params pytree (jittable). Snapshot ``t`` of an
    expert is its parameters after t epochs (t = 0: at init), t = 0..num_epochs. Give ``dataset`` to
    refuse experts trained on another data set, split or preprocessing.
    """

    def __init__(self, out_dir, dataset=None):
        self.path = Path(out_dir)
        manifest = read_manifest(self.path)
        require(manifest is not None, f"no experts in {self.path} (no {MANIFEST}): train them first with "
                                      f"'jaxdd experts --out {self.path}'")
        self.manifest = manifest
        self.settings = manifest["settings"]
        self.dtype = manifest["dtype"]
        self.num_params = int(manifest["num_params"])
        self.num_epochs = int(self.settings["epochs"])
        self._groups = [g for g in manifest["groups"] if g["complete"]]
        require(self._groups, f"no group of experts in {self.path} is finished yet: resume the training "
                              f"('jaxdd experts ... --out {self.path} --resume')")
        self.num_experts = sum(g["count"] for g in self._groups)
        self._arrays: dict[int, np.ndarray] = {}
        for g in self._groups:
            why = damage(self.path, manifest, g)
            require(not why, f"{self.path / g['file']} {why}: the experts cannot be used; delete {self.path} and "
                             f"train them again ('jaxdd experts ...' or a run without --experts)")
        if dataset is not None:
            check_fingerprint(manifest, dataset, self.path)

    @functools.cached_property
    def model(self) -> models_lib.Model:
        """The experts' network (the same `Model` the trainer used)."""
        return network(self.manifest["dataset"], self.settings)

    @functools.cached_property
    def _unravel(self):
        shapes = jax.eval_shape(lambda: self.model.init(jax.random.key(0))[0])
        _, unravel = ravel_pytree(jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes))
        return unravel

    def unravel(self, vector):
        """Flat parameter vector ``[D]`` -> params pytree (works on traced arrays inside jit)."""
        return self._unravel(vector)

    def _locate(self, expert: int):
        require(isinstance(expert, (int, np.integer)) and 0 <= expert < self.num_experts,
                f"expert {expert!r} is out of range: {self.path} has experts 0..{self.num_experts - 1}")
        for i, g in enumerate(self._groups):
            if expert < g["first"] + g["count"]:
                if i not in self._arrays:
                    self._arrays[i] = np.load(self.path / g["file"], mmap_mode="r")
                return self._arrays[i], expert - g["first"]
        raise AssertionError("unreachable")

    def _check_epoch(self, epoch, name="epoch"):
        require(isinstance(epoch, (int, np.integer)) and 0 <= epoch <= self.num_epochs,
                f"{name} {epoch!r} is out of range: the experts have snapshots 0..{self.num_epochs}")

    def snapshot(self, expert: int, epoch: int) -> np.ndarray:
        """Parameters of ``expert`` after ``epoch`` epochs: float32 [D]."""
        self._check_epoch(epoch)
        array, row = self._locate(expert)
        return from_storage(array[row, epoch], self.dtype)

    def segment(self, expert: int, start: int, stop: int) -> np.ndarray:
        """Snapshots ``start..stop`` (both included) of ``expert``: float32 [stop - start + 1, D]."""
        self._check_epoch(start, "start")
        self._check_epoch(stop, "stop")
        require(start <= stop, f"segment start {start} is after stop {stop}: give start <= stop")
        array, row = self._locate(expert)
        return from_storage(array[row, start:stop + 1], self.dtype)

    def sample_segment(self, rng, t_min: int, t_max: int, m: int):
        """A random expert and start epoch t ~ UniformInt[t_min, t_max): (τ_t, τ_{t+m}, expert, t).

        ``rng``: a numpy Generator, an int seed or a JAX key (drawn on the host). The vectors are
        float32 [D], ready to pass to a jitted step as arguments.
        """
        require(isinstance(m, (int, np.integer)) and m >= 1, f"m (expert epochs to match) must be >= 1, got {m!r}")
        require(0 <= t_min < t_max, f"start epochs [{t_min}, {t_max}) are empty or negative: use 0 <= t_min < t_max")
        require(t_max - 1 + m <= self.num_epochs,
                f"start epoch up to {t_max - 1} + {m} epochs exceeds the experts' {self.num_epochs} epochs: "
                f"use t_max <= {self.num_epochs - m + 1} or train longer experts")
        if isinstance(rng, jax.Array):
            k_expert, k_epoch = jax.random.split(rng)
            expert = int(jax.random.randint(k_expert, (), 0, self.num_experts))
            epoch = int(jax.random.randint(k_epoch, (), t_min, t_max))
        else:
            rng = np.random.default_rng(rng)
            expert, epoch = int(rng.integers(self.num_experts)), int(rng.integers(t_min, t_max))
        both = self.segment(expert, epoch, epoch + m)
        return both[0], both[-1], expert, epoch

    def metrics(self) -> dict[str, np.ndarray]:
        """Training loss and accuracy of every expert per epoch: arrays [num_experts, num_epochs]."""
        return {k: np.concatenate([np.asarray(g["metrics"][k], np.float32) for g in self._groups])
                for k in ("loss", "accuracy")}

    def forgetting(self):
        """(scores, labels) from ``forgetting.npz`` (all groups must be complete)."""
        return scores_lib.read_score_file(self.path / scores_lib.FORGETTING_FILE)


def check_folder(out) -> None:
    """One-line errors, before any work, for an experts --out that is a file or holds a distillation run."""
    out = Path(out)
    require(not out.is_file(), f"--out {out} is a file, not a folder: choose another --out for the experts")
    require(not any((out / name).exists() for name in ("settings.json", "distilled.npz", "checkpoints")),
            f"--out {out} holds a distillation run: choose another --out for the experts")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def seal(out_dir: Path, group: dict) -> None:
    """Record a finished group's file size and SHA-256 in its manifest entry (checked by `damage`)."""
    path = Path(out_dir) / group["file"]
    group.update(bytes=path.stat().st_size, sha256=file_sha256(path))


def damage(out_dir: Path, manifest: dict, group: dict) -> str:
    """Why a finished group's snapshots cannot be used ('' when they can): missing, truncated, another
    size or content than the manifest records, the wrong shape, or NaN / Inf (a diverged or damaged expert)."""
    path = Path(out_dir) / group["file"]
    if not path.is_file():
        return "is missing"
    if "bytes" in group and path.stat().st_size != group["bytes"]:
        return f"has {path.stat().st_size} bytes, the manifest records {group['bytes']} (truncated or replaced)"
    try:
        array = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as err:
        return f"cannot be read ({type(err).__name__}: {' '.join(str(err).split())[:80]})"
    shape = (group["count"], int(manifest["settings"]["epochs"]) + 1, int(manifest["num_params"]))
    if array.shape != shape:
        return f"has shape {array.shape}, expected {shape}"
    if "sha256" in group and file_sha256(path) != group["sha256"]:
        return "does not hold what the manifest records (its SHA-256 differs)"
    if not all(np.isfinite(from_storage(array[e], manifest["dtype"])).all() for e in range(shape[0])):
        return "holds NaN or Inf"
    return ""


def check_fingerprint(manifest: dict, dataset, where) -> None:
    have, want = manifest["dataset"], fingerprint(dataset)
    diff = [k for k in want if have.get(k) != want[k]]
    require(not diff, f"the experts in {where} were trained on another data set or split ({', '.join(diff)} "
                      f"differ: {have.get('name')} with {have.get('num_train')} training images): train experts "
                      f"for this data set or load it as they were trained")


def new_manifest(dataset, settings, group_size, num_params) -> dict:
    e = settings["num_experts"]
    groups = [dict(file=f"group_{i:04d}.npy", first=first, count=min(group_size, e - first), complete=False,
                   epochs_done=0, metrics={"loss": [], "accuracy": []})
              for i, first in enumerate(range(0, e, group_size))]
    return dict(format=FORMAT, settings=settings, group_size=group_size, num_params=num_params,
                dtype=settings["dtype"], dataset=fingerprint(dataset), groups=groups)
