"""Build small image-folder data sets the CPU presets were not tuned on (issue 10, item 5).

    python -m benchmarks.make_datasets --out /tmp/jaxdd-sets [--cifar /work/shared/data/cifar10-jpeg.tar.xz]

Writes OUT/<name>/{train,test}/<class>/<i>.png (never commit them):

* digits16px, digits28px: scikit-learn's 8x8 digits upsampled with PIL (bilinear) to 16x16 / 28x28 grey,
  a stratified 80/20 train/test split (seed 0). Named so that `presets.dataset_key` does not map them to
  the "digits" preset: they get the generic small-image preset.
* cifar5grey: CIFAR-10 from the JPEG archive, classes 0-4 (sorted names), grey (PIL "L"), 32x32, the first
  500 train and 200 test images per class in archive order.
* cifar10s16: CIFAR-10 from the archive, all 10 classes, colour, downsized to 16x16 (PIL bilinear),
  300 train and 100 test images per class.
* cifar5last24: CIFAR-10 from the archive, classes 5-9 (dog, frog, horse, ship, truck), colour, 24x24, 400
  train and 200 test images per class. Built after the generic preset's outer lr was chosen on the validation
  splits of cifar5grey, cifar10s16 and digits28px (docs/methods/bptt.md): no choice has looked at it.

Every set is written only if its folder does not exist yet (delete it to rebuild).
"""

from __future__ import annotations

import argparse
import collections
import io
import os
import tarfile

import numpy as np
from PIL import Image

CIFAR = "/work/shared/data/cifar10-jpeg.tar.xz"


def _write(out: str, split: str, cls: str, i: int, img: Image.Image) -> None:
    folder = os.path.join(out, split, cls)
    os.makedirs(folder, exist_ok=True)
    img.save(os.path.join(folder, f"{i:05d}.png"))


def digits(out: str, size: int, seed: int = 0) -> None:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0 * 255).round().astype(np.uint8)
    rng = np.random.default_rng(seed)
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(d.target == c))
        n_test = len(idx) // 5
        for split, part in (("test", idx[:n_test]), ("train", idx[n_test:])):
            for i in part:
                img = Image.fromarray(x[i], "L").resize((size, size), Image.BILINEAR)
                _write(out, split, str(c), int(i), img)


def cifar(out: str, archive: str, *, classes: int, train: int, test: int, grey: bool, size: int,
          first: int = 0) -> None:
    counts = collections.Counter()
    with tarfile.open(archive, "r:*") as tar:
        members = sorted((m for m in tar.getmembers() if m.isfile() and m.name.lower().endswith((".jpg", ".jpeg",
                                                                                                  ".png"))),
                         key=lambda m: m.name)
        names = sorted({m.name.split("/")[-2] for m in members})[first:first + classes]
        for m in members:
            parts = m.name.split("/")
            split, cls = parts[-3], parts[-2]
            if cls not in names or split not in ("train", "test"):
                continue
            limit = train if split == "train" else test
            if counts[split, cls] >= limit:
                continue
            img = Image.open(io.BytesIO(tar.extractfile(m).read()))
            img = img.convert("L" if grey else "RGB")
            if img.size != (size, size):
                img = img.resize((size, size), Image.BILINEAR)
            _write(out, split, cls, counts[split, cls], img)
            counts[split, cls] += 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="/tmp/jaxdd-sets")
    ap.add_argument("--cifar", default=CIFAR)
    ap.add_argument("--only", nargs="*", help="names of the sets to build (default: all)")
    args = ap.parse_args()
    builders = {
        "digits16px": lambda o: digits(o, 16),
        "digits28px": lambda o: digits(o, 28),
        "cifar5grey": lambda o: cifar(o, args.cifar, classes=5, train=500, test=200, grey=True, size=32),
        "cifar10s16": lambda o: cifar(o, args.cifar, classes=10, train=300, test=100, grey=False, size=16),
        "cifar5last24": lambda o: cifar(o, args.cifar, classes=5, train=400, test=200, grey=False, size=24, first=5),
    }
    for name, build in builders.items():
        if args.only and name not in args.only:
            continue
        folder = os.path.join(args.out, name)
        if os.path.isdir(folder):
            print(f"{folder}: exists, kept")
            continue
        build(folder)
        n = {s: sum(len(f) for _, _, f in os.walk(os.path.join(folder, s))) for s in ("train", "test")}
        print(f"{folder}: {n['train']} train, {n['test']} test images")


if __name__ == "__main__":
    main()
