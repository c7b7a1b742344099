"""The method interface from outside: a toy method defined here, registered, run through jaxdd.distill and
the CLI, checkpointed and resumed."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdd import distillation, methods, outer
from jaxdd.cli import main
from jaxdd.methods.base import Method, MethodSpec, new_state
from jaxdd.settings import CommonSettings


def toy_build(ctx):
    """Moves every image by `toy_step` along the sign of (mean real image − image): 9 lines of method."""
    s = ctx.settings

    def init(key, theta, consts):
        return new_state(theta, consts, lambda th: outer.outer_optimizer(th, lr=s.outer_lr, clip=False, kind="sgd",
                                                                          momentum=0.0), key, jnp.zeros(()))

    def step(state, batch, key):
        target = batch.mean(0)
        theta = jax.tree.map(lambda a: a + s.toy_step * jnp.sign(target - a), state.theta)
        return dataclasses.replace(state, theta=theta, step=state.step + 1,
                                   method_state=state.method_state + 1), {"loss": jnp.mean(target)}

    x = jnp.asarray(ctx.dataset.x_train)
    return Method(init, step, lambda n, key: jax.random.choice(key, x, (32,)), batch_sharding=None)


@dataclasses.dataclass(frozen=True)
class ToySettings(CommonSettings):
    toy_step: float = dataclasses.field(default=0.01, metadata={"help": "how far every pixel moves per step"})


@pytest.fixture
def toy():
    spec = methods.register(MethodSpec("toy", "a toy: images walk towards the mean real image", ToySettings,
                                       toy_build, evaluation=lambda s: dict(protocol="quick", width=4, depth=1,
                                                                            steps=10, num_models=2)))
    yield spec
    methods.unregister("toy")


def test_toy_method_runs_checkpoints_and_resumes(toy, digits, tmp_path, capsys):
    assert "toy" in methods.available()
    full = distillation.distill(digits, "toy", ipc=1, steps=6, progress=False, final_eval=False, width=4, depth=1)
    part = distillation.distill(digits, "toy", ipc=1, steps=3, out=tmp_path / "t", progress=False,
                                final_eval=False, width=4, depth=1, checkpoint_every=2)
    resumed = distillation.distill(digits, "toy", ipc=1, steps=6, out=tmp_path / "t", resume=True, progress=False,
                                   final_eval=False, width=4, depth=1, checkpoint_every=2)
    assert not np.allclose(part.images, full.images)
    np.testing.assert_array_equal(resumed.images, full.images)
    rows = [json.loads(line) for line in open(tmp_path / "t" / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]

    assert main(["distill", "--help"]) == 0
    assert "toy" in capsys.readouterr().out
    assert main(["distill", "--method", "toy", "--help"]) == 0
    help_text = capsys.readouterr().out
    assert "--toy-step" in help_text and "--window" not in help_text
    code = main(["distill", "--method", "toy", "--steps", "2", "--out", str(tmp_path / "cli"), "--toy-step", "0.1",
                 "--no-progress", "--json"])
    out = capsys.readouterr().out
    assert code == 0, out
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["method"] == "toy" and "accuracy_mean" in summary
    with np.load(tmp_path / "cli" / "distilled.npz") as f:
        assert json.loads(str(f["settings"]))["settings"]["toy_step"] == 0.1
