"""Expert trajectories for trajectory matching, with forgetting scores logged on the way.

docs/methods/experts.md describes the method and the files. :func:`train` trains E networks on the
full real training split and saves every expert's parameters at init and after every epoch
(jaxdd/experts/training.py) into a cache folder that :class:`ExpertStore` reads lazily
(jaxdd/experts/store.py); :func:`for_run` finds, resumes or trains the experts a matching run needs.
"""

from jaxdd.experts.store import DTYPES, ExpertStore, default_expert_dir, fingerprint
from jaxdd.experts.training import ensure, expert_keys, for_run, resolve_settings, run_keywords, train
from jaxdd.forgetting import ForgettingState
from jaxdd.forgetting import counts as forgetting_counts
from jaxdd.forgetting import finalize as forgetting_finalize
from jaxdd.forgetting import init as forgetting_init
from jaxdd.forgetting import update as forgetting_update

__all__ = ["train", "ensure", "for_run", "resolve_settings", "run_keywords", "ExpertStore", "expert_keys", "fingerprint",
           "default_expert_dir", "ForgettingState", "forgetting_init", "forgetting_update", "forgetting_finalize",
           "forgetting_counts", "DTYPES"]
