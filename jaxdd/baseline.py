"""The random-real baseline: R draws of IPC real images per class, each scored by the protocol's networks.

docs/evaluation.md ("The random-real baseline"). One function, :func:`random_real`, serves `jaxdd
distill`'s final evaluation, `jaxdd evaluate --random-real` and the benchmarks, so for the same data
set, protocol and seed they give the same number to the last digit.

* Draw r takes its images with :func:`jaxdd.evaluation.random_real` seeded by :func:`draw_seed`:
  draw 0 is the seed's own draw (so R = 1 is the single-draw baseline of `jaxdd evaluate --random-real
  --seed S` before draws existed), later draws get seeds of their own.
* Every draw is trained by the same K network keys (those `evaluate` derives from the seed, the ones
  that also score the distilled set), so draws differ only in their images. The R·K networks train as
  one vmapped batch (``at_once`` draws at a time when memory is short).
* The result reports the mean over draws with the spread **over draws** (np.std of the R per-draw
  means, ddof 0, as ``accuracy_std``) and, separately, the spread **over networks** (the mean of the
  per-draw np.std over the K networks).

:func:`gain` is the distilled set's gain over the baseline with a 95 % interval that accounts for
both: Welch's t interval from the distilled set's K networks and the baseline's R draw means.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
from scipy import stats

from jaxdd import evaluation
from jaxdd.errors import require_count

DRAWS = 5  # draws of random real images per baseline (the default of every caller)
LEVEL = 0.95  # the confidence level of the gain's interval


def draw_seed(seed: int, r: int) -> int:
    """The image seed of draw r: the seed itself for draw 0, else one derived from (seed, r)."""
    return int(seed) if r == 0 else int(np.random.SeedSequence([int(seed), r]).generate_state(1)[0])


def draw_images(dataset, ipc: int, num_draws: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The draws' images [R, C·ipc, H, W, C] (class-major each) and their common labels int32 [C·ipc]."""
    sets = [evaluation.random_real(dataset, ipc, seed=draw_seed(seed, r)) for r in range(num_draws)]
    return np.stack([images for images, _ in sets]), sets[0][1]


def random_real(dataset, ipc: int, *, draws: int = DRAWS, seed: int = 0, at_once: int | None = None,
                **evaluate_kwargs) -> dict[str, Any]:
    """The random-real baseline at `ipc` images per class: `draws` draws, each scored by the networks of
    :func:`jaxdd.evaluation.evaluate` with ``seed`` and ``evaluate_kwargs`` (the protocol, its overrides,
    ``learned_lr``, ``split``, ``mesh``, ``progress``); the rows count as real images (SelMatch's
    combined augmentation). ``at_once``: draws trained in one vmapped batch (None: all).

    Returns evaluate's result for the draws (protocol, steps, …; ``accuracy_at`` and ``accuracies``
    over all R·K networks) with: accuracy_mean (the mean over draws), accuracy_std and draws_std (the
    spread over draws), networks_std (the spread over networks within a draw), draw_means [R],
    accuracies_by_draw [R][K], draws, draw_seeds, num_images (one draw's), seconds (all draws), and
    ``baseline``, the record of which baseline this is (``record``).
    """
    require_count("draws", draws, "--draws")
    images, labels = draw_images(dataset, ipc, draws, seed)
    group = draws if at_once is None else max(1, int(at_once))
    kwargs = dict(evaluate_kwargs, seed=seed, rows=np.ones(len(labels), bool))
    start, parts = time.perf_counter(), []
    for first in range(0, draws, group):
        chunk = images[first:first + group]
        if len(chunk) == 1:  # one draw: the very computation of scoring that set on its own
            one = evaluation.evaluate(chunk[0], labels, dataset, **kwargs)
            parts.append(dict(one, accuracies_by_set=[one["accuracies"]]))
        else:
            parts.append(evaluation.evaluate(chunk, labels, dataset, stacked=True, **kwargs))
    by_draw = np.array([acc for part in parts for acc in part["accuracies_by_set"]])  # [R, K]
    means = by_draw.mean(1)
    result = dict(parts[0])
    result.pop("accuracies_by_set")
    result.update(
        accuracy_mean=float(means.mean()), accuracy_std=float(np.std(means)), draws_std=float(np.std(means)),
        networks_std=float(np.std(by_draw, axis=1).mean()), draw_means=[float(m) for m in means],
        accuracies_by_draw=by_draw.tolist(), accuracies=[float(a) for a in by_draw.reshape(-1)], draws=int(draws),
        draw_seeds=[draw_seed(seed, r) for r in range(draws)], seconds=round(time.perf_counter() - start, 3))
    if len(parts) > 1:  # summaries over all draws' networks
        result["accuracy_at"] = _merged(parts, "accuracy_at")
        result["val_accuracy_at"] = val = _merged(parts, "val_accuracy_at")
        if val is not None:  # the checkpoint chosen on all draws' validation accuracy, as evaluate chooses
            chosen = max(val, key=lambda m: (val[m]["mean"], -m))
            at = result["accuracy_at"][chosen]
            result.update(chosen_steps=chosen, accuracy_chosen={"mean": at["mean"], "std": at["std"]})
    result["baseline"] = record(result)
    return result


