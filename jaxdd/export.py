"""A distilled set written for use outside jaxdd (`jaxdd export`, README "Use a distilled set elsewhere").

Three formats:

- ``png``: an ImageFolder tree ``DIR/<class>/<n>.png`` of the images mapped back to pixels
  (``Preprocessing.inverse``: de-standardised or un-whitened, clipped to [0, 1]) and quantised to
  8 bits, plus ``labels.json`` (soft labels, by file) and ``lr.json`` (a learned lr) where the set has
  them. Class folders are the class names; where their sorted order is not the class order they get
  the zero-padded class index in front, so loaders that sort folders (torchvision's ImageFolder,
  jaxdd's folder loader) give the same labels. Lossy: clipping, 8 bits, and for ``zca`` (KIP) the
  per-image min-max rescaling of the inverse (docs/data.md "Export" measures what it costs).
- ``npz`` / ``torch``: the exact model inputs as NCHW float32 (``images``), ``labels`` (int [N] or soft
  [N, C]), ``lr`` (or absent), ``row_block``, ``class_names``, the evaluation protocol and settings, and
  the preprocessing to apply to real images (``preprocessing``: ``name`` and ``mean``/``std`` [C] or
  the ZCA ``mean`` [D] and ``whitening`` [D, D] on images flattened in NCHW (C, H, W) order, with
  ``per_image_normalize`` for ``zca``), so a network trained on the set sees test images exactly as
  jaxdd's evaluation feeds them. ``torch`` writes one ``.pt`` of tensors (PyTorch imported lazily).
"""

from __future__ import annotations

import json
import os
import re

import numpy as np

from jaxdd.data.preprocess import Preprocessing
from jaxdd.errors import JaxddError, require

FORMATS = ("png", "npz", "torch")
SET_FILE = {"npz": "distilled_nchw.npz", "torch": "distilled.pt"}


def class_folders(class_names) -> list[str]:
    """Folder names for the classes whose sorted order is the class order (see the module doc)."""
    names = [re.sub(r"[\\/\0]+", "_", str(c)).strip() or f"class{i}" for i, c in enumerate(class_names)]
    if sorted(names) == names and len(set(names)) == len(names):
        return names
    digits = len(str(len(names) - 1))
    return [f"{i:0{digits}d}_{name}" for i, name in enumerate(names)]


def to_pixels(images, preprocessing: Preprocessing | None) -> np.ndarray:
    """Model inputs [N, H, W, C] -> uint8 pixels (inverse preprocessing, clipped, rounded)."""
    x = np.asarray(images, np.float32)
    pixels = preprocessing.inverse(x) if preprocessing is not None else np.clip(x, 0.0, 1.0)
    return np.round(np.asarray(pixels, np.float64) * 255.0).astype(np.uint8)


def preprocessing_arrays(preprocessing: Preprocessing | None, image_shape) -> dict:
    """The preprocessing as plain arrays for NCHW images (see the module doc)."""
    pre = preprocessing or Preprocessing("none")
    out: dict = {"name": pre.name}
    if pre.name == "standardize":
        out.update(mean=np.asarray(pre.mean, np.float32), std=np.asarray(pre.std, np.float32))
    elif pre.zca is not None:
        h, w, c = image_shape
        order = np.arange(h * w * c).reshape(h, w, c).transpose(2, 0, 1).ravel()  # NCHW position -> NHWC index
        out.update(mean=np.asarray(pre.zca.mean)[order], whitening=np.asarray(pre.zca.whitening)[np.ix_(order, order)],
                   per_image_normalize=pre.name == "zca")
    return out


def apply_exported(preprocessing: dict, images_nchw) -> np.ndarray:
    """What a user does with an exported preprocessing: [0, 1] NCHW pixels -> model inputs (NCHW)."""
    x = np.asarray(images_nchw, np.float32)
    name = preprocessing["name"]
    if name == "standardize":
        return (x - preprocessing["mean"][:, None, None]) / preprocessing["std"][:, None, None]
    if name in ("zca", "zca-mtt"):
        flat = x.reshape(len(x), -1)
        if preprocessing["per_image_normalize"]:
            flat = flat - flat.mean(1, keepdims=True)
            flat = flat / np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), 1e-12)
        else:
            flat = flat - preprocessing["mean"]
        return (flat @ preprocessing["whitening"]).reshape(x.shape).astype(np.float32)
    return x


