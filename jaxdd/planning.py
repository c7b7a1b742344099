"""Plan a run without running it: the compiled outer step's memory and FLOPs (docs/planning.md).

The method's step is built exactly as the driver builds it (`spec.build(ctx)`, `method.init`,
`method.batch`, `parallel.jit_step`), but on a stand-in of the data set: its training images are a
zero-stride numpy view (4 bytes, whatever the shape), and build, init and batch run inside
`jax.eval_shape`, so every array, the training images put on the devices included, stays abstract.
The step is then traced and compiled for the devices present with `jax.ShapeDtypeStruct` inputs:
`memory_analysis()` gives the bytes per device (arguments + outputs + temporaries − donated
aliases), and the FLOPs are counted on the step's jaxpr (matrix products and convolutions, each loop
body times its trip count: XLA's `cost_analysis()` counts a loop body once, whatever its length).
A loop whose length is only known at run time (the BPTT family's prefix of N untracked steps) is
counted at its expected length (:func:`expected_prefix`). Methods that need more than shapes
(trajectory matching's experts, SelMatch's selection, Boost-DD's growing set) are planned through
:data:`HOOKS`: the same step on a stand-in of the same shapes.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable

import jax
import numpy as np

from jaxdd import experts, forgetting, methods, models, parallel, presets, synthetic, training
from jaxdd.data.dataset import Dataset
from jaxdd.data.facts import Facts
from jaxdd.experts import store
from jaxdd.experts import training as experts_training
from jaxdd.methods import boost, matching, selmatch
from jaxdd.models import make_model


@dataclasses.dataclass(frozen=True)
class Program:
    """One compiled program of a run: bytes per device, FLOPs per call, calls in the run."""

    name: str
    peak_bytes: int
    argument_bytes: int
    output_bytes: int
    temp_bytes: int
    alias_bytes: int
    flops: float
    steps: int
    devices: int = 1
    dynamic_loops: int = 0
    compile_seconds: float = 0.0
    note: str = ""
    resident_bytes: int = 0  # beside the program: the training split the batch sampler keeps on the devices

    @property
    def total_flops(self) -> float:
        return self.flops * self.steps


STEP = "distillation step"


# -- the FLOP count --------------------------------------------------------------------------------


def _sub_jaxprs(params):
    for value in params.values():
        for item in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(item, jax.extend.core.ClosedJaxpr):
                yield item.jaxpr
            elif isinstance(item, jax.extend.core.Jaxpr):
                yield item


def matmul_flops(jaxpr, dynamic_trips: float = 1.0) -> tuple[float, int]:
    """(FLOPs, dynamic loops) of a jaxpr: 2 per multiply-add of every dot_general and convolution, each
    scan body times its length, each while body (a length known only at run time) `dynamic_trips`
    times, each cond at its costliest branch. Elementwise work is not counted (docs/planning.md)."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    total, dynamic = 0.0, 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        out = math.prod(eqn.outvars[0].aval.shape) if eqn.outvars and hasattr(eqn.outvars[0].aval, "shape") else 0
        if name == "dot_general":
            (contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += 2.0 * out * math.prod(lhs[d] for d in contract)
        elif name == "conv_general_dilated":
            rhs = eqn.invars[1].aval.shape
            spec = eqn.params["dimension_numbers"].rhs_spec  # (out features, in features, spatial...)
            total += 2.0 * out * rhs[spec[1]] * math.prod(rhs[d] for d in spec[2:])
        if name == "cond":
            counted = [matmul_flops(b, dynamic_trips) for b in eqn.params["branches"]]
            total += max(c[0] for c in counted)
            dynamic += max(c[1] for c in counted)
            continue
        times = eqn.params["length"] if name == "scan" else dynamic_trips if name == "while" else 1
        dynamic += name == "while"
        for sub in _sub_jaxprs(eqn.params):
            flops, dyn = matmul_flops(sub, dynamic_trips)
            total += times * flops
            dynamic += dyn
    return total, dynamic


def compiled_program(name: str, jitted, args, *, steps: int, devices: int, dynamic_trips: float = 1.0,
                     note: str = "", compile: bool = True, per_call: int = 1) -> Program:
    """Trace, count and compile `jitted(*args)` (abstract args) into a :class:`Program`; compile=False:
    FLOPs only (the trace takes seconds, the compile of a paper-scale step minutes), every byte count 0.
    per_call: units of work in one call (the FLOPs are per unit, `steps` counts units)."""
    t0 = time.perf_counter()
    traced = jitted.trace(*args)
    flops, dynamic = matmul_flops(traced.jaxpr, dynamic_trips)
    sizes = [0, 0, 0, 0]
    if compile:
        mem = traced.lower().compile().memory_analysis()
        sizes = [mem.argument_size_in_bytes, mem.output_size_in_bytes, mem.temp_size_in_bytes, mem.alias_size_in_bytes]
    peak = sizes[0] + sizes[1] + sizes[2] - sizes[3]
    return Program(name, int(peak), *map(int, sizes), flops / devices / per_call, int(steps), devices, dynamic,
                   round(time.perf_counter() - t0, 1), note)


# -- the data set's stand-in -----------------------------------------------------------------------


def placeholder(shape, dtype=np.float32) -> np.ndarray:
    """A read-only array of zeros of any shape that holds one element (a zero-stride view)."""
    return np.broadcast_to(np.zeros((), dtype), tuple(int(s) for s in shape))


def stand_in(facts: Facts, val_fraction: float = 0.0) -> Dataset:
    """A Dataset with the facts' shapes: zero-stride images, labels cycling over the classes."""
    n_val = int(round(val_fraction * facts.num_train)) if val_fraction > 0 else 0
    n_train, c = facts.num_train - n_val, facts.num_classes

    def labels(n):
        return (np.arange(n) % c).astype(np.int32)

    return Dataset(facts.name, placeholder((n_train,) + facts.image_shape), labels(n_train),
                   placeholder((facts.num_test,) + facts.image_shape), labels(facts.num_test), c,
                   tuple(str(i) for i in range(c)), x_val=placeholder((n_val,) + facts.image_shape) if n_val else None,
                   y_val=labels(n_val) if n_val else None)


# -- the methods' stand-ins ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ExpertShapes:
    """The expert store's face with its shapes only: every snapshot a zero vector of D parameters."""

    num_params: int
    num_epochs: int
    num_experts: int
    path: str = ""

    def snapshot(self, expert: int, epoch: int) -> np.ndarray:
        return np.zeros(self.num_params, np.float32)


def _matching(ctx):
    s = ctx.settings
    return matching.build(ctx, ExpertShapes(ctx.model.num_params, s.expert_train_epochs, s.num_experts))


@dataclasses.dataclass(frozen=True)
class Hook:
    """How `jaxdd plan` builds a method's step. build(ctx) -> Method; in_trace: build inside
    `jax.eval_shape` (a build that puts the training images on the devices); rows(ctx) -> the set's
    row_block (None: one learned block); kind(settings) -> the window schedule's kind (BPTT family),
    for the expected prefix; hard_labels: the method starts from hard labels whatever --learn-labels;
    data_on_device: its batches are sampled from the training split kept on every device."""

    build: Callable = None
    in_trace: bool = True
    rows: Callable = lambda ctx: None
    kind: Callable = lambda settings: None
    hard_labels: bool = False
    data_on_device: bool = True
    experts: bool = False


HOOKS = {
    "bptt": Hook(kind=lambda s: "full"),
    "tbptt": Hook(kind=lambda s: "fixed"),
    "rat-bptt": Hook(kind=lambda s: "random"),
    "at-bptt": Hook(kind=lambda s: "random"),  # the adaptive schedule's prefix, as RaT-BPTT's (docs/planning.md)
    # Boost-DD at its largest size: every block present, the step of its inner estimator
    "boost": Hook(build=boost.base_method, kind=lambda s: boost.INNER_METHODS[s.inner_method],
                  rows=lambda ctx: boost.block_rows(ctx.num_classes, ctx.ipc // ctx.settings.block, ctx.settings.block)),
    "mtt": Hook(build=_matching, in_trace=False, data_on_device=False, experts=True),
    # SelMatch's step: matching on the selected window, its harder rows frozen
    "selmatch": Hook(build=_matching, in_trace=False, hard_labels=True, data_on_device=False, experts=True,
                     rows=lambda ctx: selmatch.partial_rows(ctx.num_classes, ctx.ipc, ctx.settings.alpha)),
}


def expected_prefix(settings, kind: str | None) -> float:
    """Expected length of the prefix loop of a BPTT-family step: the population's members run one loop
    as long as the longest prefix, E[max of P draws of U[0, T − W]] ≈ (T − W)·P/(P + 1); fixed: T − W."""
    kind = getattr(settings, "schedule", "") or kind
    if kind is None or kind == "full":
        return 0.0
    gap = settings.unroll_steps - settings.window
    if kind == "fixed":
        return float(gap)
    return gap * settings.population / (settings.population + 1)


def abstract_set(ctx, rows, hard_labels: bool):
    """(theta, consts) of the run's initial set with abstract images (built on 1-pixel images, then
    broadcast inside the trace)."""
    c, ipc = ctx.num_classes, ctx.ipc
    labels = np.repeat(np.arange(c, dtype=np.int32), ipc)
    theta, consts = synthetic.make(np.zeros((c * ipc, 1, 1, 1), np.float32), labels, c, row_block=rows,
                                   learn_labels=ctx.settings.learn_labels and not hard_labels)
    shape = tuple(ctx.dataset.image_shape)
    grow = lambda a: jax.numpy.broadcast_to(a, a.shape[:1] + shape) if a.ndim == 4 else a  # noqa: E731
    return jax.tree.map(grow, theta), jax.tree.map(grow, consts)


def distill_program(spec, settings, model, dataset, ipc: int, steps: int, mesh, cache_dir=None,
                    compile: bool = True) -> Program:
    """The run's jitted outer step, built as the driver builds it, compiled for `mesh` (or one device);
    compile=False: its FLOPs only."""
    hook = HOOKS.get(spec.name, Hook())
    ctx = methods.Context(settings, model, dataset, int(ipc), int(steps), 0, mesh, cache_dir)
    build = hook.build or spec.build
    k_init, k_run = jax.random.split(jax.random.key(0))
    k_batch, _ = jax.random.split(jax.random.fold_in(k_run, 0))
    made, batch = {}, None
    if not hook.in_trace:  # a build that reads no training image, and a batch made on the host: run them
        made["method"] = build(ctx)
        batch = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), made["method"].batch(0, k_batch))

    def abstract_start():
        meth = made["method"] if "method" in made else made.setdefault("method", build(ctx))
        theta, consts = abstract_set(ctx, hook.rows(ctx), hook.hard_labels)
        return meth.init(k_run, theta, consts), batch if batch is not None else meth.batch(0, k_batch)

    state, batch = jax.eval_shape(abstract_start)
    meth = made["method"]
    num_images = int(ipc) * dataset.num_classes if settings.shard_images else None
    jitted = parallel.jit_step(meth.step, mesh, state, num_images=num_images, batch_sharding_kind=meth.batch_sharding)
    key = jax.eval_shape(lambda: jax.random.key(0))
    trips = expected_prefix(settings, hook.kind(settings))
    program = compiled_program(STEP, jitted, (state, batch, key), steps=steps,
                               devices=parallel.num_devices(mesh), dynamic_trips=trips,
                               note=f"prefix loop counted at {trips:.1f} steps" if trips else "", compile=compile)
    resident = dataset.x_train.size * 4 + dataset.y_train.size * 4 if hook.data_on_device and compile else 0
    return dataclasses.replace(program, resident_bytes=int(resident), peak_bytes=program.peak_bytes + int(resident))


def resolve(source: str, facts: Facts, method: str, ipc: int, *, published: bool = False, steps: int | None = None,
            overrides: dict | None = None):
    """(settings, ipc, stand-in dataset, steps) as `jaxdd distill` would resolve them, from the facts."""
    def load(settings):
        return stand_in(facts, settings.val_fraction)

    settings, ipc, dataset = presets.resolve_run(method, str(source), int(ipc), None, overrides or {},
                                                 published=published, load=load)
    steps = presets.default_steps(method, str(source), ipc, published) if steps is None else int(steps)
    return settings, ipc, dataset, steps


def run_model(settings, dataset):
    """The distillation network, as the driver makes it."""
    return make_model(settings.model, image_shape=dataset.image_shape, num_classes=dataset.num_classes,
                      width=settings.width, depth=settings.depth or None, norm=settings.norm)


def evaluation_program(protocol: dict, dataset, num_images: int, learned_lr=None) -> Program:
    """One step of the K evaluation networks trained on a set of `num_images` (the trainer of
    `evaluation.evaluate`, its protocol resolved as there), compiled on one device."""
    kwargs = {k: v for k, v in protocol.items() if k != "protocol" and v is not None}
    proto = training.get_protocol(protocol.get("protocol", "ratbptt"))
    proto = dataclasses.replace(proto, **{k: v for k, v in kwargs.items() if k in proto.__dataclass_fields__})
    size = models.network_defaults(proto.model, dataset.image_shape, proto.width, proto.depth)
    net = training.network(proto.model, dataset.image_shape, dataset.num_classes, size["width"], size["depth"],
                           proto.norm)
    n, c, k = int(num_images), dataset.num_classes, int(proto.num_models)
    per_class = min(max(1, proto.batch_size // c), n // c) if proto.balanced and n > proto.batch_size else 0
    extra = () if proto.select_augment is None and proto.cosine_to is None else (
        proto.select_augment, None if proto.cosine_to is None else float(proto.cosine_to))
    init, run = training.trainer(net, proto.optimizer, float(proto.momentum), float(proto.weight_decay),
                                 int(proto.batch_size), proto.augment, proto.lr_decay_at, float(proto.lr_decay),
                                 per_class, *extra)
    keys = jax.eval_shape(lambda: jax.random.split(jax.random.key(0), k))
    carry = jax.eval_shape(lambda: jax.vmap(lambda key: (lambda p, s: (p, s, training.make_optimizer(
        proto.optimizer, float(proto.momentum), float(proto.weight_decay)).init(p)))(*net.init(key)))(
        jax.random.split(jax.random.key(0), k)))
    sds = jax.ShapeDtypeStruct
    i32 = sds((), np.int32)
    table = sds((c, max(1, n // c)), np.int32) if per_class else sds((1, 1), np.int32)
    args = (carry, keys, sds((n,) + tuple(dataset.image_shape), np.float32), sds((n, c), np.float32), table,
            sds(table.shape[:1], np.int32), sds((n,), np.bool_), i32, i32, sds((), np.float32), i32)
    steps = proto.num_steps(n, len(dataset.x_train))
    return compiled_program(f"evaluation: {k} x {proto.model} ({proto.name})", run, args, steps=steps, devices=1,
                            note=f"{steps} steps of {k} networks on {n} images")


def expert_program(settings, dataset) -> Program:
    """One epoch of a group of experts (`experts.train`'s jitted epoch, vmapped over the group, on the whole
    training split kept on the device), compiled on one device. FLOPs are per expert-epoch; the steps are
    experts × epochs; the peak is the group's (at most 8 experts at once, as `experts.train` groups them)."""
    kw = experts.run_keywords(settings, 0)
    expert_settings = experts.resolve_settings(dataset, **kw)
    net = store.network(dict(image_shape=list(dataset.image_shape), num_classes=dataset.num_classes),
                        expert_settings)
    group = min(kw["num_experts"], experts_training.DEFAULT_GROUP_SIZE)
    n, batch = len(dataset.y_train), expert_settings["batch_size"]
    epoch = experts_training.epoch_fn(net, batch, expert_settings["augment"])
    dtype = experts_training.compute_dtype()

    def start():
        keys = jax.random.split(jax.random.key(0), group)
        params, state = jax.vmap(net.init)(keys)
        return params, state, forgetting.init(n, (group,)), keys

    sds = jax.ShapeDtypeStruct
    args = (*jax.eval_shape(start), sds((n,) + tuple(dataset.image_shape), dtype), sds((n,), np.int32),
            sds((), np.int32), sds((), dtype))
    sgd_steps = -(-n // batch)
    return compiled_program(f"experts: {group} x {expert_settings['model']}, one epoch", epoch, args,
                            steps=kw["num_experts"] * kw["epochs"], devices=1, per_call=group,
                            note=f"per expert-epoch ({sgd_steps} SGD steps of {batch}); steps: {kw['num_experts']} "
                                 f"experts x {kw['epochs']} epochs; peak: {group} experts at once")
