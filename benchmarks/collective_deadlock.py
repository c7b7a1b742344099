"""Independent collectives on 8 simulated CPU devices, dispatched ahead: the deadlock behind issue 29's abort.

    python benchmarks/collective_deadlock.py [CHAINS] [CALLS]      (CHAINS=24, CALLS=600)

One jitted shard_map program holds CHAINS independent chains, each a matmul then an all-gather or an
all-reduce; it is called CALLS times without waiting. XLA runs each device's collective thunks on its
intra-op pool (max(NPROC or all cores, devices) threads: 8 on a 2-core machine), and a waiting collective
holds its thread; when every thread waits while a late device's collective has none, nothing moves until
XLA's rendezvous aborts the process (40 s). jaxdd.xla_options.configure_cpu sizes the pool at 4 threads per
simulated device (NPROC=32 for 8). Results in benchmarks/results/collective_deadlock.md.
"""

import os
import sys
import time

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402


def chains(xs):
    outs = []
    for i, x in enumerate(xs):
        y = jnp.tanh(x @ x.T) * (i + 1)
        outs.append(jax.lax.psum(y, "d") if i % 2 else jax.lax.all_gather(y, "d").sum(0))
    return outs


def main(num_chains: int = 24, calls: int = 600) -> None:
    mesh = jax.make_mesh((jax.device_count(),), ("d",))
    step = jax.jit(jax.shard_map(chains, mesh=mesh, in_specs=P("d"), out_specs=P(), check_vma=False))
    xs = [jax.device_put(jnp.ones((mesh.size * (16 + i), 16 + i)), NamedSharding(mesh, P("d")))
          for i in range(num_chains)]
    start = time.perf_counter()
    for _ in range(calls):
        outs = step(xs)
    jax.block_until_ready(outs)
    print(f"ok: {calls} calls of {num_chains} chains on {mesh.size} devices in {time.perf_counter() - start:.1f} s "
          f"(NPROC={os.environ.get('NPROC', 'unset')})", flush=True)


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
