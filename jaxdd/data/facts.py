"""A data set's facts without loading it: image shape, classes, training and test images.

What `jaxdd plan` needs to size a run (docs/planning.md). Sources, as `jaxdd.data.load` takes them:
``digits`` (bundled: loaded, it is tiny); ``tfds:NAME`` or a bare known name (the :data:`KNOWN`
table of the sets the methods' papers use; nothing is read); a folder (its files counted per split,
one image decoded for the size); an archive (its listing read, one image decoded). The counts
follow the loader's own rules (jaxdd/data/folder.py): the same layout, skipped files and image
suffixes.
"""

from __future__ import annotations

import dataclasses
import os
import tarfile
import zipfile
from pathlib import Path

from jaxdd.data import folder
from jaxdd.data.digits import load_digits_raw
from jaxdd.errors import JaxddError, one_line, require


@dataclasses.dataclass(frozen=True)
class Facts:
    """name, image_shape (H, W, C), num_classes, num_train, num_test, and how they were found."""

    name: str
    image_shape: tuple[int, int, int]
    num_classes: int
    num_train: int
    num_test: int
    how: str


# The sets of the methods' papers, as tensorflow-datasets (and the papers) have them. ImageNet subsets
# (MTT's ImageNette, ImageWoof, ...): 10 ImageNet classes at 128 x 128, about 1,300 training images each.
KNOWN = {
    "cifar10": ((32, 32, 3), 10, 50_000, 10_000),
    "cifar100": ((32, 32, 3), 100, 50_000, 10_000),
    "svhn_cropped": ((32, 32, 3), 10, 73_257, 26_032),
    "mnist": ((28, 28, 1), 10, 60_000, 10_000),
    "fashion_mnist": ((28, 28, 1), 10, 60_000, 10_000),
    "tiny_imagenet": ((64, 64, 3), 200, 100_000, 10_000),
    "imagenet_subset": ((128, 128, 3), 10, 13_000, 500),
}
ALIASES = {"tiny_imagenet_200": "tiny_imagenet", "tinyimagenet": "tiny_imagenet", "cifar_10": "cifar10",
           "cifar_100": "cifar100", "imagenette": "imagenet_subset", "imagewoof": "imagenet_subset",
           "imagefruit": "imagenet_subset", "imagemeow": "imagenet_subset", "imagesquawk": "imagenet_subset",
           "imageyellow": "imagenet_subset"}


def known_name(source: str) -> str | None:
    """The :data:`KNOWN` key of 'tfds:NAME[:version]' or a bare name, else None."""
    name = str(source)
    name = name[len("tfds:"):] if name.startswith("tfds:") else name
    name = name.split(":")[0].split("/")[0].strip().lower().replace("-", "_")
    name = ALIASES.get(name, name)
    return name if name in KNOWN else None


def facts(source: str | os.PathLike) -> Facts:
    """The facts of a data source (see the module's docstring); a one-line JaxddError otherwise."""
    source = os.fspath(source)
    if source == "digits":
        x_train, _, x_test, _, names = load_digits_raw()
        return Facts("digits", tuple(x_train.shape[1:]), len(names), len(x_train), len(x_test), "loaded (bundled)")
    path = Path(source).expanduser()
    if not source.startswith("tfds:") and (path.exists() or folder.looks_like_path(source)):
        require(path.exists(), f"no such data path: {source}")
        return _from_files(path)
    key = known_name(source)
    require(key is not None, f"jaxdd plan does not know the data set {source!r} without its files: use one of "
                             f"{', '.join('tfds:' + k for k in KNOWN)}, digits, or a folder / archive")
    shape, classes, train, test = KNOWN[key]
    return Facts(key, shape, classes, train, test, "the table of known sets (jaxdd/data/facts.py)")


def _from_files(path: Path) -> Facts:
    """Counts per split from the listing (no image read but one), as the loader lays them out."""
    if path.is_dir():
        files, dirs = folder._list_directory(path)
        first = lambda parts: files[parts]  # noqa: E731
    else:
        files, dirs, first = _list_archive(path)
    prefix = folder._find_prefix(path, dirs)
    train = folder._collect_split(path, files, dirs, prefix, "train")
    test = folder._collect_split(path, files, dirs, prefix, "test")
    one = next(iter(train.values()))[0]
    image = folder._decode_image(first(one), "/".join(one))
    shape = tuple(image.shape[:2]) + (image.shape[2] if image.ndim == 3 else 1,)
    return Facts(prefix[0] if prefix else folder._stem(path), shape, len(train),
                 sum(len(v) for v in train.values()), sum(len(v) for v in test.values()),
                 f"listing of {path.name}, one image decoded")


def _list_archive(path: Path):
    """(files {parts: member name}, dirs, read(parts) -> bytes) of a tar or zip archive: names only, in one
    pass, keeping the bytes of the first training image met (the one decoded for the size)."""
    files, dirs, kept = {}, set(), {}

    def add(name: str, is_dir: bool, read) -> None:
        parts = folder._split_parts(name)
        if not parts or folder._skipped(parts):
            return
        folder._add_parents(dirs, parts)
        if is_dir:
            dirs.add(parts)
        elif folder._is_image(parts):
            files[parts] = name
            if not kept and "train" in parts[:2]:
                kept[parts] = read()

    try:
        if folder.archive_kind(path) == "zip":
            with zipfile.ZipFile(path) as zf:
                for info in zf.infolist():
                    add(info.filename, info.is_dir(), lambda info=info: zf.read(info))
        else:
            with tarfile.open(path, "r|*") as tf:
                for m in tf:
                    if m.isdir() or m.isfile():
                        add(m.name, m.isdir(), lambda m=m: tf.extractfile(m).read())
    except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError) as err:
        raise JaxddError(f"cannot read archive {path}: {one_line(err)}: check that the file is complete") from None

    def read(parts) -> bytes:
        require(parts in kept, f"cannot size the images of {path}: no training image found before {'/'.join(parts)}")
        return kept[parts]

    return files, dirs, read
