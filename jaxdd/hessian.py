"""Hessian-vector products and Lanczos on pytrees (AT-BPTT's low-rank Hessian builds on these).

`hvp` is forward-over-reverse (`jax.jvp` of `jax.grad`): one HVP costs about two gradients and never
forms the Hessian. `lanczos` runs `num_iters` Lanczos steps with full reorthogonalisation on any
symmetric linear map over pytrees and returns the Ritz pairs, largest first.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from jaxdd.errors import require

__all__ = ["hvp", "lanczos"]


def hvp(f: Callable[[Any], jax.Array], params, v):
    """H(params) · v for a scalar function f, as a pytree like v (forward-over-reverse)."""
    return jax.jvp(jax.grad(f), (params,), (v,))[1]


def lanczos(matvec: Callable[[Any], Any], v0, num_iters: int):
    """Top Ritz pairs of a symmetric linear map by Lanczos with full reorthogonalisation.

    matvec: v -> A v on arrays or pytrees shaped like v0 (A symmetric). v0: start vector (any
    non-zero norm). Returns (eigvals [num_iters] descending, eigvecs) with eigvecs stacked along a
    new leading axis, same structure as v0: eigvecs[i] is the Ritz vector of eigvals[i], unit norm.
    Jittable (num_iters static). If the Krylov space is exhausted early (num_iters > rank), the extra
    basis vectors are fresh random directions orthogonalised against the basis, so the result stays
    finite; those Ritz values are then eigenvalues of A restricted to new directions.
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
    key = jax.random.key(0)
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