def _merged(parts: list[dict], key: str):
    if parts[0].get(key) is None:
        return None
    merged = {step: np.concatenate([p[key][step]["accuracies"] for p in parts]) for step in parts[0][key]}
    return {step: {"mean": float(a.mean()), "std": float(a.std()), "accuracies": a.tolist()}
            for step, a in merged.items()}


def record(result: dict) -> dict:
    """Which baseline a result is (the ``random_real_baseline`` field of a run's record and of results):
    random real images, R draws × K networks, the seed. Records without the field used one draw."""
    return {"kind": "random real", "draws": int(result.get("draws", 1)), "networks": int(result["num_models"]),
            "seed": int(result["seed"])}


def describe(result: dict) -> str:
    """'66.10 ± 4.00 % (5 draws × 4 networks)' for a baseline, '93.82 ± 0.95 % (4 networks)' for a set."""
    mean, std, k = 100 * result["accuracy_mean"], 100 * result["accuracy_std"], result.get("num_models")
    if k is None:
        return f"{mean:.2f} ± {std:.2f} %"
    if "draws" in result:
        return f"{mean:.2f} ± {std:.2f} % ({result['draws']} draws × {k} networks)"
    return f"{mean:.2f} ± {std:.2f} % ({k} networks)"


def gain(distilled: dict, baseline: dict, level: float = LEVEL) -> dict[str, float]:
    """The distilled set's gain over the baseline (fractions) with a `level` interval (Welch's t) that
    accounts for both spreads: the distilled mean's over its K networks and the baseline mean's over its
    R draws (each draw's mean carries its networks' noise); with one draw, the baseline's over its
    networks. Returns gain, low, high, se, dof (an infinite dof when there is nothing to estimate a
    spread from, then low = high = gain)."""
    d = np.asarray(distilled.get("accuracies") or [distilled["accuracy_mean"]], float)
    b = np.asarray(baseline.get("draw_means") or [], float)
    if len(b) < 2:  # one draw (or a result from before draws): the spread over its networks
        b = np.asarray(baseline.get("accuracies") or [baseline["accuracy_mean"]], float)
    value = float(d.mean() - b.mean())
    parts = [np.var(x, ddof=1) / len(x) if len(x) > 1 else 0.0 for x in (d, b)]
    se = math.sqrt(sum(parts))
    if se == 0.0:
        return dict(gain=value, low=value, high=value, se=0.0, dof=math.inf)
    dof = se ** 4 / sum(p ** 2 / (len(x) - 1) for p, x in zip(parts, (d, b)) if len(x) > 1)
    half = float(stats.t.ppf(0.5 + level / 2, dof)) * se
    return dict(gain=value, low=value - half, high=value + half, se=se, dof=float(dof))
