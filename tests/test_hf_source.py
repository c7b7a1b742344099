"""hf:NAME sources through the datasets library, on a tiny data set saved locally (no network)."""

import os

import numpy as np
import pytest

from jaxdd import data
from jaxdd.cli import main
from jaxdd.errors import JaxddError

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no network here: fail at once instead of retrying (read on import)
datasets = pytest.importorskip("datasets")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """4 classes of 8x8 grey images (pixel value = 40 * class + index), train 40 / test 8, saved with datasets."""
    from PIL import Image

    def split(n):
        labels = [i % 4 for i in range(n)]
        images = [Image.fromarray(np.full((8, 8), 40 * c + i, np.uint8)) for i, c in enumerate(labels)]
        return datasets.Dataset.from_dict({"picture": images, "kind": labels}, features=datasets.Features(
            {"picture": datasets.Image(), "kind": datasets.ClassLabel(names=["a", "b", "c", "d"])}))

    folder = tmp_path_factory.mktemp("hf") / "tiny"
    datasets.DatasetDict({"train": split(40), "test": split(8)}).save_to_disk(str(folder))
    return str(folder)


def test_columns_found_and_cached(saved, tmp_path):
    ds = data.load(f"hf:{saved}", normalize="none", cache_dir=str(tmp_path))
    assert ds.class_names == ("a", "b", "c", "d") and ds.image_shape == (8, 8, 1)
    np.testing.assert_array_equal(ds.y_train, [i % 4 for i in range(40)])
    np.testing.assert_allclose(ds.x_train[:, 0, 0, 0] * 255, [40 * (i % 4) + i for i in range(40)], atol=1e-3)
    assert len(list(tmp_path.glob("hf-*.npz"))) == 1
    again = data.load(f"hf:{saved}", normalize="none", cache_dir=str(tmp_path))
    np.testing.assert_array_equal(again.x_test, ds.x_test)


def test_named_columns_and_one_line_errors(saved, tmp_path):
    ds = data.load(f"hf:{saved}?image=picture&label=kind", normalize="none", cache_dir=str(tmp_path))
    assert ds.num_classes == 4
    with pytest.raises(JaxddError, match="no column 'pixels'"):
        data.load(f"hf:{saved}?image=pixels", cache_dir=str(tmp_path / "b"))
    with pytest.raises(JaxddError, match="save_to_disk"):
        data.load("hf:surely/not-a-dataset-here", cache_dir=str(tmp_path / "c"))


def test_cli_distills_an_hf_source(saved, tmp_path):
    assert main(["distill", "--dataset", f"hf:{saved}", "--hf-label-column", "kind", "--steps", "2", "--width", "4",
                 "--unroll-steps", "4", "--window", "2", "--real-batch", "16", "--out", str(tmp_path / "run"), "--no-eval", "--no-progress",
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    assert (tmp_path / "run" / "distilled.npz").exists()
