"""jaxdd: dataset distillation in pure-functional JAX.

The public entry points (the contract in DESIGN.md):

    jaxdd.data.load(source, **options) -> Dataset
    jaxdd.distill(dataset, method=..., ipc=..., steps=..., **options) -> DistillResult
    jaxdd.evaluate(images, labels, dataset, **protocol) -> dict (accuracy_mean, accuracy_std, ...)
    jaxdd.unroll(step, carry, theta, xs, *, prefix, window, remat=True) -> carry
    jaxdd.hvp(f, params, v), jaxdd.lanczos(matvec, v0, num_iters)

The modules behind them: data/, models, augment, unroll, inner, outer, hessian, methods/,
distillation (the driver), evaluation, parallel, checkpoint, presets, viz, cli.
"""

from jaxdd import data
from jaxdd.distillation import DistillResult, distill
from jaxdd.errors import JaxddError
from jaxdd.evaluation import evaluate
from jaxdd.hessian import hvp, lanczos
from jaxdd.presets import Settings, preset
from jaxdd.unroll import unroll

__version__ = "0.1.0"

__all__ = ["data", "distill", "DistillResult", "evaluate", "hvp", "lanczos", "unroll", "Settings", "preset",
           "JaxddError", "__version__"]
