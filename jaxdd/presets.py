"""The one place a run's settings are resolved, from presets (data) and the data set's facts.

`resolve_run` is what the driver calls: the preset (the values every method shares on the CPU, then the
method's `Presets` table, or with `published` the paper's row), then the user's settings and options,
then the method's rules (`MethodSpec.resolve`, e.g. W = T wherever the schedule is full; an option
the user gave that a rule changes is refused), then the data set's facts (the network's depth and
width for the image size, the IPC from SelMatch's --ratio), then validation. `resolve` is the same
without the data (facts optional); `preset`, `default_steps` and `published_help` read the tables.
Reasons and measurements behind the values: docs/methods/*.md and benchmarks/RESULTS.md.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from jaxdd import methods, models
from jaxdd.data.folder import ARCHIVE_SUFFIXES
from jaxdd.errors import require

# The values every method shares on the CPU. digits: 8x8x1; images32: any other (small) image set,
# whose ConvNet depth (0) is resolved from the image size once the data is loaded.
COMMON = {
    "digits": dict(width=32, depth=2, init="real", normalize="standardize", eval_steps=300, checkpoint_every=100),
    "images32": dict(width=32, depth=0, init="real", normalize="standardize", eval_steps=500, checkpoint_every=50),
}
ALIASES = {"tiny_imagenet_200": "tiny_imagenet", "tinyimagenet": "tiny_imagenet", "cifar_10": "cifar10",
           "cifar_100": "cifar100"}


@dataclasses.dataclass(frozen=True)
class DataFacts:
    """What resolution needs to know of a data set: image shape, classes, training images (train + val)."""

    image_shape: tuple[int, int, int]
    num_classes: int
    num_train: int

    @classmethod
    def of(cls, dataset) -> "DataFacts":
        val = 0 if getattr(dataset, "x_val", None) is None else len(dataset.x_val)
        return cls(tuple(int(s) for s in dataset.image_shape), int(dataset.num_classes), len(dataset.x_train) + val)


def dataset_key(name: str) -> str:
    """Normalise a data source to a preset key: 'tfds:cifar10' -> 'cifar10', paths -> their stem
    ('cifar10-jpeg.tar.xz' -> 'cifar10', 'tiny-imagenet-200/' -> 'tiny_imagenet')."""
    name = str(name).split(":", 1)[-1].lower()
    stem = name.rstrip("/").rsplit("/", 1)[-1]
    for suffix in ARCHIVE_SUFFIXES:
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
    stem = stem.replace("-jpeg", "").replace("-", "_")
    return ALIASES.get(stem, stem)


def cpu_preset(key: str) -> str:
    """Which CPU preset a data set key takes: 'digits' for the bundled digits, 'images32' for any other."""
    return "digits" if key == "digits" else "images32"


def preset(method: str, dataset_name: str, ipc: int, *, published: bool = False):
    """The preset settings (the method's settings type) for (method, data set, IPC).

    published=True takes the paper's values where the method has them (a GPU job); otherwise the
    CPU-sized values for digits or for any other small image set.
    """
    spec = methods.get(method)
    return spec.settings(**_known(spec, _values(spec, dataset_key(dataset_name), int(ipc), published)))


def _values(spec, key: str, ipc: int, published: bool) -> dict:
    table = spec.presets
    if published:
        require((key, ipc) in table.published, f"no published preset for {key} IPC {ipc} (--method {spec.name}): known are "
                + ", ".join(f"{k} IPC {i}" + (" (not in the authors' scripts)" if (k, i) in table.not_authors else "")
                            for k, i in table.published))
        return dict(table.published[(key, ipc)])
    cpu = cpu_preset(key)
    return {**COMMON[cpu], **table.cpu.get(cpu, {}), **table.cpu_at_ipc.get((cpu, ipc), {})}


def _known(spec, values: dict) -> dict:
    fields = set(spec.settings.field_names())
    return {k: v for k, v in values.items() if k in fields}


def resolve(method: str, dataset_name: str, ipc: int, settings=None, overrides: dict | None = None,
            *, published: bool = False, facts: DataFacts | None = None):
    """Preset, then `settings` (if given), then `overrides`, then the method's rules, then (with `facts`)
    the network's size for the image shape; validated. An override that a rule changes is refused."""
    spec = methods.get(method)
    base = settings if settings is not None else preset(method, dataset_name, ipc, published=published)
    require(isinstance(base, spec.settings),
            f"settings of type {type(base).__name__} do not belong to method '{method}' "
            f"(expected {spec.settings.__name__})")
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    unknown = sorted(set(overrides) - set(spec.settings.field_names()))
    require(not unknown, f"unknown setting(s) for --method {method}: {', '.join(unknown)}: "
                         f"see `jaxdd distill --method {method} --help`")
    resolved = spec.resolve(dataclasses.replace(base, **overrides))
    for name, value in overrides.items():
        ruled = getattr(resolved, name)
        flag = "--" + name.replace("_", "-")
        require(ruled is value or ruled == value, f"{flag} {value} does not apply here: --method {method} sets {name} to {ruled} "
                                f"by its own rule (docs/methods/): drop {flag}")
    if facts is not None:
        size = models.network_defaults(resolved.model, facts.image_shape, resolved.width, resolved.depth)
        resolved = dataclasses.replace(resolved, depth=size["depth"] or 0)
    return resolved.validate(int(ipc))


def resolve_run(method: str, source: str, ipc: int, settings=None, overrides: dict | None = None, *,
                published: bool = False, load: Callable):
    """(settings, ipc, dataset) of a run: the settings that decide how data is loaded (normalisation,
    validation split) first, then `load(settings)` -> Dataset, then the IPC from the data set's facts
    (`MethodSpec.ipc`), then :func:`resolve` with the facts. The data is loaded again only when the
    preset at the resolved IPC loads it differently."""
    spec = methods.get(method)
    first = resolve(method, source, ipc, settings, overrides, published=published)
    dataset = load(first)
    facts = DataFacts.of(dataset)
    ipc = int(spec.ipc(first, facts, int(ipc)))
    final = resolve(method, source, ipc, settings, overrides, published=published, facts=facts)
    if (final.normalize, final.val_fraction) != (first.normalize, first.val_fraction):
        dataset = load(final)
    return final, ipc, dataset


def default_steps(method: str, dataset_name: str, ipc: int = 1, published: bool = False) -> int:
    """Meta-steps when --steps is not given: the method's CPU budget, or its authors' with `published`."""
    spec, key = methods.get(method), dataset_key(dataset_name)
    table = spec.presets
    if not published:
        return int(table.cpu_steps[cpu_preset(key)])
    steps = table.published_steps
    return int(steps(key, _values(spec, key, int(ipc), True)) if callable(steps) else steps)


def published_help(method: str) -> str:
    """The --help line naming a method's published presets, those not in its authors' scripts, and the budget."""
    table = methods.get(method).presets
    if not table.published:
        return ""
    theirs = [f"{k} IPC {i}" for k, i in table.published if (k, i) not in table.not_authors]
    mine = [f"{k} IPC {i}" for k, i in table.published if (k, i) in table.not_authors]
    text = f"published presets: {', '.join(theirs)} ({table.source})"
    if mine:
        text += f"; {', '.join(mine)} (NOT in {table.source}: values from the paper's ranges)"
    return text + (f". {table.budget}" if table.budget else "")


def default_protocol(dataset_name: str, ipc: int) -> dict:
    """The evaluation protocol `jaxdd distill` uses on a data set by default (RaT-BPTT's preset there):
    how `jaxdd evaluate` scores baselines that no distilled set describes."""
    return dict(methods.get("rat-bptt").evaluation(preset("rat-bptt", dataset_name, ipc)))
