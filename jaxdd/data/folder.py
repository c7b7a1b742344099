"""Image folders and archives laid out as ``train/<class>/<image>`` and ``test/<class>/<image>``.

Accepted sources: a directory, or a ``.tar``, ``.tar.gz``/``.tgz``, ``.tar.xz``/``.txz``,
``.tar.bz2``/``.tbz2`` or ``.zip`` archive. The ``train/`` and ``test/`` folders may sit at the top
level or under one top-level folder (``cifar10/train/...``). Class names are the train folder names,
sorted; labels are their indices. Images (PNG, JPEG, BMP, GIF, WebP, TIFF, PNM; hidden files and
``__MACOSX`` are skipped, other files ignored) are decoded once with Pillow, in sorted path order, so a
folder and an archive of the same images give the same arrays. Grey images give C = 1; if grey and
colour images are mixed, grey ones are repeated to RGB; alpha is dropped; 16-bit grey keeps its high
byte.

The decoded uint8 arrays are cached as an uncompressed ``.npz`` in ``cache_dir``, else
``$JAXDD_CACHE_DIR``, else ``~/.cache/jaxdd``, keyed by the absolute path, size and modification time
(for a directory: of every file under it). A second load reads only the cache, after checking it: a file
that cannot be read, whose sizes or labels disagree, or whose arrays do not match the SHA-256 it records is
decoded again and rewritten, with one warning.
"""

from __future__ import annotations

import hashlib
import io
import os
import queue
import re
import tarfile
import threading
import zipfile
from pathlib import Path, PurePosixPath

import numpy as np

from jaxdd.data.cache import read_cache, write_cache
from jaxdd.errors import JaxddError, one_line, require

IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm", ".pnm"}
)
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2", ".tbz2")
ARCHIVE_SUFFIXES = TAR_SUFFIXES + (".zip",)
CACHE_VERSION = 2  # 2: the file records its checksum
_LAYOUT = "put images in train/<class>/<image> and test/<class>/<image>"


def archive_kind(path: str | os.PathLike) -> str | None:
    """'tar' or 'zip' from the file name's suffix, else None."""
    name = str(path).lower()
    if name.endswith(".zip"):
        return "zip"
    if name.endswith(TAR_SUFFIXES):
        return "tar"
    return None


def looks_like_path(source: str) -> bool:
    """Whether a data-source string is meant as a file-system path."""
    return (
        os.sep in source
        or "/" in source
        or source.startswith((".", "~"))
        or archive_kind(source) is not None
    )


def default_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir``, else ``$JAXDD_CACHE_DIR``, else ``~/.cache/jaxdd``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("JAXDD_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    return Path("~/.cache/jaxdd").expanduser()


# -- listing ---------------------------------------------------------------------------------------


def _skipped(parts: tuple[str, ...]) -> bool:
    return any(p.startswith(".") or p == "__MACOSX" for p in parts)


def _is_image(parts: tuple[str, ...]) -> bool:
    return PurePosixPath(parts[-1]).suffix.lower() in IMAGE_EXTENSIONS


def _add_parents(dirs: set, parts: tuple[str, ...]) -> None:
    for i in range(1, len(parts)):
        dirs.add(parts[:i])


def _split_parts(name: str) -> tuple[str, ...]:
    return tuple(p for p in name.replace("\\", "/").split("/") if p not in ("", "."))


def _list_directory(root: Path) -> tuple[dict, set]:
    files, dirs = {}, set()
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root).parts
        dirnames[:] = [d for d in dirnames if not _skipped((d,))]
        for d in dirnames:
            dirs.add(rel + (d,))
        for f in filenames:
            parts = rel + (f,)
            if not _skipped(parts) and _is_image(parts):
                files[parts] = Path(dirpath) / f
    return files, dirs


def _decode_or_error(data: bytes, name: str):
    """Decoded array, or the JaxddError to raise if the image turns out to be used."""
    try:
        return _decode_image(data, name)
    except JaxddError as e:
        return e


