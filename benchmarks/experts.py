"""Expert training throughput (images/s) and storage per expert.

    python -m benchmarks.experts                                  # digits, ConvNet w32, 4 experts × 4 epochs
    python -m benchmarks.experts --dataset /data/cifar10-jpeg.tar.xz --experts 2 --epochs 1

Trains with `jaxdd.experts.train` into a temporary folder (DSA on, SGD lr 0.01, batch 256) and prints
one JSON object. `compile_s` is an ahead-of-time compile of the same jitted epoch (same shapes),
timed before training; `first_epoch_s` includes the jit's own compile; `steady_epoch_s` is the
median of the later epochs (needs --epochs >= 2), else first_epoch_s − compile_s as an estimate.
images_per_s counts images × experts (every expert sees every training image once per epoch).
Wall times on a shared machine are upper bounds.
"""

import argparse
import json
import os
import platform
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxdd import data, experts
from jaxdd.experts import store as expert_store
from jaxdd.experts import training


def aot_compile_seconds(dataset, settings, group: int) -> float:
    """Seconds to lower and compile one epoch for a group of ``group`` experts (nothing runs)."""
    net = training.network(experts.fingerprint(dataset), settings)
    step = training.epoch_fn(net, settings["batch_size"], settings["augment"])
    params, state, keys = training.init_group(net, 0, range(group))
    forget = experts.forgetting_init(len(dataset.y_train), (group,))
    x, y = jnp.asarray(dataset.x_train, jnp.float32), jnp.asarray(dataset.y_train, jnp.int32)
    start = time.perf_counter()
    step.lower(params, state, forget, keys, x, y, jnp.int32(0), jnp.float32(0.01)).compile()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--experts", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=None)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--depth", type=int, default=None)
    parser.add_argument("--dtype", default="float16", choices=experts.DTYPES)
    parser.add_argument("--augment", default="dsa")
    args = parser.parse_args()

    t = time.perf_counter()
    dataset = data.load(args.dataset)
    load_s = time.perf_counter() - t
    settings = experts.resolve_settings(dataset, num_experts=args.experts, epochs=args.epochs, width=args.width,
                                        depth=args.depth, augment=args.augment, dtype=args.dtype)
    group = min(args.group_size or experts.DEFAULT_GROUP_SIZE, args.experts)
    compile_s = aot_compile_seconds(dataset, settings, group)
    stamps = []
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        store = experts.train(dataset, out_dir=out, group_size=group, progress=False,
                              on_epoch=lambda info: stamps.append(time.perf_counter()), **settings)
        total_s = time.perf_counter() - t0
        disk = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out) if f.startswith("group_")
                   and f.endswith(".npy") and "forgetting" not in f)
    per_epoch = np.diff([t0] + stamps)
    first = float(per_epoch[0])
    later = [float(d) for i, d in enumerate(per_epoch) if i % args.epochs]  # not a group's first epoch
    steady = float(np.median(later)) if later else max(first - compile_s, 1e-9)
    n = len(dataset.y_train)
    print(json.dumps({
        "dataset": args.dataset, "num_train": n, "image_shape": list(dataset.image_shape),
        "model": "convnet", "width": store.settings["width"], "depth": store.settings["depth"] or "default",
        "num_params": store.num_params, "experts": args.experts, "group_size": group, "epochs": args.epochs,
        "augment": args.augment, "dtype": args.dtype, "load_s": round(load_s, 2), "compile_s": round(compile_s, 2),
        "first_epoch_s": round(first, 2), "steady_epoch_s": round(steady, 3),
        "steady_is_estimate": not later, "total_train_s": round(total_s, 2),
        "images_per_s": round(group * n / steady, 1),
        "bytes_per_expert": (args.epochs + 1) * store.num_params
        * np.dtype(expert_store.storage_dtype(args.dtype)).itemsize,
        "bytes_on_disk": disk, "backend": jax.default_backend(), "devices": jax.device_count(),
        "cpu_count": os.cpu_count(), "machine": platform.processor() or platform.machine(),
        "note": "shared machine: 2 CPU cores used by several jobs at once" if jax.default_backend() == "cpu" else "",
    }, sort_keys=True))


if __name__ == "__main__":
    main()
