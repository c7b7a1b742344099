"""jaxdd.experts: expert trajectories (storage, dtypes, resumption, sampling) and forgetting scores.

One reference run (4 experts in groups of 2, 3 epochs, ConvNet w8 d2 on digits, batch 32, lr 0.05 so
that 3 short epochs learn something, DSA on) is shared through a module fixture; the other runs use
the same shapes, so they reuse its compiled epoch.
"""

import json
import os

import chex
import jax
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from jaxdd import cli, experts, lock, parallel
from jaxdd.errors import JaxddError

SMALL = dict(width=8, depth=2, batch_size=32, lr=0.05, augment="dsa", seed=3, group_size=2, progress=False)
E, EPOCHS = 4, 3


class Stop(Exception):
    pass


@pytest.fixture(scope="module")
def reference(digits, tmp_path_factory):
    log = []
    out = tmp_path_factory.mktemp("reference")
    store = experts.train(digits, num_experts=E, epochs=EPOCHS, out_dir=out, on_epoch=log.append, **SMALL)
    return store, log


def all_snapshots(store):
    return np.stack([store.segment(e, 0, store.num_epochs) for e in range(store.num_experts)])


# ---------------------------------------------------------------------------------------------- forgetting


def test_forgetting_counts_follow_the_definition():
    # rows: presentations; columns: examples
    correct = np.array([
        [1, 0, 0, 1, 0, 1],
        [0, 0, 1, 1, 1, 1],
        [1, 0, 1, 0, 0, 1],
        [0, 0, 1, 0, 1, 1],
    ], bool)
    # 0: 1→0, 1→0 = 2 events; 1: never correct = 4 (the number of presentations); 2: learned, never
    # forgotten = 0; 3: one event; 4: 1→0 once = 1; 5: always correct = 0
    expected = np.array([2, 4, 0, 1, 1, 0])
    np.testing.assert_array_equal(np.asarray(experts.forgetting_counts(correct)), expected)
    state = experts.forgetting_init(6)
    for row in correct:
        state = experts.forgetting_update(state, row)
    np.testing.assert_array_equal(np.asarray(experts.forgetting_finalize(state, 4)), expected)
    with pytest.raises(JaxddError, match="presentations"):
        experts.forgetting_counts(correct[0])


def test_forgetting_file_matches_the_recorded_predictions(reference, digits):
    store, log = reference
    history = {}  # expert -> [epochs, N] correctness, as the jitted epochs reported it
    for info in log:
        for k, e in enumerate(info["experts"]):
            history.setdefault(e, []).append(info["correct"][k])
    assert sorted(history) == list(range(E)) and all(len(h) == EPOCHS for h in history.values())
    expected = sum(np.asarray(experts.forgetting_counts(np.stack(h))) for h in history.values())
    scores, labels = store.forgetting()
    chex.assert_shape(scores, (len(digits.y_train),))
    np.testing.assert_array_equal(scores, expected)
    np.testing.assert_array_equal(labels, digits.y_train)
    assert scores.min() >= 0 and scores.max() <= E * EPOCHS
    # the recorded accuracy is the mean of the same table
    np.testing.assert_allclose(store.metrics()["accuracy"][:, -1],
                               [np.mean(history[e][-1]) for e in range(E)], rtol=1e-6)


# ---------------------------------------------------------------------------------------------- store


def test_store_layout(reference, digits):
    store, _ = reference
    net = store.model
    assert (store.num_experts, store.num_epochs, store.num_params, store.dtype) == (E, EPOCHS, net.num_params,
                                                                                 "float32")
    files = sorted(name for name in os.listdir(store.path) if name != lock.LOCK)  # the lock file stays, released
    assert files == ["forgetting.npz", "group_0000.forgetting.npy", "group_0000.npy", "group_0001.forgetting.npy",
                     "group_0001.npy", "manifest.json"]  # no progress files left
    assert (store.path / lock.LOCK).read_text() == ""
    raw = np.load(store.path / "group_0001.npy", mmap_mode="r")
    assert isinstance(raw, np.memmap) and raw.shape == (2, EPOCHS + 1, net.num_params) and raw.dtype == np.float32
    chex.assert_shape(store.snapshot(3, 1), (net.num_params,))
    assert type(store.snapshot(3, 1)) is np.ndarray and store.snapshot(3, 1).flags.writeable  # a copy
    chex.assert_shape(store.segment(1, 1, 3), (3, net.num_params))
    np.testing.assert_array_equal(store.segment(3, 1, 2)[1], store.snapshot(3, 2))
    manifest = json.loads((store.path / "manifest.json").read_text())
    assert manifest["dataset"]["num_train"] == len(digits.y_train)
    assert manifest["settings"]["lr"] == 0.05 and manifest["settings"]["augment"] == "dsa"