def _list_tar(path: Path) -> tuple[dict, set]:
    """Stream the archive once in a reader thread and decode images in this one as they arrive.

    Decompression (lzma/zlib release the GIL) overlaps with Pillow decoding; images are decoded
    eagerly, so ``files`` maps to arrays (or to the error an unreadable image raises when used).
    """
    files, dirs = {}, set()
    chunks: queue.Queue = queue.Queue(maxsize=32)
    stop = threading.Event()
    failure: list[BaseException] = []

    def put(item) -> bool:
        while not stop.is_set():
            try:
                chunks.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def reader() -> None:
        try:
            # Streaming mode: one sequential pass, no seeking in the compressed stream.
            with tarfile.open(path, "r|*") as tf:
                batch = []
                for member in tf:
                    parts = _split_parts(member.name)
                    if not parts or _skipped(parts):
                        continue
                    if member.isdir():
                        batch.append((parts, None))
                    elif member.isfile() and _is_image(parts):
                        batch.append((parts, tf.extractfile(member).read()))
                    if len(batch) >= 256:
                        if not put(batch):
                            return
                        batch = []
                put(batch)
        except BaseException as e:  # reported by the consuming thread
            failure.append(e)
        finally:
            put(None)

    thread = threading.Thread(target=reader, name="jaxdd-tar-reader", daemon=True)
    thread.start()
    try:
        while (batch := chunks.get()) is not None:
            for parts, data in batch:
                _add_parents(dirs, parts)
                if data is None:
                    dirs.add(parts)
                else:
                    files[parts] = _decode_or_error(data, "/".join(parts))
    finally:
        stop.set()
        thread.join()
    if failure:
        e = failure[0]
        if not isinstance(e, (tarfile.TarError, OSError, EOFError, *_compression_errors())):
            raise e
        raise JaxddError(
            f"cannot read archive {path}: {one_line(e) or type(e).__name__}: check that the file is a complete tar archive"
        ) from None
    return files, dirs


def _compression_errors() -> tuple:
    import lzma
    import zlib

    return (zlib.error, lzma.LZMAError)


def _list_zip(path: Path) -> tuple[dict, set]:
    files, dirs = {}, set()
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                parts = _split_parts(info.filename)
                if not parts or _skipped(parts):
                    continue
                if info.is_dir():
                    dirs.add(parts)
                    _add_parents(dirs, parts)
                elif _is_image(parts):
                    files[parts] = zf.read(info)
                    _add_parents(dirs, parts)
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise JaxddError(f"cannot read archive {path}: {one_line(e)}: check that the file is a complete zip archive") from None
    return files, dirs


# -- layout ----------------------------------------------------------------------------------------


def _find_prefix(path: Path, dirs: set) -> tuple[str, ...]:
    if ("train",) in dirs or ("test",) in dirs:
        prefix = ()
    else:
        tops = sorted({d[0] for d in dirs})
        require(
            len(tops) == 1 and ((tops[0], "train") in dirs or (tops[0], "test") in dirs),
            f"no train/ and test/ folders in {path} (looked at the top level"
            + (f" and under {tops[0]}/" if len(tops) == 1 else "")
            + f"): {_LAYOUT}",
        )
        prefix = (tops[0],)
    where = "/".join(prefix + ("",))
    require(prefix + ("train",) in dirs, f"no {where}train/ folder in {path}: {_LAYOUT}")
    require(prefix + ("test",) in dirs, f"no {where}test/ folder in {path}: {_LAYOUT}")
    return prefix


def _collect_split(path, files, dirs, prefix, split) -> dict[str, list[tuple[str, ...]]]:
    base = prefix + (split,)
    n = len(base)
    classes = sorted(d[n] for d in dirs if len(d) == n + 1 and d[:n] == base)
    require(classes, f"{'/'.join(base)}/ in {path} has no class folders: {_LAYOUT}")
    members: dict[str, list] = {c: [] for c in classes}
    for parts in files:
        if len(parts) > n + 1 and parts[:n] == base:
            members[parts[n]].append(parts)
    for c in classes:
        require(
            members[c],
            f"class folder {'/'.join(base + (c,))}/ in {path} has no images: "
            f"add PNG/JPEG images or remove the folder",
        )
        members[c].sort()
    return members


# -- decoding --------------------------------------------------------------------------------------


