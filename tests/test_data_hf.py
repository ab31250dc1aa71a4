"""HuggingFace sources: a local parquet built from synthetic frames reads like the folder copy."""

import io

import numpy as np
import pytest

from polypssl.data import check_dataset, open_labelled, open_unlabelled, protocol_split, synthesize
from polypssl.errors import PolypsslError

datasets = pytest.importorskip("datasets")


@pytest.fixture(scope="module")
def copies(tmp_path_factory):
    out = tmp_path_factory.mktemp("hf")
    paths = synthesize(out / "synth", seed=5, scale="tiny", workers=1, progress=False)
    folder = open_labelled("kvasir-seg", paths["kvasir-seg"])
    rows = [
        {"image": {"bytes": p.read_bytes(), "path": p.name}, "annotation": {"bytes": m.read_bytes(), "path": m.name}}
        for p, m in zip(folder.image_paths, folder.mask_paths)
    ][::-1]  # stored out of order: the source sorts by stored path
    features = datasets.Features({"image": datasets.Image(), "annotation": datasets.Image()})
    ds = datasets.Dataset.from_list(rows, features=features)
    ds.to_parquet(str(out / "kvasir.parquet"))
    ds.rename_column("annotation", "label").save_to_disk(str(out / "disk"))
    return folder, out


def test_parquet_matches_folder(copies):
    folder, out = copies
    hf = open_labelled("hf", out / "kvasir.parquet")
    assert hf.names == folder.names and hf.image_paths is None
    for i in (0, 5, len(hf) - 1):
        (a, ma), (b, mb) = hf[i], folder[i]
        assert np.array_equal(np.asarray(a), np.asarray(b)) and np.array_equal(ma, mb)
    test = open_labelled("hf", out, split="test")  # a folder of parquet files works too
    assert test.names == [folder.names[i] for i in protocol_split(len(folder))["test"]]
    assert check_dataset("hf", out / "kvasir.parquet") == []


def test_save_to_disk_with_other_columns(copies):
    folder, out = copies
    with pytest.raises(PolypsslError, match="column 'annotation'.*image, label"):
        open_labelled("hf", out / "disk")
    hf = open_labelled("hf", out / "disk", mask_column="label")
    assert len(hf) == len(folder) and hf[0][1].shape == folder[0][1].shape
    images = open_unlabelled("hf", out / "disk", max_images=3, decode_max_side=16)
    assert len(images) == 3 and images[0].mode == "RGB" and images.paths is None


def test_missing_local_path():
    with pytest.raises(PolypsslError, match="does not exist"):
        open_labelled("hf", "./no/such/dataset")


def test_rows_without_paths_keep_their_order(tmp_path):
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, "PNG")
    ds = datasets.Dataset.from_dict({"image": [buf.getvalue()] * 3})
    ds.to_parquet(str(tmp_path / "x.parquet"))
    source = open_unlabelled("hf", tmp_path / "x.parquet")
    assert len(source) == 3 and source[2].size == (4, 4)
