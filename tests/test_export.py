"""jaxdd export: a plain-PyTorch network trained on the exported set scores what `jaxdd evaluate` reports;
the PNG export reads back through jaxdd's folder loader; the exported preprocessing is jaxdd's."""

import json
import os
import shutil

import numpy as np
import pytest

from jaxdd import data, evaluation, export, rundir
from jaxdd.cli import main

PROTOCOL = {"protocol": "quick", "width": 8, "depth": 1, "steps": 150, "num_models": 4}


def write_set(tmp_path, normalize="standardize", ipc=5):
    """A distilled.npz of random real digits (as a run writes it), recording the protocol above."""
    ds = data.load("digits", normalize=normalize, val_fraction=0.1)
    images, labels = evaluation.random_real(ds, ipc, seed=1)
    os.makedirs(tmp_path, exist_ok=True)
    record = dict(method="rat-bptt", ipc=ipc, seed=0, dataset="digits", normalize=normalize, evaluation=PROTOCOL,
                  settings={"normalize": normalize, "val_fraction": 0.1})
    rundir.write_distilled(str(tmp_path), {"images": images, "labels": labels}, record, ds.class_names,
                           ds.preprocessing)
    return ds, str(tmp_path / "distilled.npz")


@pytest.mark.parametrize("normalize", ["standardize", "zca-mtt", "zca"])
def test_exported_preprocessing_is_jaxdds(normalize, tmp_path):
    ds = data.load("digits", normalize=normalize, val_fraction=0.1)
    raw = data.load("digits", normalize="none", val_fraction=0.1)
    pre = export.preprocessing_arrays(ds.preprocessing, ds.image_shape)
    mine = export.apply_exported(pre, raw.x_test.transpose(0, 3, 1, 2))
    np.testing.assert_allclose(mine, ds.x_test.transpose(0, 3, 1, 2), atol=2e-4)


def test_png_export_reads_back_through_the_folder_loader(tmp_path):
    ds, file = write_set(tmp_path / "run")
    assert main(["export", file, "--format", "png", "--out", str(tmp_path / "png")]) == 0
    d = np.load(file)
    names = sorted(os.listdir(tmp_path / "png"))
    assert names == [str(c) for c in ds.class_names]
    tree = tmp_path / "tree"  # the folder loader wants train/ and test/: the export as both
    shutil.copytree(tmp_path / "png", tree / "train")
    shutil.copytree(tmp_path / "png", tree / "test")
    back = data.load(str(tree), normalize="none", cache_dir=str(tmp_path / "cache"))
    np.testing.assert_array_equal(back.y_train, d["labels"])
    pixels = ds.preprocessing.inverse(d["images"])
    # within half a grey level of the pixels, except where the pixel range clipped them
    np.testing.assert_allclose(back.x_train, pixels, atol=0.5 / 255 + 1e-6)
    assert not os.path.exists(tmp_path / "png" / "labels.json")


def test_soft_labels_and_lr_go_to_json(tmp_path):
    ds, file = write_set(tmp_path / "run")
    d = dict(np.load(file))
    soft = np.eye(10, dtype=np.float32)[d["labels"]] * 0.9 + 0.01
    np.savez(file, **{**d, "labels": soft, "lr": np.float32(0.02)})
    assert main(["export", file, "--format", "png", "--out", str(tmp_path / "png")]) == 0
    labels = json.load(open(tmp_path / "png" / "labels.json"))["labels"]
    np.testing.assert_allclose(labels["3/0000.png"], soft[15], rtol=1e-6)
    assert json.load(open(tmp_path / "png" / "lr.json"))["lr"] == pytest.approx(0.02)


def test_class_folders_keep_the_class_order():
    assert export.class_folders(["cat", "ant"]) == ["0_cat", "1_ant"]
    assert export.class_folders([str(i) for i in range(12)])[10] == "10_10"
    assert export.class_folders(["a", "b"]) == ["a", "b"]


def test_pytorch_trains_on_the_torch_export_as_jaxdd_evaluates(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)  # tiny networks: threads only contend on a busy machine
    ds, file = write_set(tmp_path / "run")
    assert main(["evaluate", file, "--json", "--no-progress"]) == 0
    jax_result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert main(["export", file, "--format", "torch", "--out", str(tmp_path / "pt")]) == 0
    s = torch.load(tmp_path / "pt" / "distilled.pt")
    assert s["protocol"] == PROTOCOL and s["images"].shape == (50, 1, 8, 8)
    # a user's own evaluation: the real test images as [0, 1] NCHW pixels, preprocessed as exported
    raw = data.load("digits", normalize="none")
    pre = {k: (v.numpy() if hasattr(v, "numpy") else v) for k, v in s["preprocessing"].items()}
    x_test = torch.from_numpy(export.apply_exported(pre, raw.x_test.transpose(0, 3, 1, 2)))
    y_test = torch.from_numpy(raw.y_test.astype(np.int64))
    accs = []
    for seed in range(4):
        torch.manual_seed(seed)
        net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.GroupNorm(8, 8), torch.nn.ReLU(),
                                  torch.nn.AvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(8 * 4 * 4, 10))
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        for _ in range(PROTOCOL["steps"]):  # the whole set is one batch (50 <= 256)
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(s["images"]), s["labels"].long()).backward()
            opt.step()
        with torch.no_grad():
            accs.append(float((net(x_test).argmax(1) == y_test).float().mean()))
    mean, spread = np.mean(accs), max(np.std(accs), jax_result["accuracy_std"])
    print(f"torch {100 * mean:.2f} ± {100 * np.std(accs):.2f} %, jaxdd evaluate {100 * jax_result['accuracy_mean']:.2f}"
          f" ± {100 * jax_result['accuracy_std']:.2f} %")
    assert abs(mean - jax_result["accuracy_mean"]) <= 2 * spread + 0.01