def _decode_image(src, name: str) -> np.ndarray:
    """Decode one image to uint8 [H, W] (grey) or [H, W, 3] (colour). Raises JaxddError naming it."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(src) if isinstance(src, bytes) else src) as im:
            mode = im.mode
            if mode in ("L", "RGB"):
                arr = np.asarray(im)
            elif mode.startswith("I;16"):
                arr = (np.asarray(im).astype(np.uint16) >> 8).astype(np.uint8)
            elif mode in ("1", "LA", "La", "I", "F"):
                arr = np.asarray(im.convert("L"))
            elif mode == "P" and "transparency" not in im.info and _grey_palette(im):
                arr = np.asarray(im.convert("L"))
            else:
                arr = np.asarray(im.convert("RGB"))
    except JaxddError:
        raise
    except Exception as e:  # Pillow raises many kinds (UnidentifiedImageError, OSError, SyntaxError...)
        raise JaxddError(f"cannot read image {name}: {one_line(e)}: fix or remove the file") from None
    return arr


def _grey_palette(im) -> bool:
    pal = im.getpalette() or []
    rgb = np.asarray(pal[: len(pal) // 3 * 3]).reshape(-1, 3)
    return bool(rgb.size) and bool((rgb == rgb[:, :1]).all())


def _size(arr: np.ndarray) -> str:
    return f"{arr.shape[1]}x{arr.shape[0]}"


def _decode_all(path, files, prefix, splits) -> tuple[dict, int, int, int]:
    """Decode every listed image; check one size; return ({split: (images list, labels)}, H, W, C)."""
    first = None  # (array, name)
    colour = False
    decoded = {}
    for split, (members, class_index) in splits.items():
        images, labels = [], []
        for c, parts_list in members.items():
            for parts in parts_list:
                name = "/".join(parts)
                src = files[parts]
                if isinstance(src, JaxddError):
                    raise src
                arr = src if isinstance(src, np.ndarray) else _decode_image(src, name)
                if first is None:
                    first = (arr, name)
                elif arr.shape[:2] != first[0].shape[:2]:
                    raise JaxddError(
                        f"images of different sizes in {path}: {first[1]} is {_size(first[0])} but {name} "
                        f"is {_size(arr)}: resize all images to one size"
                    )
                colour |= arr.ndim == 3
                images.append(arr)
                labels.append(class_index[c])
        decoded[split] = (images, np.asarray(labels, np.int32))
    h, w = first[0].shape[:2]
    return decoded, h, w, 3 if colour else 1


def _stack(images: list, h: int, w: int, c: int) -> np.ndarray:
    out = np.empty((len(images), h, w, c), np.uint8)
    for i, arr in enumerate(images):
        out[i] = arr if arr.ndim == 3 else arr[..., None]  # grey broadcasts to RGB when c == 3
    return out


def _decode_source(path: Path) -> dict:
    if path.is_dir():
        files, dirs = _list_directory(path)
    else:
        kind = archive_kind(path)
        files, dirs = _list_tar(path) if kind == "tar" else _list_zip(path)
    prefix = _find_prefix(path, dirs)
    train = _collect_split(path, files, dirs, prefix, "train")
    test = _collect_split(path, files, dirs, prefix, "test")
    class_names = tuple(train)
    if set(test) != set(train):
        missing = sorted(set(train) - set(test))
        extra = sorted(set(test) - set(train))
        raise JaxddError(
            f"test classes do not match train classes in {path}"
            + (f"; missing from test: {', '.join(missing)}" if missing else "")
            + (f"; only in test: {', '.join(extra)}" if extra else "")
            + ": use the same class folders in train/ and test/"
        )
    class_index = {c: i for i, c in enumerate(class_names)}
    decoded, h, w, c = _decode_all(path, files, prefix, {"train": (train, class_index), "test": (test, class_index)})
    name = prefix[0] if prefix else _stem(path)
    return {
        "x_train": _stack(decoded["train"][0], h, w, c),
        "y_train": decoded["train"][1],
        "x_test": _stack(decoded["test"][0], h, w, c),
        "y_test": decoded["test"][1],
        "class_names": np.asarray(class_names, dtype=str),
        "name": np.asarray(name, dtype=str),
    }


def _stem(path: Path) -> str:
    name = path.name
    for suffix in ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


# -- cache -----------------------------------------------------------------------------------------


def cache_key(path: Path) -> str:
    """Hex digest of the absolute path, size and mtime (of every file under it, for a directory)."""
    path = path.resolve()
    h = hashlib.sha256(f"jaxdd-folder-cache v{CACHE_VERSION}|{path}".encode())
    if path.is_dir():
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames.sort()
            for f in sorted(filenames):
                st = os.stat(os.path.join(dirpath, f))
                h.update(f"|{os.path.relpath(os.path.join(dirpath, f), path)}:{st.st_size}:{st.st_mtime_ns}".encode())
    else:
        st = path.stat()
        h.update(f"|{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


def cache_path(path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the decoded arrays of ``path`` are (or will be) cached."""
    path = Path(path).expanduser()
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", _stem(path.resolve()))[:60] or "data"
    return default_cache_dir(cache_dir) / f"{safe}-{cache_key(path)[:24]}.npz"


def load_folder_raw(source: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> dict:
    """Decoded uint8 arrays of a folder/archive (from the cache when it is fresh).

    Returns a dict with x_train/x_test (uint8 [N, H, W, C]), y_train/y_test (int32), class_names
    (tuple of str) and name (the top-level folder inside the archive, else the file/folder name).
    """
    path = Path(source).expanduser()
    require(path.exists(), f"data path {source} does not exist: check the path, or use 'digits' or 'tfds:NAME'")
    require(
        path.is_dir() or (path.is_file() and archive_kind(path) is not None),
        f"data path {source} is neither a folder nor an archive ({', '.join(ARCHIVE_SUFFIXES)}): "
        "pass a folder or an archive holding train/ and test/",
    )
    file = cache_path(path, cache_dir)
    arrays = read_cache(file) if file.exists() else None
    if arrays is None:
        arrays = _decode_source(path)
        write_cache(file, arrays)
    return {
        "x_train": arrays["x_train"],
        "y_train": arrays["y_train"].astype(np.int32),
        "x_test": arrays["x_test"],
        "y_test": arrays["y_test"].astype(np.int32),
        "class_names": tuple(str(c) for c in arrays["class_names"]),
        "name": str(arrays["name"]),
    }
