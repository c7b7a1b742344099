"""Device mesh and shardings: the real batch and the inner-network population over a 'data' axis.

The synthetic set and the outer optimizer state are replicated; the real batch (and so the
population members, each of which gets its own slice of it) is split along the 'data' axis. The
outer step is one `jax.jit` with in/out shardings: XLA inserts the all-reduce that averages the
population's meta-gradients.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxdd.errors import require


def make_mesh(devices: int | None = None) -> jax.sharding.Mesh:
    """A 1-D mesh with axis 'data' over the first `devices` local devices (default: all)."""
    available = jax.devices()
    n = len(available) if devices in (None, 0) else int(devices)
    require(1 <= n <= len(available), f"--devices {devices} is not available: this host has {len(available)} "
                                      f"device(s) ({available[0].platform})")
    return jax.make_mesh((n,), ("data",), devices=available[:n],
                         axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh):
    return NamedSharding(mesh, P())


def batch_sharding(mesh):
    return NamedSharding(mesh, P("data"))


def put_dataset(mesh, x, y):
    """The training arrays on the devices (replicated over the mesh, or on the default device)."""
    if mesh is None:
        return jnp.asarray(x), jnp.asarray(y)
    return jax.device_put((x, y), replicated(mesh))


def replicate(mesh, tree):
    """`tree` replicated over the mesh (unchanged without a mesh)."""
    return tree if mesh is None else jax.device_put(tree, replicated(mesh))


def jit_step(step, mesh, state):
    """jax.jit of an outer step(state, batch, key): state replicated, batch split along 'data'."""
    if mesh is None:
        return jax.jit(step, donate_argnums=0)
    rep, split = replicated(mesh), batch_sharding(mesh)
    state_sh = jax.tree.map(lambda _: rep, state)
    return jax.jit(step, in_shardings=(state_sh, (split, split), rep), out_shardings=(state_sh, rep),
                   donate_argnums=0)
