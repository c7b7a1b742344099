"""AT-BPTT's low-rank Hessian backward on a small digits problem: accuracy (cosine to the exact window
meta-gradient) and cost (seconds per meta-gradient with and without it).

    python -m benchmarks.at_bptt_cosine                          # digits preset inner loop: Adam 1e-3
    python -m benchmarks.at_bptt_cosine --optimizer sgd --lr 0.1 # an inner loop where H matters more

Setting: digits 8×8×1 (standardized), ConvNet width 4 (--width) depth 2 (374 parameters), IPC 1 (10 images,
the whole set is every inner batch), T = 40, prefix N = 15, window W = 10, real batch 256, float32.
The factors H ≈ U diag(λ) Uᵀ come from the window start θ_N on the synthetic set
(`jaxdd.hessian.low_rank_hessian`); k = 0 (H replaced by 0: only the exact x-cotangents and the
optimizer's identity path remain) is the reference that shows how much the Hessian term matters;
"stale" uses factors of the largest rank from a different network (another init), as reused factors would be
when the method refreshes them only every K outer steps. Times: the fastest of --repeats jitted calls
after a warm-up (the least disturbed by other processes: the project CPU is shared; compare ratios).
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxdd import data, hessian, inner
from jaxdd.models import make_model
from jaxdd.unroll import run_prefix


def _seconds(fn, *args, repeats):
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return float(np.min(times))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--optimizer", default="adam", choices=inner.INNER_OPTIMIZERS)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--unroll-steps", type=int, default=40)
    ap.add_argument("--prefix", type=int, default=15)
    ap.add_argument("--window", type=int, default=10)
    ap.add_argument("--ranks", default="8,32")
    ap.add_argument("--width", type=int, default=4, help="ConvNet width (full rank is added up to 2000 parameters)")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    ds = data.load("digits")
    x, y = np.asarray(ds.x_train), np.asarray(ds.y_train)
    order = np.concatenate([np.where(y == c)[0][:1] for c in range(10)])
    theta, consts = {"images": jnp.asarray(x[order])}, {"labels": jnp.asarray(y[order])}
    rng = np.random.default_rng(args.seed)
    real = rng.choice(len(x), 256, replace=False)
    real_x, real_y = jnp.asarray(x[real]), jnp.asarray(y[real])
    model = make_model("convnet", image_shape=(8, 8, 1), num_classes=10, width=args.width, depth=2)
    cfg = inner.InnerConfig(optimizer=args.optimizer, lr=args.lr, ipc=1, num_classes=10,
                            total_steps=args.unroll_steps)
    key = jax.random.key(args.seed)
    k_init, k_steps, k_fac, k_other = jax.random.split(key, 4)
    xs = jax.random.split(k_steps, args.unroll_steps)
    step = inner.make_step(model, cfg, consts)

    def window_start(k):
        params, state = model.init(k)
        return run_prefix(step, inner.init_carry(params, state, cfg), theta, xs, args.prefix)

    carry = window_start(k_init)
    n = model.num_params
    ranks = [int(r) for r in args.ranks.split(",")] + ([n] if n <= 2000 else [])
    wxs = xs[args.prefix:]

    def factors_at(c, k, key):
        loss = hessian.inner_loss(model, c.model_state, theta["images"], consts["labels"])
        return hessian.low_rank_hessian(loss, c.params, k, key)

    @jax.jit
    def exact_fn(theta, carry, wxs, real_x, real_y):
        return hessian.window_meta_gradient(model, cfg, theta, consts, carry, wxs, real_x, real_y,
                                            window=args.window, remat="full")

    @jax.jit
    def low_rank_fn(theta, carry, wxs, real_x, real_y, factors):
        return hessian.window_meta_gradient(model, cfg, theta, consts, carry, wxs, real_x, real_y,
                                            window=args.window, remat="full",
                                            grad_map=hessian.low_rank_grad_map(model, factors))

    call = (theta, carry, wxs, real_x, real_y)
    exact = exact_fn(*call)
    cosines, factor_seconds = {}, {}
    zero = (jnp.zeros((1,)), jax.tree.map(lambda a: jnp.zeros((1,) + a.shape, a.dtype), carry.params))
    cosines["0"] = float(hessian.tree_cosine(exact, low_rank_fn(*call, zero)))
    for k in ranks:
        fac_fn = jax.jit(lambda c, key, k=k: factors_at(c, k, key))
        factors = fac_fn(carry, k_fac)
        factor_seconds[str(k)] = _seconds(fac_fn, carry, k_fac, repeats=args.repeats)
        cosines[str(k)] = float(hessian.tree_cosine(exact, low_rank_fn(*call, factors)))
    stale = factors_at(window_start(k_other), ranks[-1], k_fac)
    result = dict(
        setting=dict(dataset="digits", model=f"convnet w{args.width} d2", params=n, ipc=1,
                     unroll_steps=args.unroll_steps, prefix=args.prefix, window=args.window, real_batch=256,
                     optimizer=args.optimizer, lr=args.lr, dtype="float32", backend=jax.default_backend()),
        cosine=cosines,
        cosine_stale=float(hessian.tree_cosine(exact, low_rank_fn(*call, stale))),
        seconds_exact=_seconds(exact_fn, *call, repeats=args.repeats),
        seconds_low_rank={str(k): _seconds(low_rank_fn, *call, factors_at(carry, k, k_fac), repeats=args.repeats)
                          for k in ranks},
        seconds_factors=factor_seconds,
        note="meta-gradient = window VJP from the window start (prefix excluded); shared 2-core CPU",
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
