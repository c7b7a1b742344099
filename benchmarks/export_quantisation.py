"""What the PNG export's quantisation (and clipping) costs: a distilled set against its PNG export read back.

    python -m benchmarks.export_quantisation RUN/distilled.npz

Exports RUN/distilled.npz as PNG (`jaxdd export --format png`), reads the PNGs back through jaxdd's folder
loader (the export as train/ and test/), applies the data set's preprocessing again and scores both sets
under the protocol the set records, with the same seed. Results: docs/data.md ("Export").
"""

import shutil
import sys
import tempfile

import numpy as np

from jaxdd import data, evaluation, export, rundir


def main(file):
    d = rundir.load_distilled(file)
    record = d["settings"]
    ds = data.load(record["dataset"], normalize=record["normalize"],
                   val_fraction=record["settings"].get("val_fraction", 0.1), seed=0)
    tmp = tempfile.mkdtemp()
    export.export(d, "png", f"{tmp}/png", ds.class_names, ds.preprocessing)
    shutil.copytree(f"{tmp}/png", f"{tmp}/tree/train")
    shutil.copytree(f"{tmp}/png", f"{tmp}/tree/test")
    back = data.load(f"{tmp}/tree", normalize="none", cache_dir=f"{tmp}/cache")
    images = np.asarray(ds.preprocessing.apply(back.x_train), np.float32)
    labels = np.asarray(d["labels"]) if np.asarray(d["labels"]).ndim == 2 else back.y_train
    kw = dict(record["evaluation"], learned_lr=d["lr"], rows=d["row_block"], seed=int(record.get("seed", 0)))
    for what, x in (("distilled.npz", d["images"]), ("png export read back", images)):
        r = evaluation.evaluate(x, labels, ds, **kw)
        print(f"{what}: test accuracy {100 * r['accuracy_mean']:.2f} ± {100 * r['accuracy_std']:.2f} % "
              f"({r['num_models']} networks, {r['steps']} steps); max |input difference| "
              f"{float(np.abs(x - d['images']).max()):.4f}")
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main(sys.argv[1])
