"""docs/protocol.md section 3: sorting, pairing and the split indices."""

import numpy as np
import pytest
from PIL import Image

from polypssl.data import open_labelled, protocol_split


def reference_split(n, seed=42):
    """docs/protocol.md section 3 written out literally (scikit-learn's train_test_split applied twice)."""
    t = round(0.1 * n)
    perm = np.random.RandomState(seed).permutation(n)
    test, rest = perm[:t], perm[t:]
    perm2 = np.random.RandomState(seed).permutation(len(rest))
    return {"train": rest[perm2[t:]], "val": rest[perm2[:t]], "test": test}


@pytest.mark.parametrize(
    ("n", "sizes", "heads"),
    [
        # Leading indices computed once from the formula above; they pin numpy's legacy RandomState.
        (1000, (800, 100, 100), {"train": [750, 960, 759, 881, 106], "val": [361, 91, 311, 253, 72],
                                 "test": [521, 737, 740, 660, 411]}),
        (612, (490, 61, 61), {"train": [87, 297, 514, 594, 121], "val": [71, 209, 485, 188, 207],
                              "test": [81, 218, 55, 600, 264]}),
    ],
)
def test_split_matches_protocol(n, sizes, heads):
    split = protocol_split(n)
    assert tuple(len(split[k]) for k in ("train", "val", "test")) == sizes
    for key, head in heads.items():
        assert split[key][:5].tolist() == head
        assert np.array_equal(split[key], reference_split(n)[key])
    together = np.concatenate([split["train"], split["val"], split["test"]])
    assert sorted(together.tolist()) == list(range(n))


def test_split_matches_sklearn_when_installed():
    model_selection = pytest.importorskip("sklearn.model_selection")
    ids = np.arange(1000)
    rest, test = model_selection.train_test_split(ids, test_size=100, random_state=42)
    train, val = model_selection.train_test_split(rest, test_size=100, random_state=42)
    split = protocol_split(1000)
    assert np.array_equal(split["test"], test) and np.array_equal(split["val"], val)
    assert np.array_equal(split["train"], train)


@pytest.fixture(scope="module")
def cvc612(tmp_path_factory):
    """CVC-ClinicDB layout with 612 tiny frames; each mask holds (k % 50) + 1 foreground pixels."""
    root = tmp_path_factory.mktemp("cvc") / "CVC-ClinicDB"
    (root / "Original").mkdir(parents=True)
    (root / "Ground Truth").mkdir()
    for k in range(1, 613):
        Image.fromarray(np.full((8, 8, 3), k % 256, np.uint8)).save(root / "Original" / f"{k}.tif")
        mask = np.zeros(64, np.uint8)
        mask[: k % 50 + 1] = 255
        Image.fromarray(mask.reshape(8, 8)).save(root / "Ground Truth" / f"{k}.tif")
    return root


def test_cvc_names_sort_as_strings_and_split_follows(cvc612):
    full = open_labelled("cvc-clinicdb", cvc612.parent)  # the parent folder is accepted
    names = full.names
    assert names[:4] == ["1.tif", "10.tif", "100.tif", "101.tif"]
    assert names.index("10.tif") < names.index("2.tif")
    assert names == sorted(f"{k}.tif" for k in range(1, 613))
    split = protocol_split(612)
    for key in ("train", "val", "test"):
        part = open_labelled("cvc-clinicdb", cvc612, split=key)
        assert part.names == [names[i] for i in split[key]]
        for i in range(0, len(part), 37):  # masks stay with their images
            k = int(part.names[i].split(".")[0])
            image, mask = part[i]
            assert np.asarray(image)[0, 0, 0] == k % 256
            assert mask.sum() == k % 50 + 1
            assert part.mask_paths[i].name == part.names[i]


def test_kvasir_split_sizes(tmp_path):
    root = tmp_path / "Kvasir-SEG"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for k in range(1000):
        Image.new("RGB", (4, 4)).save(root / "images" / f"img{k:04d}.jpg")
        Image.new("L", (4, 4)).save(root / "masks" / f"img{k:04d}.jpg")
    sizes = [len(open_labelled("kvasir-seg", tmp_path, split=s)) for s in ("train", "val", "test", "all")]
    assert sizes == [800, 100, 100, 1000]
    test = open_labelled("kvasir-seg", root, split="test")
    assert test.names[:2] == [f"img{k:04d}.jpg" for k in protocol_split(1000)["test"][:2]]
