"""jaxdd: dataset distillation in pure-functional JAX.

The public entry points (the contract; docs/architecture.md):

    jaxdd.data.load(source, **options) -> Dataset
    jaxdd.distill(dataset, method=..., ipc=..., steps=..., **options) -> DistillResult
    jaxdd.evaluate(images, labels, dataset, **protocol) -> dict (accuracy_mean, accuracy_std, ...)
    jaxdd.unroll(step, carry, theta, xs, *, prefix, window, remat=True) -> carry
    jaxdd.hvp(f, params, v), jaxdd.lanczos(matvec, v0, num_iters)

The modules behind them, their layers and the direction of imports: docs/architecture.md.
"""

from jaxdd import data, methods
from jaxdd.distillation import DistillResult, distill
from jaxdd.errors import JaxddError
from jaxdd.evaluation import evaluate
from jaxdd.hessian import hvp, lanczos
from jaxdd.methods.bptt import BPTTSettings
from jaxdd.presets import preset
from jaxdd.settings import CommonSettings
from jaxdd.unroll import unroll

__version__ = "0.1.0"

__all__ = ["data", "methods", "distill", "DistillResult", "evaluate", "hvp", "lanczos", "unroll",
           "BPTTSettings", "CommonSettings", "preset",
           "JaxddError", "__version__"]
