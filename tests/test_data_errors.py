"""Mask binarisation (docs/protocol.md section 4) and one clear error per kind of bad input."""

import io

import numpy as np
import pytest
from PIL import Image

from polypssl.data import check_dataset, load_mask, open_labelled, open_unlabelled
from polypssl.errors import PolypsslError


def disc(h=60, w=80):
    yy, xx = np.mgrid[0:h, 0:w]
    return (yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (min(h, w) / 3) ** 2


def jpeg(arr, path, quality=75):
    Image.fromarray(arr).save(path, "JPEG", quality=quality)
    return path


def test_jpeg_noisy_mask_binarises_to_the_drawn_shape(tmp_path):
    truth = disc()
    path = jpeg(np.repeat((truth * 255).astype(np.uint8)[..., None], 3, axis=2), tmp_path / "m.jpg")
    raw = np.asarray(Image.open(path).convert("L"))
    assert ((raw > 0) & (raw < 20)).any() or ((raw > 235) & (raw < 255)).any()  # really noisy
    assert np.array_equal(load_mask(path), truth)


def test_threshold_is_half_luminance(tmp_path):
    arr = np.array([[0, 127, 128, 255]], np.uint8)
    Image.fromarray(arr).save(tmp_path / "m.png")
    assert load_mask(tmp_path / "m.png").tolist() == [[False, False, True, True]]
    Image.fromarray(np.array([[[255, 0, 0], [255, 255, 255]]], np.uint8)).save(tmp_path / "rgb.png")
    assert load_mask(tmp_path / "rgb.png").tolist() == [[False, True]]  # red has luma 0.299


def make_kvasir(root, n=4, size=(40, 30)):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for k in range(n):
        jpeg(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8), root / "images" / f"f{k}.jpg", 90)
        jpeg((disc(size[1], size[0]) * 255).astype(np.uint8), root / "masks" / f"f{k}.jpg", 90)
    return root


def assert_one_problem(problems, *fragments):
    assert len(problems) == 1, problems
    for fragment in fragments:
        assert fragment in problems[0], problems


def test_good_copy_has_no_problems_and_masks_keep_their_size(tmp_path):
    root = make_kvasir(tmp_path / "Kvasir-SEG")
    assert check_dataset("kvasir-seg", tmp_path) == []
    image, mask = open_labelled("kvasir-seg", root)[0]
    assert image.mode == "RGB" and image.size == (40, 30) and mask.shape == (30, 40) and mask.dtype == bool


def test_unknown_dataset_name():
    with pytest.raises(PolypsslError, match="kvasir-seg, cvc-clinicdb, hyperkvasir-unlabelled"):
        open_labelled("kvasir", "x")
    with pytest.raises(PolypsslError, match="unknown dataset name 'kvasirseg'"):
        check_dataset("kvasirseg", "x")


def test_missing_folder(tmp_path):
    with pytest.raises(PolypsslError, match="does not exist"):
        open_labelled("kvasir-seg", tmp_path / "nope")
    with pytest.raises(PolypsslError, match="does not exist"):
        open_unlabelled("folder", tmp_path / "nope")
    assert "does not exist" in check_dataset("kvasir-seg", tmp_path / "nope")[0]


def test_wrong_layout_names_the_expected_folders(tmp_path):
    with pytest.raises(PolypsslError, match="Ground Truth"):
        open_labelled("cvc-clinicdb", tmp_path)


