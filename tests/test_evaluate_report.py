"""``polypssl report``: Table 1 reproduces known ranks and rank changes; figures, statistics, errors."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from polypssl.errors import PolypsslError
from polypssl.evaluate import labels
from polypssl.evaluate.report import TABLE_COLUMNS, build_report, wandb_table_data

METRIC_NAMES = ("mDice", "mIoU", "mPrecision", "mRecall")
IN_DIST, CROSS = "kvasir-seg-test", "cvc-clinicdb-all"

# The paper's Table 1: run.json fields, label, and per metric (cross-dataset rank, rank change).
PAPER = [
    (("resnet50", "HK", "mocov3"), "RN-HK-MC", [(9, 1), (10, 0), (10, 0), (3, 7)]),
    (("resnet50", "HK", "barlowtwins"), "RN-HK-BT", [(8, 1), (8, 1), (8, 1), (7, -2)]),
    (("resnet50", "IN", "mocov3"), "RN-IN-MC", [(1, 3), (1, 3), (3, 5), (1, 0)]),
    (("resnet50", "IN", "barlowtwins"), "RN-IN-BT", [(5, 0), (6, 1), (6, 0), (4, 2)]),
    (("resnet50", "IN", "supervised"), "RN-IN-SL", [(6, 0), (5, 0), (1, 4), (10, -2)]),
    (("resnet50", "none", "none"), "RN-NA-NA", [(12, 0), (12, 0), (12, 0), (12, 0)]),
    (("vit_b16", "HK", "mocov3"), "VT-HK-MC", [(10, -2), (9, -1), (9, -2), (8, -1)]),
    (("vit_b16", "HK", "mae"), "VT-HK-MA", [(3, 0), (3, 0), (7, -4), (2, 1)]),
    (("vit_b16", "IN", "mocov3"), "VT-IN-MC", [(2, 0), (4, -2), (4, -2), (5, -3)]),
    (("vit_b16", "IN", "mae"), "VT-IN-MA", [(4, -3), (2, -1), (2, -1), (6, -2)]),
    (("vit_b16", "IN", "supervised"), "VT-IN-SL", [(7, 0), (7, -1), (5, -1), (9, 0)]),
    (("vit_b16", "none", "none"), "VT-NA-NA", [(11, 0), (11, 0), (11, 0), (11, 0)]),
]


def per_image_values(mean: float, n: int, reverse: bool = False) -> np.ndarray:
    """``n`` scores in [0, 1] whose mean is ``mean`` (alternating offsets around it)."""
    offsets = 0.05 * np.where(np.arange(n) % 2 == 0, 1.0, -1.0) * np.linspace(0.2, 1.0, n)
    offsets -= offsets.mean()
    values = mean + offsets
    return values[::-1].copy() if reverse else values


def write_eval(run_dir: Path, name: str, columns: list[np.ndarray], prefix: str) -> None:
    folder = run_dir / "eval" / name
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "per_image.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "dice", "iou", "precision", "recall"])
        for i in range(len(columns[0])):
            writer.writerow([f"{prefix}{i}.png", *(repr(float(c[i])) for c in columns)])


def make_study(root: Path, ranks: dict, n_in: int = 20, n_cross: int = 30, tie_values: dict | None = None) -> None:
    """Twelve run directories whose per-image CSVs give the ranks in ``ranks[label] = [(cross, in), ...]``.

    The mean of rank r is 0.9 - 0.03 r. ``tie_values[label] = mDice`` overrides a cross-dataset mDice.
    Directory names are shuffled so the report must order rows itself.
    """
    order = np.random.default_rng(0).permutation(len(PAPER))
    for k, i in enumerate(order):
        (enc, data, method), label, _ = PAPER[i]
        run_dir = root / f"group{k % 2}" / f"run{k:02d}"
        run_dir.mkdir(parents=True)
        (run_dir / "run.json").write_text(json.dumps({
            "encoder": enc, "pretrain_data": data, "pretrain_method": method,
            "weights": f"{method}:/weights/{label}.pth", "finetune_dataset": "kvasir-seg", "image_size": 224,
        }))
        cross_cols, in_cols = [], []
        for j, (cross_rank, in_rank) in enumerate(ranks[label]):
            cross_mean = 0.9 - 0.03 * cross_rank
            if j == 0 and tie_values and label in tie_values:
                cross_mean = tie_values[label]
            cross_cols.append(per_image_values(cross_mean, n_cross, reverse=k % 2 == 1))
            in_cols.append(per_image_values(0.95 - 0.02 * in_rank, n_in))
        write_eval(run_dir, CROSS, cross_cols, "cvc")
        write_eval(run_dir, IN_DIST, in_cols, "kv")


def paper_ranks() -> dict:
    return {label: [(c, c + ch) for c, ch in entries] for _, label, entries in PAPER}


def read_table(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def paper_report(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    make_study(root / "runs", paper_ranks())
    result = build_report(root / "runs", root / "out", n_resamples=2000)
    return root, result


def test_table1_reproduces_the_papers_ranks_and_rank_changes(paper_report):
    root, result = paper_report
    rows = read_table(root / "out" / "table1.csv")
    assert list(rows[0].keys()) == list(TABLE_COLUMNS)
    assert [r["model"] for r in rows] == [label for _, label, _ in PAPER]  # the paper's row order
    for row, ((enc, data, method), label, entries) in zip(rows, PAPER):
        assert (row["encoder"], row["pretrain_data"], row["pretrain_method"]) == (enc, data, method)
        for name, (rank, change) in zip(METRIC_NAMES, entries):
            assert int(row[f"{name}_rank"]) == rank, (label, name)
            assert int(row[f"{name}_rank_change"]) == change, (label, name)
            assert float(row[name]) == pytest.approx(0.9 - 0.03 * rank)


def test_table1_markdown_and_latex_show_arrows_like_the_paper(paper_report):
    root, _ = paper_report
    md = (root / "out" / "table1.md").read_text()
    body = [line for line in md.splitlines() if line.startswith("| ") and "value" not in line]
    assert len(body) == 12
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in body]
    # RN-IN-MC: 1 (↑3) on mDice and mIoU, 3 (↑5) on mPrecision, 1 without arrow on mRecall.
    assert cells[2][:3] == ["", "IN", "MoCo v3"]
    assert cells[2][4] == "1 (↑3)" and cells[2][6] == "1 (↑3)" and cells[2][8] == "3 (↑5)" and cells[2][10] == "1"
    # VT-IN-MA drops from 1 to 4 on mDice.
    assert cells[9][4] == "4 (↓3)"
    assert cells[0][0] == "ResNet50" and cells[6][0] == "ViT-B" and cells[1][0] == ""
    assert cells[5][1:3] == ["None", "None"]
    tex = (root / "out" / "table1.tex").read_text()
    assert "\\toprule" in tex and "\\bottomrule" in tex and "\\midrule" in tex
    assert "4 ($\\downarrow$3)" in tex and "1 ($\\uparrow$3)" in tex
    assert tex.count("\\\\") == 12 + 2


def test_ties_share_the_better_rank(tmp_path):
    ranks = paper_ranks()
    # RN-HK-MC (rank 9) and VT-HK-MC (rank 10) tie on cross-dataset mDice, as the paper's 0.789 and
    # 0.789 nearly do; the two means differ only by float noise (0.63 vs 0.9 - 0.27 = 0.6300000000000001).
    tie = {"RN-HK-MC": 0.63, "VT-HK-MC": 0.9 - 0.03 * 9}
    make_study(tmp_path / "runs", ranks, tie_values=tie)
    build_report(tmp_path / "runs", tmp_path / "out", n_resamples=200)
    rows = {r["model"]: r for r in read_table(tmp_path / "out" / "table1.csv")}
    assert rows["RN-HK-MC"]["mDice_rank"] == rows["VT-HK-MC"]["mDice_rank"] == "9"
    assert rows["VT-NA-NA"]["mDice_rank"] == "11"  # competition ranking: 9, 9, 11
    assert rows["RN-HK-MC"]["mDice_rank_change"] == "1"  # in-distribution 10 -> 9
    assert rows["VT-HK-MC"]["mDice_rank_change"] == "-1"  # in-distribution 8 -> 9
    md = (tmp_path / "out" / "table1.md").read_text()
    assert "| 0.630 | 9 (↑1) |" in md and "| 0.630 | 9 (↓1) |" in md


def test_figures_are_valid_images(paper_report):
    root, _ = paper_report
    for stem in ("fig1_dice_distributions", "fig2_relative_drop"):
        with Image.open(root / "out" / f"{stem}.png") as img:
            img.verify()
            assert img.size[0] > 300 and img.size[1] > 200
        assert (root / "out" / f"{stem}.pdf").read_bytes().startswith(b"%PDF")


def test_report_md_ties_it_together_with_statistics(paper_report):
    root, result = paper_report
    report = (root / "out" / "report.md").read_text()
    for needle in ("## Findings", "## Table 1", "fig1_dice_distributions.png", "fig2_relative_drop.png",
                   "Kendall", "Spearman", "Holm", "95% CI", "RN-IN-MC", "group0/run00"):
        assert needle in report, needle
    st = result["statistics"]
    assert len(st["pairwise"][CROSS]) == 66 and len(st["pairwise"][IN_DIST]) == 66
    # In-dist means are 0.95 - 0.02 r, cross 0.9 - 0.03 r: RN-IN-MC (4 -> 1) keeps 0.87, all others drop.
    drops = {e["model"]: e["relative_drop"] for e in st["models"]}
    assert drops.pop("RN-IN-MC") == pytest.approx(0.0, abs=1e-12) and all(d > 0.05 for d in drops.values())
    joined = " ".join(result["findings"])
    assert "On cvc-clinicdb-all, RN-IN-MC has the highest mDice" in joined
    assert "11 of 12 models score significantly lower per-image Dice" in joined
    assert "RN-IN-MC overtakes VT-IN-MA" in joined
    rc = st["rank_correlation"]
    expected_tau = __import__("scipy.stats", fromlist=["kendalltau"]).kendalltau(
        [r[0][1] for r in paper_ranks().values()], [r[0][0] for r in paper_ranks().values()]).statistic
    assert rc["kendall_tau"] == pytest.approx(expected_tau)
    for e in st["models"]:
        lo, hi = e[CROSS]["mDice_ci95"]
        assert lo < e[CROSS]["mDice"] < hi


def test_findings_only_claim_what_the_tests_support(tmp_path):
    """Two models with identical per-image Dice on the cross set: no significant difference is claimed."""
    for k, method in enumerate(("mocov3", "supervised")):
        run_dir = tmp_path / "runs" / method
        run_dir.mkdir(parents=True)
        (run_dir / "run.json").write_text(json.dumps({"encoder": "resnet50", "pretrain_data": "IN", "pretrain_method": method}))
        write_eval(run_dir, "b-all", [per_image_values(0.7, 15)] * 4, "b")
        write_eval(run_dir, "a-test", [per_image_values(0.8 + 0.05 * k, 15)] * 4, "a")
    result = build_report(tmp_path / "runs", tmp_path / "out", in_dist="a-test", cross="b-all", n_resamples=200)
    pair = result["statistics"]["pairwise"]["b-all"][0]
    assert pair["p"] == 1.0 and pair["p_holm"] == 1.0
    assert not any("significantly higher" in s and "b-all" in s for s in result["findings"])
    assert any("not significantly different" in s for s in result["findings"])
    assert (tmp_path / "out" / "table1.csv").exists()


def test_one_run_and_other_dataset_names_work(tmp_path):
    run_dir = tmp_path / "runs" / "only"
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps({"encoder": "convnext_tiny", "pretrain_data": "my-data", "pretrain_method": "dino"}))
    write_eval(run_dir, "kvasir-seg-all", [per_image_values(0.8, 7)] * 4, "k")
    write_eval(run_dir, "etis-test", [np.full(1, 0.5)] * 4, "e")  # one image only
    result = build_report(tmp_path / "runs", in_dist="kvasir-seg-all", cross="etis-test", n_resamples=100)
    rows = read_table(tmp_path / "runs" / "report" / "table1.csv")
    assert rows[0]["model"] == "CONVNEXTTINY-MYDATA-DINO"
    assert rows[0]["mDice_rank"] == "1" and rows[0]["mDice_rank_change"] == "0"
    assert "Only one model" in (tmp_path / "runs" / "report" / "report.md").read_text()
    assert result["statistics"]["models"][0]["relative_drop"] == pytest.approx(1 - 0.5 / 0.8)


def test_missing_evaluation_names_run_file_and_command(tmp_path):
    make_study(tmp_path / "runs", paper_ranks(), n_in=4, n_cross=4)
    victim = sorted((tmp_path / "runs").rglob("run.json"))[3].parent
    (victim / "eval" / CROSS / "per_image.csv").unlink()
    with pytest.raises(PolypsslError) as err:
        build_report(tmp_path / "runs", tmp_path / "out")
    msg = str(err.value)
    assert str(victim) in msg
    assert "eval/cvc-clinicdb-all/per_image.csv" in msg
    assert f"polypssl evaluate {victim} cvc-clinicdb ROOT --split all" in msg


def test_report_cli_prints_one_line_error_for_missing_evaluation(tmp_path, capsys):
    from polypssl.cli import main

    run_dir = tmp_path / "runs" / "r"
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps({"encoder": "vit_b16", "pretrain_data": "IN", "pretrain_method": "mae"}))
    write_eval(run_dir, IN_DIST, [per_image_values(0.8, 5)] * 4, "k")
    assert main(["report", str(tmp_path / "runs"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "polypssl report: error:" in err and "eval/cvc-clinicdb-all/per_image.csv" in err
    assert not (tmp_path / "out" / "table1.csv").exists()


def test_bad_inputs_are_clear_errors(tmp_path):
    with pytest.raises(PolypsslError, match="does not exist"):
        build_report(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PolypsslError, match="no run.json"):
        build_report(tmp_path / "empty")
    run_dir = tmp_path / "bad" / "r"
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps({"encoder": "resnet50"}))
    with pytest.raises(PolypsslError, match="pretrain_data"):
        build_report(tmp_path / "bad")


def test_labels_fallbacks_order_and_disambiguation():
    assert labels.model_label({"encoder": "resnet18", "pretrain_data": "imagenet-1k", "pretrain_method": "mocov3"}) == "RN-IN-MC"
    assert labels.model_label({"encoder": "vit_small", "pretrain_data": "hyperkvasir-unlabelled", "pretrain_method": "mae"}) == "VT-HK-MA"
    assert labels.model_label({"encoder": "vit_b16", "pretrain_data": None, "pretrain_method": "none"}) == "VT-NA-NA"
    assert labels.model_label({"encoder": "x", "pretrain_data": "IN", "pretrain_method": "supervised", "label": "mine"}) == "mine"
    assert labels.disambiguate(["A", "B", "A"]) == ["A#1", "B", "A#2"]
    infos = [{"encoder": e, "pretrain_data": d, "pretrain_method": m} for (e, d, m), _, _ in PAPER]
    shuffled = [infos[i] for i in np.random.default_rng(1).permutation(12)]
    assert sorted(shuffled, key=labels.sort_key) == infos


def test_wandb_table_matches_table1(paper_report):
    _, result = paper_report
    columns, data = wandb_table_data(result["table"])
    assert columns == list(TABLE_COLUMNS) and len(data) == 12 and data[2][0] == "RN-IN-MC"


@pytest.mark.slow
def test_wandb_offline_logging(paper_report, tmp_path, monkeypatch):
    from polypssl.evaluate.report import log_to_wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    _, result = paper_report
    where = log_to_wandb(result, project="polypssl-test")
    assert Path(where).is_relative_to(tmp_path)
    assert list(tmp_path.rglob("*.wandb"))
