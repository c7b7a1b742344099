"""Boost-DD: blocks learned at their own rates, nested prefixes, resume across blocks."""

import json

import numpy as np
import pytest

from jaxdd import distillation
from jaxdd.cli import main
from jaxdd.methods.boost import block_rows

TINY = dict(width=4, depth=1, unroll_steps=6, window=3, real_batch=64, eval_steps=20, eval_models=2,
            checkpoint_every=2, init="noise", outer_lr=0.05)


def _boost(digits, steps, beta, out=None, resume=False, **kw):
    return distillation.distill(digits, "boost", ipc=4, steps=steps, out=out, resume=resume, progress=False,
                                final_eval=False, block=2, beta=beta, block_steps=3, **{**TINY, **kw})


def _block(images, b, ipc=4, block=2):
    return images.reshape((10, ipc) + images.shape[1:])[:, b * block:(b + 1) * block]


def test_beta_zero_freezes_old_blocks_and_beta_moves_them_less(digits):
    after_block1 = _boost(digits, 3, 0.0)  # block 1 only (3 steps per block)
    frozen = _boost(digits, 6, 0.0)
    moving = _boost(digits, 6, 0.3)
    first = after_block1.images.reshape((10, 2) + after_block1.images.shape[1:])
    np.testing.assert_array_equal(_block(frozen.images, 0), first)
    np.testing.assert_array_equal(frozen.arrays["row_block"], block_rows(10, 2, 2))
    old_moved = np.abs(_block(moving.images, 0) - first).mean()
    assert old_moved > 1e-5
    # the new block (rate 1) moves more than the old one (rate 0.3) over the same 3 steps: compare the
    # new block with its own start (the same fresh draw in both runs) via the β = 0 run's new block
    assert np.abs(_block(moving.images, 1) - _block(frozen.images, 1)).mean() < np.abs(
        _block(frozen.images, 1)).mean()


def test_prefixes_are_class_major_blocks(digits):
    r = _boost(digits, 6, 0.1)
    np.testing.assert_array_equal(r.labels, np.repeat(np.arange(10), 4))
    np.testing.assert_array_equal(r.arrays["row_block"], np.tile([0, 0, 1, 1], 10))


def test_resume_in_block_two_equals_uninterrupted(digits, tmp_path):
    full = _boost(digits, 6, 0.1)
    _boost(digits, 4, 0.1, out=tmp_path / "b")  # stops in block 2 (checkpoint at step 4)
    resumed = _boost(digits, 6, 0.1, out=tmp_path / "b", resume=True)
    np.testing.assert_array_equal(resumed.images, full.images)
    rows = [json.loads(line) for line in open(tmp_path / "b" / "metrics.jsonl")]
    assert [r["step"] for r in rows] == list(range(1, 7))


def test_boost_cli_writes_the_prefix_table(tmp_path, capsys):
    code = main(["distill", "--method", "boost", "--ipc", "2", "--block", "1", "--steps", "4", "--width", "4",
                 "--depth", "1", "--unroll-steps", "4", "--window", "2", "--real-batch", "64", "--eval-steps", "10",
                 "--eval-models", "2", "--out", str(tmp_path / "cli"), "--no-progress"])
    assert code == 0, capsys.readouterr()
    report = json.loads((tmp_path / "cli" / "report.json").read_text())
    assert [row["ipc"] for row in report["prefix_table"]] == [1, 2]
    assert (tmp_path / "cli" / "report.png").stat().st_size > 1000
    assert main(["evaluate", str(tmp_path / "cli" / "distilled.npz"), "--prefix-ipc", "1", "--json",
                 "--no-progress"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["num_images"] == 10


def test_bad_block_settings(digits):
    from jaxdd.errors import JaxddError

    with pytest.raises(JaxddError, match="multiple of --block"):
        distillation.distill(digits, "boost", ipc=3, steps=1, progress=False, final_eval=False, block=2, **TINY)
