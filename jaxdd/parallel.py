"""Device mesh and shardings: the real batch and the inner-network population over a 'data' axis.

The synthetic set and the outer optimizer state are replicated (or split along the image axis with
``shard_images``, for sets too large to copy to every device); the real batch and the population of
inner networks are split along the 'data' axis. The outer step is one `jax.jit` with in/out
shardings, and `jax.lax.with_sharding_constraint` inside it pins the population's layout; XLA
inserts the all-reduce that averages the members' meta-gradients. The same code runs on one device
(mesh None), on 8 fake CPU devices in the tests, on a GPU node, or over hosts after
`jax.distributed.initialize()` (see the README).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxdd import xla_options
from jaxdd.errors import JaxddError, require

__all__ = ["make_mesh", "num_devices", "put", "replicated", "batch_sharding", "put_dataset",
           "state_shardings", "constrain_population", "check_divisible", "jit_step", "initialize_distributed"]


def initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> None:
    """Join a multi-process run (`jax.distributed.initialize`): on SLURM or a TPU pod slice the
    arguments are read from the environment; elsewhere give the coordinator's host:port, the number of
    processes and this process's id (also JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID).
    CPU devices talk through gloo collectives. Call before any other JAX work; afterwards
    `jax.devices()` lists every process's devices.
    """
    import os

    coordinator = coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS")
    num_processes = num_processes if num_processes is not None else _env_int("JAX_NUM_PROCESSES")
    process_id = process_id if process_id is not None else _env_int("JAX_PROCESS_ID")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(coordinator, num_processes, process_id)
    except (RuntimeError, ValueError) as err:
        raise JaxddError("jax.distributed.initialize failed (" + " ".join(str(err).split())[:200]
                         + "): run under SLURM or on a TPU pod slice, or set JAX_COORDINATOR_ADDRESS, "
                           "JAX_NUM_PROCESSES and JAX_PROCESS_ID") from None


def _env_int(name: str) -> int | None:
    import os

    value = os.environ.get(name)
    return int(value) if value not in (None, "") else None


def make_mesh(devices: int | None = None) -> jax.sharding.Mesh:
    """A 1-D mesh with axis 'data' over the first `devices` devices (default: all, every host's)."""
    available = jax.devices()
    n = len(available) if devices in (None, 0) else int(devices)
    require(1 <= n <= len(available), f"--devices {devices} is not available: there are {len(available)} "
                                      f"device(s) ({available[0].platform}); use --devices {len(available)} or fewer")
    return jax.make_mesh((n,), ("data",), devices=available[:n], axis_types=(jax.sharding.AxisType.Auto,))


def num_devices(mesh) -> int:
    return 1 if mesh is None else int(mesh.shape["data"])


def replicated(mesh):
    return NamedSharding(mesh, P())


def batch_sharding(mesh):
    return NamedSharding(mesh, P("data"))


def check_divisible(mesh, *, real_batch: int, population: int) -> None:
    """Raise a one-line JaxddError unless the real batch (and so each member's slice) splits evenly."""
    n = num_devices(mesh)
    require(real_batch % n == 0, f"--real-batch {real_batch} must be a multiple of --devices {n}")
    if population % n:
        require((real_batch // population) % n == 0,
                f"with --population {population} not a multiple of --devices {n}, each network's real batch "
                f"({real_batch // population}) is split over the devices and must be a multiple of {n}: "
                f"change --real-batch, --population or --devices")


def put(tree, shardings):
    """Place a host-identical pytree on (possibly several hosts') devices with the given shardings.

    One process: `jax.device_put`. Several (after `jax.distributed.initialize`): every process holds
    the same values (same seed, same data), and each fills in the shards of its own devices.
    """
    if jax.process_count() == 1:
        return jax.device_put(tree, shardings)
    if not isinstance(shardings, jax.sharding.Sharding):
        return jax.tree.map(lambda x, s: put(x, s), tree, shardings)

    def one(x):
        if jax.dtypes.issubdtype(getattr(x, "dtype", None), jax.dtypes.prng_key):  # typed PRNG keys
            return jax.random.wrap_key_data(one(jax.random.key_data(x)), impl=jax.random.key_impl(x))
        host = np.asarray(jax.device_get(x))
        return jax.make_array_from_callback(host.shape, shardings, lambda index: host[index])

    return jax.tree.map(one, tree)


def gather(x):
    """A host numpy copy of a (possibly several processes') array: every process gets all of it."""
    if jax.process_count() == 1 or x.is_fully_addressable:
        return np.asarray(jax.device_get(x))
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def put_dataset(mesh, x, y):
    """The training arrays on the devices (replicated over the mesh, or on the default device)."""
    if mesh is None:
        return jnp.asarray(x), jnp.asarray(y)
    return put((np.asarray(x), np.asarray(y)), replicated(mesh))


def state_shardings(mesh, state, *, num_images: int | None = None):
    """Shardings for a distillation state: replicated, except (with `num_images`) every array whose
    leading axis is the synthetic set's image axis, split over 'data' (images, learned labels, their
    optimizer moments) when the count divides evenly."""
    rep = replicated(mesh)
    n = num_devices(mesh)

    def one(x):
        if num_images and getattr(x, "ndim", 0) >= 1 and x.shape[0] == num_images and num_images % n == 0:
            return batch_sharding(mesh)
        return rep

    return jax.tree.map(one, state)


def constrain_population(mesh, inputs: dict, population: int, *, rows=()):
    """Pin the layout of the population's inputs (a dict of arrays with leading axis P) inside jit.

    P a multiple of the device count: members are split over 'data' (each device trains P/n inner
    networks on its own slice of the real batch). Otherwise every member runs on every device and
    only the entries named in `rows` (the real batch, [P, rows, ...]) are split along their axis 1:
    the outer loss is data-parallel.
    """
    if mesh is None:
        return inputs
    if population % num_devices(mesh) == 0:
        return jax.lax.with_sharding_constraint(inputs, batch_sharding(mesh))
    split_rows = NamedSharding(mesh, P(None, "data"))
    return {k: jax.lax.with_sharding_constraint(v, split_rows) if k in rows else v for k, v in inputs.items()}


def jit_step(step, mesh, state, *, num_images: int | None = None, batch_sharding_kind: str | None = "data"):
    """jax.jit of an outer step(state, batch, key) -> (state, metrics) with the state donated.

    With a mesh: the state per `state_shardings`, every leaf of the batch split along 'data'
    (batch_sharding_kind "data") or replicated (None), metrics replicated. Compiled with jaxdd's XLA
    options for the backend (`xla_options.compiler_options`).
    """
    if mesh is None:
        return xla_options.jit(step, donate_argnums=0)
    rep = replicated(mesh)
    batch_sh = batch_sharding(mesh) if batch_sharding_kind == "data" else rep
    state_sh = state_shardings(mesh, state, num_images=num_images)
    return xla_options.jit(step, in_shardings=(state_sh, batch_sh, rep), out_shardings=(state_sh, rep),
                           donate_argnums=0)
