"""The method interface: what a distillation method gives the one driver, and the registry.

A method is registered once (`register(MethodSpec(...))`) and is then a `--method` choice of the CLI,
a `method=` of `jaxdd.distill`, and has its presets and settings type looked up by name. The driver
(jaxdd/distillation.py) never names a method. See docs/architecture.md and README "Adding a method".
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from jaxdd import synthetic
from jaxdd.errors import JaxddError
from jaxdd.settings import CommonSettings


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DistillState:
    """Everything a distillation needs to continue exactly (checkpointed whole).

    theta / consts: the synthetic set (jaxdd/synthetic.py); opt_state: the outer optimizer's; step:
    outer steps done; key: the run's base key data (step n's key is fold_in(key, n)); method_state:
    whatever pytree the method keeps (truncation schedule state, statistics, ...).
    """

    theta: dict
    consts: dict
    opt_state: Any
    step: jax.Array
    key: jax.Array
    method_state: Any = None


class Method(NamedTuple):
    """A method built for one run.

    init(key, theta, consts) -> DistillState. step(state, batch, key) -> (state, metrics): pure, jitted
    once by the driver. batch(n, key) -> the batch of outer step n (real images, an expert segment, ...),
    a function of (n, key) alone so resumed runs see the same batches. batch_sharding: 'data' (every
    leaf split along its first axis over the mesh) or None (replicated). finalize(state) -> dict of
    arrays for distilled.npz. grow(state, n) -> state: optional host-side hook before step n (a set that
    grows, as Boost-DD's); it must be deterministic in (state, n). report(arrays, score) -> dict: optional
    extra results after the final evaluation, where score(images, labels) evaluates any set under the
    run's protocol (Boost-DD's table of every prefix); written to report.json. members: for tests.
    """

    init: Callable
    step: Callable
    batch: Callable
    batch_sharding: str | None = "data"
    finalize: Callable | None = None
    grow: Callable | None = None
    report: Callable | None = None
    members: Callable | None = None


@dataclasses.dataclass(frozen=True)
class Context:
    """What a method is built from."""

    settings: Any
    model: Any
    dataset: Any
    ipc: int
    steps: int
    seed: int = 0
    mesh: Any = None
    cache_dir: Any = None

    @property
    def num_classes(self) -> int:
        return int(self.dataset.num_classes)

    @property
    def steps_per_pass(self) -> int:
        batch = getattr(self.settings, "real_batch", 0) or len(self.dataset.x_train)
        return max(1, len(self.dataset.x_train) // batch)


def no_presets(dataset_key: str, ipc: int, published: bool) -> dict:
    return {}


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    """A registered method.

    name: the `--method` value. summary: one line for help texts. settings: a frozen dataclass that
    extends `CommonSettings`. build(ctx) -> Method. presets(dataset_key, ipc, published) -> dict of
    setting values (only fields of `settings` are applied; published=True must name the paper's
    values or raise JaxddError). evaluation(settings) -> keyword arguments of `jaxdd.evaluate` (the
    protocol the set is scored with, stored in distilled.npz). resolve(settings) -> settings: the
    method's own rules (e.g. W = T for bptt), applied after every override, once. validate(settings,
    ipc) raises one-line errors.
    """

    name: str
    summary: str
    settings: type = CommonSettings
    build: Callable[[Context], Method] = None
    presets: Callable[[str, int, bool], dict] = no_presets
    evaluation: Callable[[Any], dict] = lambda settings: {}
    resolve: Callable[[Any], Any] = lambda settings: settings
    default_steps: Callable[[str, int, bool], int] = lambda dataset_key, ipc, published: 200
    published_help: str = ""  # which --published presets exist, which are not the authors', their budget


_REGISTRY: dict[str, MethodSpec] = {}


def register(spec: MethodSpec) -> MethodSpec:
    """Add a method (replacing one of the same name); returns it."""
    _REGISTRY[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def available() -> tuple[str, ...]:
    """Names of the registered methods, in registration order."""
    return tuple(_REGISTRY)


def get(name: str) -> MethodSpec:
    """The registered method `name`, or a one-line JaxddError listing the available ones."""
    if name not in _REGISTRY:
        raise JaxddError(f"unknown method '{name}': use one of {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def default_finalize(state: DistillState) -> dict:
    """The set's arrays for distilled.npz (images, labels, row_block, lr where learned)."""
    return synthetic.export(*jax.device_get((state.theta, state.consts)))


def new_state(theta, consts, optimizer, key, method_state=None) -> DistillState:
    """A step-0 state with the outer optimizer's fresh state."""
    return DistillState(theta, consts, optimizer(theta).init(theta), jnp.zeros((), jnp.int32),
                        jax.random.key_data(key), method_state)
