"""Test helper: an unrolled inner loop with a chosen inner Adam (jaxdd.optim), built on jaxdd.unroll.

Each inner step trains on the whole synthetic set (no augmentation), like jaxdd.inner.make_step with
per_class = ipc and all classes, but with any optax GradientTransformation as the direction.
"""

import jax

from jaxdd import inner
from jaxdd.unroll import unroll


def meta_loss_fn(model, tx, *, lr, labels, real_x, real_y, window, total):
    """f(images, params0, state0, prefix) -> L(θ_{prefix+window}; real batch); differentiable in images.

    `prefix` may be a traced integer (≤ total − window); the window is rematerialised as in jaxdd.
    """

    def step(carry, images, _):
        params, state, opt_state = carry

        def loss(p):
            logits, new_state = model.apply(p, state, images, True)
            return inner.cross_entropy(logits, labels), new_state

        grads, new_state = jax.grad(loss, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return jax.tree.map(lambda p, u: p - lr * u, params, updates), new_state, opt_state

    def f(images, params0, state0, prefix):
        carry = (params0, state0, tx.init(params0))
        params, state, _ = unroll(step, carry, images, jax.numpy.arange(total), prefix=prefix, window=window)
        logits, _ = model.apply(params, state, real_x, True)
        return inner.cross_entropy(logits, real_y)

    return f
