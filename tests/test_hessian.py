"""hvp against the dense Hessian, Lanczos against dense eigh (float64), on arrays and pytrees."""

import chex
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdd


def _quadratic_and_more(params):
    # a non-quadratic scalar function of a pytree
    a, b = params["a"], params["b"]
    return jnp.sum(jnp.sin(a) * a**2) + jnp.sum(jnp.outer(a, b) ** 2) + jnp.sum(jnp.exp(0.1 * b))


def test_hvp_matches_dense_hessian():
    with jax.enable_x64(True):
        params = {"a": jnp.linspace(-1.0, 1.0, 5), "b": jnp.linspace(0.5, 2.0, 3)}
        v = {"a": jnp.arange(5.0) - 2.0, "b": jnp.array([1.0, -0.5, 0.25])}
        flat, unravel = jax.flatten_util.ravel_pytree(params)
        dense = jax.hessian(lambda x: _quadratic_and_more(unravel(x)))(flat)
        got = jaxdd.hvp(_quadratic_and_more, params, v)
        chex.assert_trees_all_equal_shapes(got, v)
        np.testing.assert_allclose(jax.flatten_util.ravel_pytree(got)[0], dense @ jax.flatten_util.ravel_pytree(v)[0],
                                   rtol=1e-12, atol=1e-12)


def _spd_with_spectrum(n, seed=0):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    eig = np.concatenate([[50.0, 20.0, 10.0, 5.0], rng.uniform(-1.0, 1.0, n - 4)])
    return (q * eig) @ q.T


def test_lanczos_full_iterations_equal_eigh():
    with jax.enable_x64(True):
        a = jnp.asarray(_spd_with_spectrum(12))
        v0 = jnp.ones(12)
        vals, vecs = jax.jit(jaxdd.lanczos, static_argnums=(0, 2))(lambda v: a @ v, v0, 12)
        chex.assert_shape(vals, (12,))
        chex.assert_shape(vecs, (12, 12))
        ref = np.linalg.eigvalsh(np.asarray(a))[::-1]
        np.testing.assert_allclose(vals, ref, rtol=1e-10, atol=1e-10)
        assert np.all(np.diff(np.asarray(vals)) <= 0)  # descending
        # Ritz vectors are eigenvectors: A v = λ v, unit norm, orthonormal
        np.testing.assert_allclose(vecs @ a.T, vals[:, None] * vecs, atol=1e-9)
        np.testing.assert_allclose(vecs @ vecs.T, np.eye(12), atol=1e-9)


def test_lanczos_top_eigenpairs_on_a_pytree_hessian():
    """A few iterations find the dominant eigenvalues of a Hessian given only by HVPs, on a pytree."""
    with jax.enable_x64(True):
        n = 40
        a = jnp.asarray(_spd_with_spectrum(n, seed=1))

        def f(p):
            x = jnp.concatenate([p["w"].ravel(), p["b"]])
            return 0.5 * x @ a @ x

        params = {"w": jnp.zeros((6, 5)), "b": jnp.zeros(10)}
        v0 = jax.tree.map(lambda x: jnp.ones_like(x) + 0.1 * jnp.arange(x.size).reshape(x.shape), params)
        vals, vecs = jaxdd.lanczos(lambda v: jaxdd.hvp(f, params, v), v0, 15)
        chex.assert_shape(vals, (15,))
        chex.assert_shape(vecs["w"], (15, 6, 5))
        chex.assert_shape(vecs["b"], (15, 10))
        ref = np.linalg.eigvalsh(np.asarray(a))[::-1]
        np.testing.assert_allclose(vals[:4], ref[:4], rtol=1e-8)
        top = jnp.concatenate([vecs["w"][0].ravel(), vecs["b"][0]])
        np.testing.assert_allclose(jnp.abs(top @ np.linalg.eigh(np.asarray(a))[1][:, -1]), 1.0, atol=1e-8)


def test_lanczos_breakdown_stays_finite():
    """A rank-2 operator exhausts the Krylov space after 2 steps; the result stays finite and exact."""
    with jax.enable_x64(True):
        u = jnp.asarray(np.linalg.qr(np.random.default_rng(0).normal(size=(8, 2)))[0])
        a = u @ jnp.diag(jnp.array([3.0, 1.0])) @ u.T
        vals, vecs = jaxdd.lanczos(lambda v: a @ v, jnp.ones(8), 5)
        assert np.isfinite(np.asarray(vals)).all() and np.isfinite(np.asarray(vecs)).all()
        np.testing.assert_allclose(vals[:2], [3.0, 1.0], atol=1e-10)
        np.testing.assert_allclose(vals[2:], 0.0, atol=1e-10)


def test_lanczos_bad_iters():
    with pytest.raises(jaxdd.JaxddError, match="exceeds the dimension"):
        jaxdd.lanczos(lambda v: v, jnp.ones(3), 4)
