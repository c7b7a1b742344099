"""Settings shared by every method (one frozen dataclass); each method extends it with its own fields.

Every field is a command-line option of `jaxdd distill` (``outer_lr`` -> ``--outer-lr``) with the
help text in its metadata; `jaxdd distill --method M --help` lists the fields of M's settings type.
"""

from __future__ import annotations

import dataclasses
import math
import os

from jaxdd.baseline import DRAWS
from jaxdd.errors import require
from jaxdd.models import DEPTH_RULE
from jaxdd.stopping import STOPS

INITS = ("noise", "real", "means")
LABEL_LR_HELP = "outer learning rate of learned labels, with the images' outer optimizer (0: --outer-lr)"
NORMALIZE = ("standardize", "zca", "zca-mtt", "none", "standardize-cifar", "standardize-imagenet")


def setting(default, help: str, *, minimum=0):
    """A settings field with its help text (shown by `jaxdd distill --help`) and, for numbers, the
    smallest value accepted (0 unless a negative value means something, e.g. -1 = "scan")."""
    return dataclasses.field(default=default, metadata={"help": help, "minimum": minimum})


@dataclasses.dataclass(frozen=True)
class CommonSettings:
    """What every distillation method has: the initial set, the outer rate, the network, data and driver."""

    # the synthetic set
    init: str = setting("noise", "initial images: noise | real (random real images) | means (per-class k-means "
                                 "centroids; at IPC 1 the class mean) | a path to a distilled.npz")
    noise_scale: str = setting("real", "noise init: each image scaled to the real images' mean L2 norm (real) "
                                       "or to unit L2 norm (unit, as RaT-BPTT's authors on ZCA data)")
    outer_lr: float = setting(1e-3, "outer learning rate on the synthetic images")
    learn_labels: bool = setting(False, "learn soft labels (kept non-negative) besides the images")
    label_lr: float = setting(0.0, LABEL_LR_HELP)
    # the network
    model: str = setting("convnet", "network: convnet | convnet_bn | convnet_nonorm | mlp | resnet18")
    width: int = setting(128, "network width (channels)")
    depth: int = setting(0, f"network depth (0: {DEPTH_RULE})")
    norm: str = setting("instance", "ConvNet normalisation: instance | batch | none")
    # data and driver
    normalize: str = setting("standardize", "pixel preprocessing: standardize | zca | zca-mtt | none")
    val_fraction: float = setting(0.1, "held out of the training data for choices and periodic evaluation")
    eval_every: int = setting(0, "meta-steps between validation evaluations (0: only at the end)")
    eval_steps: int = setting(300, "training steps of each evaluation network")
    eval_models: int = setting(4, "networks trained per evaluation")
    stop: str = setting("steps", "when the run ends: steps (after --steps) | plateau (when the validation accuracy, "
                                 "measured every --eval-every meta-steps, has not risen for --patience meta-steps; "
                                 "the best set is the result; --steps stays an upper bound)")
    patience: int = setting(0, "with --stop plateau: meta-steps without a higher validation accuracy before the run "
                               "stops (or the curriculum of --schedule moving moves on)")
    baseline_draws: int = setting(DRAWS, "draws of random real images in the final evaluation's baseline, each "
                                         "scored by the same networks (docs/evaluation.md)")
    shard_images: bool = setting(False, "split the synthetic set and its optimizer state over the devices along "
                                        "the image axis (large IPC x classes)")
    checkpoint_every: int = setting(100, "meta-steps between checkpoints (and after the last step, and on Ctrl-C)")

    def validate(self, ipc: int) -> "CommonSettings":
        """One-line errors for values no method accepts; methods add their own checks."""
        check_types(self)
        require(self.init in INITS or self.init.endswith(".npz"),
                f"unknown --init '{self.init}': use {', '.join(INITS)} or a path to a distilled.npz")
        require(not self.init.endswith(".npz") or os.path.isfile(self.init),
                f"--init {self.init}: no such file: give a distilled.npz written by 'jaxdd distill'")
        require(self.noise_scale in ("real", "unit"), f"unknown --noise-scale '{self.noise_scale}': use real or unit")
        require(self.outer_lr > 0, "--outer-lr must be positive")
        require(self.normalize in NORMALIZE, f"unknown --normalize '{self.normalize}': use {', '.join(NORMALIZE)}")
        require(0 <= self.val_fraction < 1, f"--val-fraction must lie in [0, 1), got {self.val_fraction}")
        require(self.eval_every == 0 or self.val_fraction > 0,
                "--eval-every needs a validation split: set --val-fraction above 0 (e.g. 0.1)")
        require(self.width >= 1, f"--width must be at least 1, got {self.width}")
        require(self.depth >= 0, f"--depth must be 0 (the default for the image size) or more, got {self.depth}")
        require(self.eval_every >= 0, f"--eval-every must be 0 (only at the end) or more, got {self.eval_every}")
        require(self.eval_steps >= 1, f"--eval-steps must be at least 1, got {self.eval_steps}")
        require(self.eval_models >= 1, "--eval-models must be at least 1")
        require(self.baseline_draws >= 1, "--baseline-draws must be at least 1")
        require(self.checkpoint_every >= 1, "--checkpoint-every must be at least 1")
        require(self.stop in STOPS, f"unknown --stop '{self.stop}': use {' or '.join(STOPS)}")
        require(self.stop != "plateau" or (self.eval_every >= 1 and self.patience >= 1),
                "--stop plateau needs --eval-every N and --patience M (meta-steps; e.g. --eval-every 20 --patience 60)")
        return self

    def labels_lr(self) -> float:
        """The outer learning rate of learned labels: label_lr, or outer_lr when it is 0."""
        return self.label_lr or self.outer_lr

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))


def check_types(settings) -> None:
    """Every field holds a value of its default's type: int (not bool), a finite float (an int is
    accepted), str or bool, and numbers are >= 0 (as the command line parses them); one-line errors
    naming the option."""
    for field in dataclasses.fields(settings):
        value, kind, flag = getattr(settings, field.name), type(field.default), "--" + field.name.replace("_", "-")
        if kind is bool:
            ok, expected = isinstance(value, bool), "true or false"
        elif kind is int:
            ok, expected = isinstance(value, int) and not isinstance(value, bool), "an integer"
        elif kind is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            expected = "a finite number"
        else:
            ok, expected = isinstance(value, kind), f"a {kind.__name__}"
        require(ok, f"{flag} must be {expected}, got {value!r}")
        least = field.metadata.get("minimum", 0)
        require(kind not in (int, float) or value >= least, f"{flag} must be >= {least}, got {value!r}")