def test_empty_folder(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(PolypsslError, match="no images found in"):
        open_labelled("kvasir-seg", tmp_path)
    with pytest.raises(PolypsslError, match="no images found in"):
        open_unlabelled("hyperkvasir-unlabelled", tmp_path)


def test_image_without_mask_and_mask_without_image(tmp_path):
    root = make_kvasir(tmp_path)
    (root / "masks" / "f1.jpg").unlink()
    (root / "masks" / "f0.jpg").rename(root / "masks" / "orphan.jpg")
    with pytest.raises(PolypsslError, match="image without mask"):
        open_labelled("kvasir-seg", root)
    problems = check_dataset("kvasir-seg", root)
    assert any("image without mask" in p and "f0.jpg" in p for p in problems)
    assert any("image without mask" in p and "f1.jpg" in p for p in problems)
    assert any("mask without image" in p and "orphan.jpg" in p for p in problems)


def test_truncated_image(tmp_path):
    root = make_kvasir(tmp_path)
    data = (root / "images" / "f2.jpg").read_bytes()
    (root / "images" / "f2.jpg").write_bytes(data[: len(data) // 2])
    assert_one_problem(check_dataset("kvasir-seg", root), "f2.jpg", "truncated")
    source = open_labelled("kvasir-seg", root)
    with pytest.raises(PolypsslError, match="f2.jpg"):
        source[2]
    (root / "images" / "f3.jpg").write_bytes(b"not an image")
    assert any("f3.jpg" in p for p in check_dataset("kvasir-seg", root))


def test_mask_of_another_size(tmp_path):
    root = make_kvasir(tmp_path)
    jpeg((disc(20, 20) * 255).astype(np.uint8), root / "masks" / "f1.jpg")
    assert_one_problem(check_dataset("kvasir-seg", root), "f1.jpg", "20x20", "40x30")
    with pytest.raises(PolypsslError, match=r"masks/f1.jpg.*images/f1.jpg"):
        open_labelled("kvasir-seg", root)[1]


def test_non_binary_mask(tmp_path):
    root = make_kvasir(tmp_path)
    gradient = np.tile(np.linspace(0, 255, 40).astype(np.uint8), (30, 1))
    jpeg(gradient, root / "masks" / "f3.jpg")
    assert_one_problem(check_dataset("kvasir-seg", root), "f3.jpg", "not binary")


def test_all_problems_reported_at_once(tmp_path):
    root = make_kvasir(tmp_path, n=5)
    (root / "masks" / "f0.jpg").unlink()
    (root / "images" / "f1.jpg").write_bytes(b"\xff\xd8\xff")
    jpeg(np.tile(np.linspace(0, 255, 40).astype(np.uint8), (30, 1)), root / "masks" / "f2.jpg")
    jpeg((disc(10, 10) * 255).astype(np.uint8), root / "masks" / "f3.jpg")
    problems = check_dataset("kvasir-seg", root)
    assert len(problems) == 4
    for name in ("f0.jpg", "f1.jpg", "f2.jpg", "f3.jpg"):
        assert any(name in p for p in problems)


def test_real_count_is_a_note_not_a_problem(tmp_path):
    report = check_dataset("kvasir-seg", make_kvasir(tmp_path))
    assert report == [] and report.counts["pairs"] == 4
    assert any("1000" in note for note in report.notes)


def test_reduced_jpeg_decode_keeps_both_sides_at_least_the_hint(tmp_path):
    path = jpeg(np.random.default_rng(0).integers(0, 255, (1072, 1920, 3), dtype=np.uint8), tmp_path / "big.jpg", 90)
    full = open_unlabelled("folder", tmp_path)[0]
    assert full.size == (1920, 1072)
    assert open_unlabelled("folder", tmp_path, decode_max_side=224)[0].size == (480, 268)  # 1/4 scale
    assert open_unlabelled("folder", tmp_path, decode_max_side=100)[0].size == (240, 134)  # 1/8 scale
    assert open_unlabelled("folder", tmp_path, decode_max_side=2000)[0].size == (1920, 1072)
    assert path.exists()


def test_unlabelled_layouts(tmp_path):
    for wnid in ("n01440764", "n01443537"):
        (tmp_path / "in" / "train" / wnid).mkdir(parents=True)
        for k in range(3):
            Image.new("RGB", (8, 8)).save(tmp_path / "in" / "train" / wnid / f"{wnid}_{k}.JPEG")
    a = open_unlabelled("imagenet-1k", tmp_path / "in")
    b = open_unlabelled("imagenet-1k", tmp_path / "in" / "train")
    assert len(a) == 6 and a.paths == b.paths == sorted(a.paths)
    assert len(open_unlabelled("imagenet-1k", tmp_path / "in", max_images=4)) == 4
    hk = tmp_path / "hk" / "unlabeled-images" / "images" / "sub"
    hk.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(hk / "a.jpg")
    (hk / "notes.txt").write_text("x")
    assert len(open_unlabelled("hyperkvasir-unlabelled", tmp_path / "hk")) == 1
    assert open_unlabelled("folder", tmp_path / "hk")[0].mode == "RGB"
    kv = make_kvasir(tmp_path / "kv" / "Kvasir-SEG")
    assert [p.name for p in open_unlabelled("kvasir-seg", kv.parent).paths] == [f"f{k}.jpg" for k in range(4)]


def test_corrupt_bytes_in_memory_name_the_source():
    from polypssl.data.decode import load_rgb

    with pytest.raises(PolypsslError, match="row 3"):
        load_rgb(io.BytesIO(b"junk").getvalue(), label="row 3")
