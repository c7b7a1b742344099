"""One SGD step of a ConvNet on a real-sized minibatch: what expert training and evaluation repeat.

    NPROC=1 python -m benchmarks.train_step [--batch 256] [--width 32] [--group 2] [--repeats 5] [--jsonl FILE]

Times (median of --repeats runs after compilation) one step `params - lr * grad(loss)` on a batch of
32x32x3 images, for every combination of: the convolution implementation (`--convs`, models.CONV_IMPLS),
jaxdd's per-jit XLA options on or off (`xla_options.jit` vs plain `jax.jit`), and one network vs a group
of `--group` networks trained at once (`jax.vmap` over stacked parameters, as experts.py and
evaluation.py train theirs). One JSON line per combination; `per_network_s` divides by the group size.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import optax

from jaxdd import models, xla_options


def timed(f, args, repeats: int) -> float:
    jax.block_until_ready(f(*args))  # compile
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(f(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--group", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--convs", nargs="+", default=["native", "xla"], choices=models.CONV_IMPLS)
    ap.add_argument("--jsonl")
    a = ap.parse_args()
    x = jax.random.normal(jax.random.key(0), (a.batch, 32, 32, 3))
    y = jnp.arange(a.batch) % 10
    for conv in a.convs:
        model = models.make_model("convnet", image_shape=(32, 32, 3), num_classes=10, width=a.width, depth=a.depth,
                                  conv=conv)

        def step(params, state):
            def loss(p):
                logits, _ = model.apply(p, state, x, train=True)
                return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

            return jax.tree.map(lambda p, g: p - 0.01 * g, params, jax.grad(loss)(params))

        params, state = model.init(jax.random.key(1))
        stack = lambda t: jax.tree.map(lambda v: jnp.stack([v] * a.group), t)  # noqa: E731
        for options in (True, False):
            jit = xla_options.jit if options else jax.jit
            for group, f, args in ((1, jit(step), (params, state)),
                                   (a.group, jit(jax.vmap(step)), (stack(params), stack(state)))):
                secs = timed(f, args, a.repeats)
                row = dict(conv=conv, xla_options=options, networks=group, batch=a.batch, width=a.width,
                           depth=a.depth, step_s=round(secs, 4), per_network_s=round(secs / group, 4),
                           nproc=os.environ.get("NPROC"), machine=platform.processor() or platform.machine(),
                           jax=jax.__version__, date=time.strftime("%Y-%m-%d %H:%M"))
                print(json.dumps(row), flush=True)
                if a.jsonl:
                    with open(a.jsonl, "a") as fh:
                        fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