def test_snapshot0_is_the_model_init(reference):
    store, _ = reference
    for e in range(E):
        params, _ = store.model.init(experts.expert_keys(SMALL["seed"], e)[0])
        flat, _ = ravel_pytree(params)
        np.testing.assert_array_equal(store.snapshot(e, 0), np.asarray(flat))
        chex.assert_trees_all_equal(store.unravel(store.snapshot(e, 0)), params)
    assert not np.array_equal(store.snapshot(0, 0), store.snapshot(1, 0))


def test_experts_learn(reference, digits):
    store, _ = reference
    loss = store.metrics()["loss"]
    chex.assert_shape(loss, (E, EPOCHS))
    assert np.all(loss[:, -1] < loss[:, 0]) and np.all(loss[:, 0] < np.log(10) + 0.1)
    x, y = np.asarray(digits.x_test), np.asarray(digits.y_test)
    for e in range(E):
        logits, _ = store.model.apply(store.unravel(store.snapshot(e, 2)), {}, x, train=False)
        accuracy = float(np.mean(np.argmax(logits, -1) == y))
        assert accuracy > 0.3, (e, accuracy)  # chance: 0.1


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_low_precision_storage_is_the_exact_cast(reference, digits, tmp_path, dtype):
    import ml_dtypes

    store32, _ = reference
    store = experts.train(digits, num_experts=2, epochs=EPOCHS, out_dir=tmp_path, dtype=dtype, **SMALL)
    cast = np.float16 if dtype == "float16" else ml_dtypes.bfloat16
    want = all_snapshots(store32)[:2].astype(cast).astype(np.float32)
    np.testing.assert_array_equal(all_snapshots(store), want)
    raw = np.load(tmp_path / "group_0000.npy", mmap_mode="r")
    assert raw.dtype == (np.float16 if dtype == "float16" else np.uint16) and raw.nbytes == want.size * 2
    assert not np.array_equal(want, all_snapshots(store32)[:2])  # the cast does lose bits


# ---------------------------------------------------------------------------------------------- resumption


def test_interrupted_runs_resume_to_the_same_snapshots(reference, digits, tmp_path):
    store32, _ = reference
    trained = []

    def stop_at(group, epoch):
        def hook(info):
            trained.append((info["group"], info["epoch"]))
            if (info["group"], info["epoch"]) == (group, epoch):
                raise Stop

        return hook

    with pytest.raises(Stop):  # stops inside group 0
        experts.train(digits, num_experts=E, epochs=EPOCHS, out_dir=tmp_path, on_epoch=stop_at(0, 2), **SMALL)
    assert (tmp_path / "group_0000.progress.npz").exists()
    with pytest.raises(JaxddError, match="finished"):
        experts.ExpertStore(tmp_path)
    with pytest.raises(Stop):  # finishes group 0, stops inside group 1
        experts.train(digits, num_experts=E, epochs=EPOCHS, out_dir=tmp_path, on_epoch=stop_at(1, 1), **SMALL)
    partial = experts.ExpertStore(tmp_path)
    assert partial.num_experts == 2  # only the finished group
    mtime = os.stat(tmp_path / "group_0000.npy").st_mtime_ns
    store = experts.train(digits, num_experts=E, epochs=EPOCHS, out_dir=tmp_path, on_epoch=stop_at(-1, -1), **SMALL)
    assert trained == [(0, 1), (0, 2), (0, 3), (1, 1), (1, 2), (1, 3)]  # every epoch trained exactly once
    assert os.stat(tmp_path / "group_0000.npy").st_mtime_ns == mtime
    np.testing.assert_array_equal(all_snapshots(store), all_snapshots(store32))  # bit-identical
    np.testing.assert_array_equal(store.forgetting()[0], store32.forgetting()[0])
    np.testing.assert_array_equal(store.metrics()["loss"], store32.metrics()["loss"])
    again = experts.train(digits, num_experts=E, epochs=EPOCHS, out_dir=tmp_path, on_epoch=stop_at(-1, -1), **SMALL)
    assert len(trained) == 6 and again.num_experts == E  # a finished store is only reopened


def test_refusals(reference, digits, tmp_path):
    store, _ = reference
    kwargs = dict(num_experts=E, epochs=EPOCHS, out_dir=store.path, **SMALL)
    with pytest.raises(JaxddError, match="already holds experts"):
        experts.train(digits, **{**kwargs, "resume": False})
    with pytest.raises(JaxddError, match=r"other settings \(lr: 0.05 there, 0.1 here\)"):
        experts.train(digits, **{**kwargs, "lr": 0.1})
    with pytest.raises(JaxddError, match="group size 2"):
        experts.train(digits, **{**kwargs, "group_size": 4})
    other = digits.replace(y_train=np.roll(digits.y_train, 1))
    with pytest.raises(JaxddError, match="another data set or split \\(labels_sha256"):
        experts.ExpertStore(store.path, other)
    with pytest.raises(JaxddError, match="no experts in"):
        experts.ExpertStore(tmp_path)
    with pytest.raises(JaxddError, match="unknown dtype"):
        experts.train(digits, **{**kwargs, "dtype": "float8", "out_dir": tmp_path})
    with pytest.raises(JaxddError, match="out of range"):
        store.snapshot(E, 0)
    with pytest.raises(JaxddError, match="out of range"):
        store.snapshot(0, EPOCHS + 1)
    with pytest.raises(JaxddError, match="exceeds the experts' 3 epochs: use t_max <= 2"):
        store.sample_segment(0, 0, 3, 2)


