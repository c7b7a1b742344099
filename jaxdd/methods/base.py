"""The method interface: what a distillation method gives the one driver, and the registry.

A method is registered once (`register(MethodSpec(...))`) and is then a `--method` choice of the CLI,
a `method=` of `jaxdd.distill`, and has its presets and settings type looked up by name. The driver
(jaxdd/distillation.py) never names a method. See docs/architecture.md and README "Adding a method".
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, NamedTuple

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
    grows, as Boost-DD's); it must be deterministic in (state, n). report(arrays, score, real) -> dict:
    optional extra results after the final evaluation, where score(images, labels) evaluates any set under
    the run's protocol and real(ipc) is the run's random-real baseline at another IPC (the same draws and
    protocol as the final one; Boost-DD's table of every prefix); written to report.json. members: for tests.
    curriculum: optional, what the plateau rule (jaxdd/stopping.py) moves on at a plateau.
    """

    init: Callable
    step: Callable
    batch: Callable
    batch_sharding: str | None = "data"
    finalize: Callable | None = None
    grow: Callable | None = None
    report: Callable | None = None
    members: Callable | None = None
    curriculum: "Curriculum | None" = None


class Curriculum(NamedTuple):
    """A method's curriculum: `positions` places, and at(state, position) -> the state with the curriculum
    at `position` (host-side, between two steps; the position lives in the checkpointed state)."""

    positions: int
    at: Callable


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
    log: Callable[[str], None] = lambda text: None  # progress messages (the driver's progress lines)
    final_eval: bool = True  # the finished set is scored at `ipc` (a method whose set grows must reach it)
    progress: bool = True  # long phases while building (expert training) show a bar or progress lines

    @property
    def num_classes(self) -> int:
        return int(self.dataset.num_classes)


@dataclasses.dataclass(frozen=True)
class Presets:
    """A method's presets, as data (jaxdd/presets.py looks them up; docs/methods/*.md give the reasons).

    cpu: CPU preset name ("digits", or "images32" for any other small image set; ``presets.cpu_preset``)
    -> setting values, on top of the values every method shares there (``presets.COMMON``).
    cpu_at_ipc: (CPU preset name, IPC) -> values on top of those. cpu_steps: CPU preset name ->
    meta-steps without --steps. published: (data set key, IPC) -> the paper's values (``--published``);
    not_authors: the keys among them that are not in the authors' scripts (values from the paper's
    ranges). published_steps: meta-steps of a published run, a number or a function of (data set key,
    the row's values). source: where the published values come from; budget: one sentence on how
    long a published run lasts, for --help.
    """

    cpu: Mapping[str, dict] = dataclasses.field(default_factory=dict)
    cpu_at_ipc: Mapping[tuple[str, int], dict] = dataclasses.field(default_factory=dict)
    cpu_steps: Mapping[str, int] = dataclasses.field(default_factory=lambda: {"digits": 200, "images32": 200})
    published: Mapping[tuple[str, int], dict] = dataclasses.field(default_factory=dict)
    not_authors: frozenset = frozenset()
    published_steps: int | Callable[[str, dict], int] = 0
    source: str = "the authors' scripts"
    budget: str = ""


def same_ipc(settings, facts, ipc: int) -> int:
    """The default IPC rule: the --ipc given."""
    return ipc


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    """A registered method.

    name: the `--method` value. summary: one line for help texts. settings: a frozen dataclass that
    extends `CommonSettings`. build(ctx) -> Method. presets: its :class:`Presets` table.
    evaluation(settings) -> keyword arguments of `jaxdd.evaluate` (the protocol the set is scored
    with, stored in distilled.npz). resolve(settings) -> settings: the method's own rules (e.g. W = T
    wherever the schedule is full), applied after every override, once; an option the user gave that
    a rule changes is refused (jaxdd/presets.py). ipc(settings, facts, ipc) -> the run's IPC from
    the data set's facts (SelMatch's --ratio); default: the --ipc given.
    """

    name: str
    summary: str
    settings: type = CommonSettings
    build: Callable[[Context], Method] = None
    evaluation: Callable[[Any], dict] = lambda settings: {}
    presets: Presets = Presets()
    resolve: Callable[[Any], Any] = lambda settings: settings
    ipc: Callable[[Any, Any, int], int] = same_ipc


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
