"""Distillation methods behind one interface (jaxdd/methods/base.py) and their registry.

    jaxdd.methods.get(name) -> MethodSpec      jaxdd.methods.available() -> names
    jaxdd.methods.register(MethodSpec(...))    (a method of your own; see README "Adding a method")
"""

from jaxdd.methods.base import (Context, DistillState, Method, MethodSpec, Presets, available,  # noqa: F401
                                default_finalize, get, register, unregister)
from jaxdd.methods import bptt  # noqa: F401,E402  (registers bptt, tbptt, rat-bptt)
from jaxdd.methods import boost  # noqa: F401,E402
from jaxdd.methods import matching  # noqa: F401,E402
from jaxdd.methods import at_bptt  # noqa: F401,E402
from jaxdd.methods import selmatch  # noqa: F401,E402