def test_sample_segment(reference):
    store, _ = reference
    seen = set()
    for i in range(40):
        rng = jax.random.key(i) if i % 2 else np.random.default_rng(i)
        start, target, e, t = store.sample_segment(rng, 1, 3, 1)
        assert 1 <= t < 3 and 0 <= e < E
        np.testing.assert_array_equal(start, store.snapshot(e, t))
        np.testing.assert_array_equal(target, store.snapshot(e, t + 1))
        assert start.dtype == np.float32
        seen.add((e, t))
    assert len(seen) == 2 * E
    a = store.sample_segment(np.random.default_rng(5), 0, 2, 1)
    b = store.sample_segment(np.random.default_rng(5), 0, 2, 1)
    assert a[2:] == b[2:]


def test_default_expert_dir(monkeypatch, tmp_path, digits):
    monkeypatch.setenv("JAXDD_CACHE_DIR", str(tmp_path))
    settings = experts.resolve_settings(digits, num_experts=2, epochs=3)
    a = experts.default_expert_dir("digits", settings)
    assert a.parent == tmp_path / "experts"
    assert experts.default_expert_dir("digits", dict(settings)) == a
    assert experts.default_expert_dir("digits", {**settings, "seed": 1}) != a
    assert experts.default_expert_dir(digits, settings) != a  # keyed by the fingerprint
    assert experts.default_expert_dir("digits", settings, tmp_path / "x").parent == tmp_path / "x" / "experts"
    # `jaxdd experts` without --width/--depth keys its cache as `jaxdd distill` does (explicit numbers)
    assert (settings["width"], settings["depth"]) == (32, 1)
    assert experts.resolve_settings(digits, num_experts=2, epochs=3, depth=1) == settings


def test_mesh_split_matches_one_device(reference, digits, tmp_path):
    store32, _ = reference
    mesh = parallel.make_mesh(2)
    store = experts.train(digits, num_experts=2, epochs=1, out_dir=tmp_path, mesh=mesh,
                          **{**SMALL, "group_size": None})
    assert json.loads((tmp_path / "manifest.json").read_text())["group_size"] == 2
    np.testing.assert_allclose(all_snapshots(store), all_snapshots(store32)[:2, :2], rtol=1e-5, atol=1e-6)


def test_cli_experts_then_forgetting_scores(reference, tmp_path, capsys):
    out = tmp_path / "exp"
    argv = ["experts", "--dataset", "digits", "--experts", "2", "--epochs", "1", "--width", "4", "--depth", "1",
            "--augment", "none", "--batch-size", "64", "--out", str(out), "--no-progress", "--json"]
    assert cli.main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["num_experts"] == 2 and summary["bytes_per_expert"] == 2 * summary["num_params"] * 4
    assert cli.main(argv) == 2  # the folder is taken without --resume
    assert "--resume" in capsys.readouterr().err
    assert cli.main(argv + ["--resume"]) == 0
    capsys.readouterr()
    assert cli.main(["scores", "--dataset", "digits", "--kind", "forgetting", "--from", str(out), "--out",
                     str(tmp_path / "f.npz")]) == 0
    with np.load(tmp_path / "f.npz") as f:
        np.testing.assert_array_equal(f["scores"], experts.ExpertStore(out).forgetting()[0])
        assert str(f["kind"]) == "forgetting"


def test_batchnorm_experts_resume(digits, tmp_path):
    # a model with state (batch-norm running statistics: saved in the progress file, not in the
    # snapshots; training uses batch statistics, so the trajectory does not depend on them)
    kwargs = dict(num_experts=2, epochs=2, width=4, depth=1, norm="batch", augment="none", batch_size=64,
                  progress=False)

    def stop(info):
        raise Stop

    with pytest.raises(Stop):
        experts.train(digits, out_dir=tmp_path / "a", on_epoch=stop, **kwargs)
    resumed = experts.train(digits, out_dir=tmp_path / "a", **kwargs)
    straight = experts.train(digits, out_dir=tmp_path / "b", **kwargs)
    np.testing.assert_array_equal(all_snapshots(resumed), all_snapshots(straight))
    np.testing.assert_array_equal(resumed.forgetting()[0], straight.forgetting()[0])
