"""Presets: the settings a run starts from, before the user's options.

`resolve(method, dataset, ipc, settings, overrides)` is the one place settings are decided: the common
CPU-sized values for the data set (below), the method's own preset (its MethodSpec.presets, e.g. the
published RaT-BPTT table in jaxdd/methods/bptt.py), then `settings` and `overrides`, then the method's
own rules (MethodSpec.resolve), then validation. Every settings field is a command-line option.
"""

from __future__ import annotations

import dataclasses

from jaxdd import methods
from jaxdd.data.folder import ARCHIVE_SUFFIXES
from jaxdd.errors import require
from jaxdd.methods.bptt import BPTTSettings as Settings  # noqa: F401  (the BPTT family's settings, earlier name)

# CPU-sized values shared by every method. digits: 8x8x1; images32: any other (small) image set.
SMALL = {
    "digits": dict(width=32, depth=2, init="real", normalize="standardize", eval_steps=300, checkpoint_every=100),
    # init real: random real images converge fastest at a CPU budget (digits: 84% on val after 100 steps from
    # real images, 64% after 250 from noise; jaxdd/methods/bptt.py), on any data set. The BPTT family's own
    # presets start from class means instead (init "means", jaxdd/methods/bptt.py SMALL), faster still.
    # depth 0: the ConvNet depth for the image size (jaxdd/models.py default_depth: 3 on 32x32, 2 on 16-31 px),
    # resolved when the data is loaded. Depth 3 on 16x16 and 28x28 images (2x2 and 3x3 features before the
    # head) lost to depth 2 on the validation splits (RaT-BPTT, IPC 1, 300 steps, seed 0; sweep_generic.jsonl):
    # cifar10s16 29.4 vs 25.4 % (random real 15.1 / 15.7), digits28px 93.5 vs 91.3 % (58.0 / 60.5).
    "images32": dict(width=32, depth=0, init="real", normalize="standardize", eval_steps=500, checkpoint_every=50),
}
ALIASES = {"tiny_imagenet_200": "tiny_imagenet", "tinyimagenet": "tiny_imagenet", "cifar_10": "cifar10",
           "cifar_100": "cifar100"}


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


def small_key(key: str) -> str:
    return "digits" if key == "digits" else "images32"


def preset(method: str, dataset_name: str, ipc: int, *, published: bool = False):
    """The preset settings (the method's settings type) for (method, data set, IPC).

    published=True takes the paper's values where the method has them (a GPU job); otherwise the
    CPU-sized values for digits or for any other small image set.
    """
    spec = methods.get(method)
    key = dataset_key(dataset_name)
    values = {} if published else dict(SMALL[small_key(key)])
    values.update(spec.presets(key, int(ipc), published))
    fields = set(spec.settings.field_names())
    return spec.settings(**{k: v for k, v in values.items() if k in fields})


def resolve(method: str, dataset_name: str, ipc: int, settings=None, overrides: dict | None = None,
            *, published: bool = False):
    """Preset, then `settings` (if given), then `overrides`, then the method's rules; validated."""
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
    return resolved.validate(int(ipc))


def default_steps(method: str, dataset_name: str, ipc: int = 1, published: bool = False) -> int:
    """Meta-steps when --steps is not given: the method's CPU budget, or its authors' with `published`."""
    return int(methods.get(method).default_steps(dataset_key(dataset_name), int(ipc), published))
