"""Time the first (decode) and the cached load of an image archive.

    python -m benchmarks.load_time [ARCHIVE] [--normalize standardize]

Uses a fresh temporary cache directory, so the first load always decodes. Prints wall and CPU
time of this process (on a shared machine the wall time can be much larger than the CPU time).
"""

import argparse
import os
import tempfile
import time

from jaxdd import data

DEFAULT = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "cifar10-jpeg.tar.xz")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("archive", nargs="?", default=os.path.normpath(DEFAULT))
    parser.add_argument("--normalize", default="standardize", choices=data.NORMALIZATIONS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        for label in ("first load (decode + write cache)", "cached load"):
            t, c = time.perf_counter(), time.process_time()
            ds = data.load(args.archive, normalize=args.normalize, cache_dir=cache)
            dt, dc = time.perf_counter() - t, time.process_time() - c
            print(f"{label}: {dt:.2f} s wall, {dc:.2f} s CPU  [{ds.name}: train {ds.x_train.shape}, test {ds.x_test.shape}, "
                  f"{ds.num_classes} classes, normalize={args.normalize}]")
            del ds
        t = time.perf_counter()
        data.load_raw(args.archive, cache_dir=cache)
        print(f"cached load_raw (no normalisation/validation): {time.perf_counter() - t:.2f} s")


if __name__ == "__main__":
    main()
