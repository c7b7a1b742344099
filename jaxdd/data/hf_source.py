"""Hugging Face ``datasets`` sources: ``hf:NAME`` (optional extra ``jaxdd[hf]``, imported lazily).

``NAME`` is a hub name (``cifar10``, ``uoft-cs/cifar10``, ``ylecun/mnist``) or a folder written by
``datasets``' ``save_to_disk``; ``hf:NAME?image=COL&label=COL&config=C`` (or ``--hf-image-column`` /
``--hf-label-column``) names the columns and the hub configuration. The training split is ``train``, the
test split the first of ``test``, ``validation``, ``valid``, ``val``. Without names the image column is
the first ``Image`` feature (else ``image`` / ``img``), the label column the first ``ClassLabel`` (else
``label`` / ``labels`` / ``fine_label``); class names come from the ``ClassLabel``. The decoded uint8
arrays are cached like archives (jaxdd/data/folder.py) under the cache folder, so a second load needs
neither ``datasets`` nor the network. On a machine without network a hub name not yet in the cache gets
one line saying how to pre-download it.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from pathlib import Path

import numpy as np

from jaxdd.data.folder import read_cache, write_cache, default_cache_dir
from jaxdd.errors import JaxddError, one_line, require

TEST_SPLITS = ("test", "validation", "valid", "val")
IMAGE_COLUMNS = ("image", "img")
LABEL_COLUMNS = ("label", "labels", "fine_label")


def parse(spec: str) -> tuple[str, dict]:
    """'NAME?image=a&label=b&config=c' -> ('NAME', {'image': 'a', ...})."""
    name, _, query = spec.partition("?")
    options = dict(urllib.parse.parse_qsl(query))
    unknown = sorted(set(options) - {"image", "label", "config"})
    require(not unknown, f"hf:{spec}: unknown option {', '.join(unknown)}: use image=COLUMN, label=COLUMN, config=NAME")
    require(name.strip() != "", "hf: needs a data set name, e.g. hf:cifar10")
    return name.strip(), options


def source(name: str, image_column: str | None = None, label_column: str | None = None) -> str:
    """The source string for hf:NAME with the given columns (what --hf-image-column / --hf-label-column build)."""
    base, options = parse(name)
    options.update({k: v for k, v in (("image", image_column), ("label", label_column)) if v})
    return "hf:" + base + (("?" + urllib.parse.urlencode(options)) if options else "")


def _column(features, given, kind, names, what):
    if given:
        require(given in features, f"the data set has no column {given!r} (it has {', '.join(features)}): "
                                   f"pass --hf-{what}-column with one of them")
        return given
    typed = [c for c, f in features.items() if type(f).__name__ == kind]
    named = [c for c in names if c in features]
    require(typed or named, f"no {what} column found among {', '.join(features)}: pass --hf-{what}-column")
    return (typed or named)[0]


def _arrays(split, image_col, label_col):
    images = []
    for img in split[image_col]:
        arr = np.asarray(img.convert("RGB") if getattr(img, "mode", "L") not in ("L", "RGB") else img)
        images.append(arr)
    shapes = {a.shape[:2] for a in images}
    require(len(shapes) == 1, f"images of different sizes in the data set ({sorted(shapes)[:2]}): resize them first")
    colour = any(a.ndim == 3 for a in images)
    x = np.stack([a if a.ndim == 3 else (np.repeat(a[..., None], 3, -1) if colour else a[..., None]) for a in images])
    return x.astype(np.uint8), np.asarray(split[label_col], np.int32)


def load_hf_raw(spec: str, cache_dir=None) -> dict:
    """Decoded uint8 arrays of hf:spec (from jaxdd's cache when there), as load_folder_raw returns them."""
    name, options = parse(spec)
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", spec)[:80]
    local = os.path.isdir(os.path.expanduser(name))
    stamp = f"-{os.stat(os.path.expanduser(name)).st_mtime_ns}" if local else ""
    file = default_cache_dir(cache_dir) / f"hf-{safe}{stamp}.npz"
    arrays = read_cache(file) if file.exists() else None
    if arrays is None:
        arrays = _decode(name, options, local, cache_dir)
        write_cache(file, arrays)
    return {"x_train": arrays["x_train"], "y_train": arrays["y_train"].astype(np.int32), "x_test": arrays["x_test"],
            "y_test": arrays["y_test"].astype(np.int32), "class_names": tuple(str(c) for c in arrays["class_names"]),
            "name": str(arrays["name"])}


def _decode(name, options, local, cache_dir) -> dict:
    try:
        import datasets  # optional: the hf extra
    except ImportError:
        raise JaxddError(f"hf:{name} needs the datasets library: pip install 'jaxdd[hf]'") from None
    try:
        if local:
            data = datasets.load_from_disk(os.path.expanduser(name))
        else:
            data = datasets.load_dataset(name, options.get("config"),
                                         cache_dir=str(Path(default_cache_dir(cache_dir)) / "hf"))
    except (ConnectionError, OSError, ValueError) as err:  # no network, an unknown name, a missing config
        raise JaxddError(f"cannot load hf:{name} ({one_line(err)[:200]}); on a machine with network run python -c "
                         f"\"import datasets; datasets.load_dataset('{name}').save_to_disk('DIR')\" and use "
                         f"--dataset hf:DIR, or copy jaxdd's cache (--cache-dir) from there") from None
    require(isinstance(data, datasets.DatasetDict) and "train" in data,
            f"hf:{name} has no 'train' split (it has {', '.join(getattr(data, 'keys', lambda: [])())}): "
            f"give a data set with train and test splits")
    test = next((s for s in TEST_SPLITS if s in data), None)
    require(test is not None, f"hf:{name} has no test split ({' / '.join(TEST_SPLITS)}; it has "
                              f"{', '.join(data)}): give a data set with one")
    features = data["train"].features
    image_col = _column(features, options.get("image"), "Image", IMAGE_COLUMNS, "image")
    label_col = _column(features, options.get("label"), "ClassLabel", LABEL_COLUMNS, "label")
    x_train, y_train = _arrays(data["train"], image_col, label_col)
    x_test, y_test = _arrays(data[test], image_col, label_col)
    feature = features[label_col]
    names = list(feature.names) if hasattr(feature, "names") else [str(c) for c in range(int(y_train.max()) + 1)]
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test,
            "class_names": np.asarray(names, dtype=str), "name": np.asarray(os.path.basename(name.rstrip("/")), str)}
