"""Hessian-vector products, Lanczos on pytrees, and AT-BPTT's low-rank Hessian backward.

`hvp` is forward-over-reverse (`jax.jvp` of `jax.grad`): one HVP costs about two gradients and never
forms the Hessian. `lanczos` runs `num_iters` Lanczos steps with full reorthogonalisation on any
symmetric linear map over pytrees and returns the Ritz pairs, largest first. `low_rank_hessian`
builds H ≈ U diag(λ) Uᵀ from HVPs; `low_rank_grad_map` is an inner gradient map whose backward uses
it for the parameters' cotangent (docs/methods/at_bptt.md).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from jaxdd.errors import require
from jaxdd.inner import cross_entropy, default_grad_map, make_step
from jaxdd.unroll import unroll

__all__ = ["hvp", "lanczos", "low_rank_hessian", "low_rank_hvp", "low_rank_grad_map", "inner_loss",
           "window_meta_gradient", "tree_cosine", "low_rank_cosines"]


def hvp(f: Callable[[Any], jax.Array], params, v):
    """H(params) · v for a scalar function f, as a pytree like v (forward-over-reverse)."""
    return jax.jvp(jax.grad(f), (params,), (v,))[1]


def lanczos(matvec: Callable[[Any], Any], v0, num_iters: int, key: jax.Array | None = None):
    """Top Ritz pairs of a symmetric linear map by Lanczos with full reorthogonalisation.

    matvec: v -> A v on arrays or pytrees shaped like v0 (A symmetric). v0: start vector (any
    non-zero norm). Returns (eigvals [num_iters] descending, eigvecs) with eigvecs stacked along a
    new leading axis, same structure as v0: eigvecs[i] is the Ritz vector of eigvals[i], unit norm.
    Jittable (num_iters static). If the Krylov space is exhausted early (num_iters > rank), the extra
    basis vectors are fresh random directions orthogonalised against the basis, so the result stays
    finite; those Ritz values are then eigenvalues of A restricted to new directions. key: draws
    those directions (None: a fixed key, `jax.random.key(0)`).
    """
    require(isinstance(num_iters, int) and num_iters >= 1, f"lanczos num_iters must be a positive int, got {num_iters!r}")
    flat0, unravel = ravel_pytree(v0)
    n = flat0.shape[0]
    require(num_iters <= n, f"lanczos num_iters {num_iters} exceeds the dimension {n}")
    dtype = flat0.dtype

    def mv(x):
        return ravel_pytree(matvec(unravel(x)))[0].astype(dtype)

    def orthogonalise(w, basis):
        # two passes of classical Gram-Schmidt against all basis vectors (unused rows are zero)
        for _ in range(2):
            w = w - basis.T @ (basis @ w)
        return w

    basis = jnp.zeros((num_iters, n), dtype)
    q = flat0 / jnp.linalg.norm(flat0)
    alphas = jnp.zeros((num_iters,), dtype)
    betas = jnp.zeros((num_iters,), dtype)
    key = jax.random.key(0) if key is None else key
    scale = jnp.maximum(jnp.linalg.norm(flat0), 1.0)

    def restart(i, basis):
        # breakdown: a random direction orthogonal to the basis (only computed when needed)
        fresh = orthogonalise(jax.random.normal(jax.random.fold_in(key, i), (n,), dtype), basis)
        return fresh / jnp.linalg.norm(fresh)

    def body(i, carry):
        basis, q, alphas, betas = carry
        basis = basis.at[i].set(q)
        w = mv(q)
        alpha = jnp.vdot(q, w)
        w = orthogonalise(w, basis)
        beta = jnp.linalg.norm(w)
        breakdown = beta <= 1e-10 * scale * jnp.maximum(jnp.abs(alpha), 1.0)
        nxt = jax.lax.cond(breakdown, lambda: restart(i, basis), lambda: w / beta)
        return basis, nxt, alphas.at[i].set(alpha), betas.at[i].set(jnp.where(breakdown, 0.0, beta))

    basis, _, alphas, betas = jax.lax.fori_loop(0, num_iters, body, (basis, q, alphas, betas))
    off = betas[:-1]
    tri = jnp.diag(alphas) + jnp.diag(off, 1) + jnp.diag(off, -1)
    evals, evecs = jnp.linalg.eigh(tri)
    order = jnp.argsort(-evals)
    evals, evecs = evals[order], evecs[:, order]
    ritz = evecs.T @ basis  # [k, n]
    return evals, jax.vmap(unravel)(ritz)


def low_rank_hessian(loss_fn: Callable[[Any], jax.Array], params, k: int, key: jax.Array, *, oversample: int = 10):
    """Rank-k factors (eigvals [k], eigvecs stacked [k, ...] like params) of the Hessian of `loss_fn`
    at `params`: min(k + oversample, dim) Lanczos steps on HVPs from a random start (drawn from `key`),
    keeping the k Ritz pairs of largest |λ| (largest first). Returned under stop_gradient."""
    dim = ravel_pytree(params)[0].shape[0]
    require(isinstance(k, int) and 1 <= k <= dim, f"low-rank Hessian rank k must be in [1, {dim}], got {k!r}")
    k_v0, k_lz = jax.random.split(key)
    flat, unravel = ravel_pytree(params)
    v0 = unravel(jax.random.normal(k_v0, flat.shape, flat.dtype))
    vals, vecs = lanczos(lambda v: hvp(loss_fn, params, v), v0, min(k + oversample, dim), key=k_lz)
    top = jnp.sort(jnp.argsort(-jnp.abs(vals))[:k])  # keep the descending order of Lanczos
    return jax.lax.stop_gradient((vals[top], jax.tree.map(lambda a: a[top], vecs)))


def low_rank_hvp(factors, u):
    """U (λ ⊙ Uᵀ u) for factors (λ [k], U stacked [k, ...]) and a pytree u like one row of U."""
    vals, vecs = factors
    coeff = sum(jnp.tensordot(q, x, axes=x.ndim) for q, x in zip(jax.tree.leaves(vecs), jax.tree.leaves(u)))
    coeff = vals * coeff
    return jax.tree.map(lambda q, x: jnp.tensordot(coeff, q, axes=1).astype(x.dtype), vecs, u)


def inner_loss(model, model_state, x, y) -> Callable[[Any], jax.Array]:
    """params -> mean cross-entropy of `model` on (x, y) in training mode: the inner loss ℓ."""
    model = model.jvp_ready()  # HVPs take forward-mode derivatives of this function
    return lambda params: cross_entropy(model.apply(params, model_state, x, True)[0], y)


def low_rank_grad_map(model, factors):
    """An inner gradient map (jaxdd.inner.GradMap) whose forward is exact and whose backward uses
    H ≈ U diag(λ) Uᵀ for the parameters.

    (params, model_state, x, y) -> (∇_params ℓ, (ℓ, new_model_state)). For cotangents (u, c) on
    (gradient, loss): params get U(λ ⊙ Uᵀu) + c·∇ℓ; x and (soft) y get the exact VJP of
    (x, y) ↦ (∇_params ℓ, ℓ) at fixed params; model_state gets none and the new model state's
    cotangent is dropped (batch-norm statistics are constants). factors = (λ [k], U [k, ...]) from
    `low_rank_hessian`, treated as constants.
    """
    exact = default_grad_map(model)
    factors = jax.lax.stop_gradient(factors)

    def split(params, model_state, x, y):
        grads, (loss, new_state) = exact(params, model_state, x, y)
        return (grads, loss), new_state

    @jax.custom_vjp
    def grad_map(params, model_state, x, y, factors):
        (grads, loss), new_state = split(params, model_state, x, y)
        return grads, (loss, new_state)

    def fwd(params, model_state, x, y, factors):
        (grads, loss), vjp_xy, new_state = jax.vjp(lambda x, y: split(params, model_state, x, y), x, y,
                                                   has_aux=True)
        return (grads, (loss, new_state)), (vjp_xy, grads, factors)

    def bwd(res, cotangent):
        vjp_xy, grads, factors = res
        u, (c, _) = cotangent
        ct_x, ct_y = vjp_xy((u, c))
        ct_params = jax.tree.map(lambda h, g: h + c * g, low_rank_hvp(factors, u), grads)
        return ct_params, None, ct_x, ct_y, None

    grad_map.defvjp(fwd, bwd)
    return lambda params, model_state, x, y: grad_map(params, model_state, x, y, factors)


def window_meta_gradient(model, cfg, theta, consts, carry, xs, real_x, real_y, *, window: int, grad_map=None,
                         remat: bool | str = False):
    """d L(θ_end; real) / d theta through `window` inner steps from `carry` (`jaxdd.unroll.unroll` of
    `jaxdd.inner.make_step(..., grad_map=grad_map)`, xs[t] the key of step carry.t + t), L the mean
    cross-entropy on (real_x, real_y). A reference for the low-rank backward, not the method's estimator."""
    step = make_step(model, cfg, consts, grad_map=grad_map)

    def outer(theta):
        end = unroll(step, carry, theta, xs, prefix=0, window=window, remat=remat)
        return cross_entropy(model.apply(end.params, end.model_state, real_x, True)[0], real_y)

    return jax.grad(outer)(theta)


def tree_cosine(a, b) -> jax.Array:
    """Cosine between two pytrees as flat vectors."""
    fa, fb = ravel_pytree(a)[0], ravel_pytree(b)[0]
    return jnp.vdot(fa, fb) / (jnp.linalg.norm(fa) * jnp.linalg.norm(fb))


def low_rank_cosines(model, cfg, theta, consts, carry, xs, real_x, real_y, factor_batch, *, window: int, ranks,
                     key: jax.Array) -> dict:
    """Diagnostic: cosine between the exact window meta-gradient and the one with the low-rank backward,
    per rank k in `ranks`; factors from the window start (carry.params, carry.model_state) on
    factor_batch = (x, y). Returns {k: cosine}."""
    loss = inner_loss(model, carry.model_state, *factor_batch)
    exact = window_meta_gradient(model, cfg, theta, consts, carry, xs, real_x, real_y, window=window)
    out = {}
    for k in ranks:
        factors = low_rank_hessian(loss, carry.params, k, key)
        approx = window_meta_gradient(model, cfg, theta, consts, carry, xs, real_x, real_y, window=window,
                                      grad_map=low_rank_grad_map(model, factors))
        out[k] = float(tree_cosine(exact, approx))
    return out