def write_png(out: str, distilled: dict, class_names, preprocessing: Preprocessing | None) -> dict:
    """The ImageFolder tree in `out`; returns {'images': N, 'folders': [...], 'files': [...]}."""
    from PIL import Image  # pillow is a dependency; imported here like viz imports matplotlib

    images, labels = distilled["images"], np.asarray(distilled["labels"])
    hard = labels.argmax(-1) if labels.ndim == 2 else labels.astype(int)
    pixels = to_pixels(images, preprocessing)
    folders = class_folders(class_names)
    files, counts = [], [0] * len(folders)
    for i, (img, c) in enumerate(zip(pixels, hard)):
        folder = os.path.join(out, folders[c])
        os.makedirs(folder, exist_ok=True)
        name = f"{folders[c]}/{counts[c]:04d}.png"
        counts[c] += 1
        Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(os.path.join(out, name))
        files.append(name)
    if labels.ndim == 2:
        _write_json(os.path.join(out, "labels.json"), {
            "note": "soft labels of each image, as training targets: loss = -sum_c t_c log softmax(z)_c",
            "classes": list(map(str, class_names)),
            "labels": {f: [float(v) for v in row] for f, row in zip(files, labels)}})
    if distilled.get("lr") is not None:
        _write_json(os.path.join(out, "lr.json"), {"lr": float(distilled["lr"]), "note": "the learning rate learned "
                    "with the set; jaxdd's protocol uses it when it says so (see 'protocol' in lr.json)",
                    "protocol": (distilled.get("settings") or {}).get("evaluation")})
    return {"images": len(files), "folders": folders, "files": files}


def set_arrays(distilled: dict, class_names, preprocessing: Preprocessing | None) -> dict:
    """The npz / torch payload (numpy arrays and JSON-able values)."""
    images = np.asarray(distilled["images"], np.float32)
    record = distilled.get("settings") or {}
    payload = {"images": np.ascontiguousarray(images.transpose(0, 3, 1, 2)),
               "labels": np.asarray(distilled["labels"]),
               "class_names": [str(c) for c in class_names],
               "preprocessing": preprocessing_arrays(preprocessing, images.shape[1:]),
               "protocol": record.get("evaluation"), "settings": record}
    if distilled.get("lr") is not None:
        payload["lr"] = float(distilled["lr"])
    if distilled.get("row_block") is not None:
        payload["row_block"] = np.asarray(distilled["row_block"])
    return payload


def write_set(out: str, fmt: str, distilled: dict, class_names, preprocessing: Preprocessing | None) -> str:
    """DIR/distilled_nchw.npz or DIR/distilled.pt; returns the file's path."""
    payload = set_arrays(distilled, class_names, preprocessing)
    file = os.path.join(out, SET_FILE[fmt])
    if fmt == "npz":
        flat = {k: v for k, v in payload.items() if k != "preprocessing" and not isinstance(v, (dict, list))}
        flat.update({f"preprocessing_{k}": np.asarray(v) for k, v in payload["preprocessing"].items()})
        flat.update(class_names=np.asarray(payload["class_names"]),
                    protocol=json.dumps(payload["protocol"]), settings=json.dumps(payload["settings"]))
        np.savez(file, **flat)
        return file
    try:
        import torch  # optional: the torch extra
    except ImportError:
        raise JaxddError("--format torch needs PyTorch: pip install 'jaxdd[torch]' (or use --format npz)") from None

    def tensor(v):
        return torch.from_numpy(np.array(v)) if isinstance(v, np.ndarray) else v

    payload = {k: ({kk: tensor(vv) for kk, vv in v.items()} if k == "preprocessing" else tensor(v))
               for k, v in payload.items()}
    torch.save(payload, file)
    return file


def export(distilled: dict, fmt: str, out: str, class_names, preprocessing: Preprocessing | None) -> dict:
    """Write `distilled` (as from `rundir.load_distilled`) to `out` in format `fmt`."""
    require(fmt in FORMATS, f"unknown --format {fmt!r}: use one of {', '.join(FORMATS)}")
    labels = np.asarray(distilled["labels"])
    n_cls = len(class_names)
    require(labels.ndim == 2 or labels.size == 0 or int(labels.max()) < n_cls,
            f"the set's labels go up to {labels.max() if labels.size else 0} but the data set has {n_cls} "
            f"classes: export with the --dataset the set was made on")
    os.makedirs(out, exist_ok=True)
    if fmt == "png":
        return {"format": fmt, "out": out, **write_png(out, distilled, class_names, preprocessing)}
    return {"format": fmt, "out": out, "file": write_set(out, fmt, distilled, class_names, preprocessing),
            "images": len(labels)}


def _write_json(file: str, value) -> None:
    with open(file, "w") as f:
        json.dump(value, f, indent=1)
