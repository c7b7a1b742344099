"""Several processes on one machine, joined by jax.distributed (gloo CPU collectives): the same digits
run as one process with the same devices, only process 0 writing files, and a checkpoint written by two
processes resuming in one."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from jaxdd import distillation, parallel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def tiny(tiny):
    """The shared tiny settings with a population of 2, checkpointing every 2 steps."""
    return {**tiny, "population": 2, "checkpoint_every": 2}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_processes(tiny, out, steps, resume=False):
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in tiny.items()]
    port = _free_port()
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    procs = [subprocess.Popen([sys.executable, "-m", "jaxdd", "distill", "--distributed", "--coordinator",
                               f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i), "--steps",
                               str(steps), "--out", str(out), "--no-progress", "--no-eval", *flags]
                              + (["--resume"] if resume else []),
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for p, text in zip(procs, outputs):
        assert p.returncode == 0, text[-3000:]


@pytest.mark.slow
def test_two_processes_equal_one_process_and_resume_in_one(digits, tiny, tmp_path):
    _two_processes(tiny, tmp_path / "mp", steps=4)
    one = distillation.distill("digits", "rat-bptt", ipc=1, steps=4, progress=False, final_eval=False,
                               mesh=parallel.make_mesh(2), **tiny)
    with np.load(tmp_path / "mp" / "distilled.npz") as f:
        two = f["images"]
    diff = np.abs(two - one.images)
    assert diff.max() < 2e-3 and diff.mean() < 2e-5, (diff.max(), diff.mean())  # float32 reduction order
    rows = [json.loads(line) for line in open(tmp_path / "mp" / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]  # one writer: every row once

    _two_processes(tiny, tmp_path / "half", steps=2)  # checkpoint at 2 written by two processes
    resumed = distillation.distill("digits", "rat-bptt", ipc=1, steps=4, out=tmp_path / "half", resume=True,
                                   progress=False, final_eval=False, mesh=parallel.make_mesh(2), **tiny)
    diff = np.abs(resumed.images - one.images)
    assert diff.max() < 2e-3 and diff.mean() < 2e-5, (diff.max(), diff.mean())
