"""Inner training on the synthetic set: one pure step `step(carry, theta, key) -> carry` built on optax.

The carry (`InnerState`) holds the network's parameters, its batch-norm state, the inner optimizer
state, the step counter and the per-step gradient norms (AT-BPTT's statistics). `theta` and
`consts` are the learned and the fixed parts of the synthetic set (jaxdd/synthetic.py); `consts` is
bound when the step is built inside a traced function (so it is an argument of the jitted step,
never a constant).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from jaxdd import synthetic
from jaxdd.augment import get_augment
from jaxdd.errors import require
from jaxdd.models import Model
from jaxdd.optim import inner_adam_direction

INNER_OPTIMIZERS = ("adam", "sgd", "momentum")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class InnerState:
    """Carry of the inner training loop."""

    params: Any
    model_state: Any
    opt_state: Any
    t: jax.Array  # int32 scalar: index of the next inner step
    grad_norms: jax.Array  # [T] global L2 norm of the inner gradient at each step (0 where not run)


@dataclasses.dataclass(frozen=True)
class InnerConfig:
    """Static settings of the inner training loop."""

    optimizer: str = "adam"
    adam: str = "torch"  # torch | higher | optax (jaxdd/optim.py, docs/inner_adam.md)
    lr: float = 1e-3  # used unless theta carries a learnable "lr"
    momentum: float = 0.9
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    eps_root: float = 1e-8  # adam="optax" only: > 0, or its meta-gradient is NaN at exactly-zero gradients
    ipc: int = 1
    num_classes: int = 10
    per_class: int | None = None  # images of each class per inner batch (None: all ipc)
    classes_per_step: int | None = None  # classes per inner batch (None: all)
    chunk: int | None = None  # MTT authors' sampler: chunks of this many rows of a shuffled set (consts["chunk_key"])
    augment: str = "none"
    total_steps: int = 1  # length of the grad_norms table

    def __post_init__(self):
        require(self.optimizer in INNER_OPTIMIZERS,
                f"unknown inner optimizer '{self.optimizer}': use one of {', '.join(INNER_OPTIMIZERS)}")
        require(self.per_class is None or 1 <= self.per_class <= self.ipc,
                f"inner per_class {self.per_class} must be between 1 and ipc {self.ipc}")
        require(self.classes_per_step is None or 1 <= self.classes_per_step <= self.num_classes,
                f"inner classes_per_step {self.classes_per_step} must be between 1 and {self.num_classes}")
        n = self.ipc * self.num_classes
        require(self.chunk is None or 1 <= self.chunk <= n,
                f"synthetic batch {self.chunk} must be between 1 and the set's {n} images: choose another --batch-syn")


def direction(cfg: InnerConfig) -> optax.GradientTransformation:
    """The inner optimizer without its learning rate: updates are ``-lr * direction``."""
    if cfg.optimizer == "adam":
        return inner_adam_direction(cfg.adam, cfg.b1, cfg.b2, cfg.eps, eps_root=cfg.eps_root)
    if cfg.optimizer == "momentum":
        return optax.trace(decay=cfg.momentum)
    return optax.identity()


def cross_entropy(logits, labels):
    """Mean cross-entropy; `labels` are int class ids [B] or soft targets [B, C] (−Σ y log softmax)."""
    if labels.ndim == logits.ndim - 1:
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return -(labels * jax.nn.log_softmax(logits)).sum(-1).mean()


def soft_labels(labels, num_classes: int):
    """Labels as soft targets [B, C]: int class ids one-hot, soft targets unchanged."""
    return jax.nn.one_hot(labels, num_classes) if labels.ndim == 1 else labels


def accuracy(logits, labels):
    """Fraction of argmax predictions equal to the (hard or argmax of soft) labels."""
    if labels.ndim == logits.ndim:
        labels = labels.argmax(-1)
    return (logits.argmax(-1) == labels).mean()


GradMap = Callable[..., tuple[Any, tuple[jax.Array, Any]]]


def default_grad_map(model: Model) -> GradMap:
    """∇_θ ℓ: (params, model_state, x, y) -> (grads, (loss, new_model_state))."""

    def loss_fn(params, model_state, x, y):
        logits, new_state = model.apply(params, model_state, x, True)
        loss = cross_entropy(logits, y)
        return loss, (loss, new_state)

    return jax.grad(loss_fn, has_aux=True)


def _chunk_position(t, cfg: InnerConfig):
    """(set size n, chunks per pass, first row of step t's chunk in the pass's shuffled list): chunks taken
    from the end, as the authors pop them; the last one short when cfg.chunk does not divide n."""
    n = cfg.ipc * cfg.num_classes
    per = -(-n // cfg.chunk)
    return n, per, (per - 1 - t % per) * cfg.chunk


def chunk_batch(chunk_key, t, cfg: InnerConfig):
    """Rows of inner step t under MTT's authors' sampler: the whole set shuffled (from `chunk_key`, the
    outer step's), cut into chunks of cfg.chunk taken in turn without replacement, reshuffled when used
    up; not class-balanced. Chunks are taken from the end of the shuffled list, as the authors pop them,
    so where cfg.chunk does not divide the set the short chunk comes first in each pass; its rows are
    padded to cfg.chunk with rows of the next chunk (`chunk_weights` gives them weight 0)."""
    n, per, start = _chunk_position(t, cfg)
    perm = jax.random.permutation(jax.random.fold_in(chunk_key, t // per), n)
    padded = jnp.concatenate([perm, perm[:cfg.chunk]])  # a short chunk's padding: valid rows, weight 0
    return jax.lax.dynamic_slice(padded, (start,), (cfg.chunk,))


def chunk_weights(t, cfg: InnerConfig):
    """Per-row loss weights of `chunk_batch`'s rows at step t, scaled so that the weighted mean over the
    padded chunk is the plain mean over its valid rows (all ones when cfg.chunk divides the set)."""
    n, _, start = _chunk_position(t, cfg)
    valid = jnp.minimum(cfg.chunk, n - start)
    return (jnp.arange(cfg.chunk) < valid) * (cfg.chunk / valid)


def sample_inner_batch(key, cfg: InnerConfig):
    """Row indices of one inner batch in a class-major synthetic set (row = class·ipc + j)."""
    per_class = cfg.per_class or cfg.ipc
    n_cls = cfg.classes_per_step or cfg.num_classes
    k_cls, k_img = jax.random.split(key)
    if n_cls == cfg.num_classes:
        classes = jnp.arange(cfg.num_classes)
    else:
        classes = jax.random.permutation(k_cls, cfg.num_classes)[:n_cls]
    if per_class == cfg.ipc:
        within = jnp.broadcast_to(jnp.arange(cfg.ipc), (n_cls, cfg.ipc))
    else:
        keys = jax.random.split(k_img, n_cls)
        within = jax.vmap(lambda k: jax.random.permutation(k, cfg.ipc)[:per_class])(keys)
    return (classes[:, None] * cfg.ipc + within).reshape(-1)


def init_carry(params, model_state, cfg: InnerConfig) -> InnerState:
    """Fresh inner state: optimizer state from `direction(cfg)`, step 0, zeroed statistics."""
    return InnerState(params, model_state, direction(cfg).init(params), jnp.zeros((), jnp.int32),
                      jnp.zeros((max(cfg.total_steps, 1),), jnp.float32))


def make_step(model: Model, cfg: InnerConfig, consts, *, grad_map: GradMap | None = None,
              assemble=synthetic.assemble):
    """Build one inner step `step(carry, theta, key) -> carry` over the synthetic set.

    Each step draws an inner batch (`sample_inner_batch`), augments it (cfg.augment), computes the
    inner gradient with `grad_map` (replaceable, e.g. by AT-BPTT's low-rank custom_vjp) and applies
    ``-lr * direction``. The gradient norm is written to ``carry.grad_norms[carry.t]``.
    """
    grad_map = grad_map or default_grad_map(model)
    aug = get_augment(cfg.augment)
    opt = direction(cfg)

    def step(carry: InnerState, theta, key) -> InnerState:
        images, labels, lr = assemble(theta, consts)
        lr = cfg.lr if lr is None else lr
        k_batch, k_aug = jax.random.split(key)
        idx = (sample_inner_batch(k_batch, cfg) if cfg.chunk is None
               else chunk_batch(consts["chunk_key"], carry.t, cfg))
        x, y = aug(images[idx], k_aug), labels[idx]
        if cfg.chunk is not None and (cfg.ipc * cfg.num_classes) % cfg.chunk:  # a short chunk: its padding weighs 0
            y = soft_labels(y, cfg.num_classes) * chunk_weights(carry.t, cfg)[:, None].astype(images.dtype)
        grads, (_, new_state) = grad_map(carry.params, carry.model_state, x, y)
        gnorm = jax.lax.stop_gradient(optax.tree.norm(grads)).astype(carry.grad_norms.dtype)
        updates, opt_state = opt.update(grads, carry.opt_state, carry.params)
        params = jax.tree.map(lambda p, u: p - lr * u, carry.params, updates)
        norms = carry.grad_norms.at[jnp.minimum(carry.t, carry.grad_norms.shape[0] - 1)].set(gnorm)
        return InnerState(params, new_state, opt_state, carry.t + 1, norms)

    return step
