"""Per-image metrics equal docs/protocol.md section 4 on hand-made masks; statistics helpers behave."""

import math

import numpy as np
import pytest
import torch

from polypssl.evaluate import stats
from polypssl.evaluate.metrics import PooledDice, per_image_scores, pixel_counts, pooled_dice

S = 1e-8


def direct(p: int, t: int, i: int) -> dict[str, float]:
    """The protocol's formulas, written out for counts |P|, |T|, |P&T|."""
    return {
        "dice": (2 * i + S) / (p + t + S),
        "iou": (i + S) / (p + t - i + S),
        "precision": (i + S) / (p + S),
        "recall": (i + S) / (t + S),
    }


def logits_of(pred: torch.Tensor) -> torch.Tensor:
    """Logits whose sigmoid is above 0.5 exactly where ``pred`` is True."""
    return torch.where(pred, torch.tensor(3.0), torch.tensor(-3.0))[:, None].float()


def test_scores_equal_direct_formulas_including_empty_masks():
    pred = torch.zeros(4, 6, 6, dtype=torch.bool)
    target = torch.zeros(4, 6, 6, dtype=torch.bool)
    pred[0, :3, :4] = True  # |P| = 12
    target[0, 1:5, 2:5] = True  # |T| = 12, overlap rows 1-2 x cols 2-3 = 4
    target[1, :2, :2] = True  # empty prediction, |T| = 4
    pred[2, 2:4, 2:4] = True  # empty target, |P| = 4
    # image 3: both empty
    scores = per_image_scores(logits_of(pred), target[:, None])
    expected = [direct(12, 12, 4), direct(0, 4, 0), direct(4, 0, 0), direct(0, 0, 0)]
    for n, exp in enumerate(expected):
        for key, value in exp.items():
            assert scores[key][n].item() == pytest.approx(value, rel=1e-12, abs=1e-15), (n, key)
    assert scores["dice"][0].item() == pytest.approx(8 / 24)
    assert scores["iou"][0].item() == pytest.approx(4 / 20)
    # Empty prediction: everything 0 but precision (s/s = 1); empty target: recall 1; both empty: all 1.
    assert scores["dice"][1].item() == pytest.approx(0, abs=1e-8)
    assert scores["precision"][1].item() == 1.0
    assert scores["dice"][2].item() == pytest.approx(0, abs=1e-8)
    assert scores["recall"][2].item() == 1.0
    for key in scores:
        assert scores[key][3].item() == 1.0


def test_threshold_is_sigmoid_half_and_target_luminance_half():
    logits = torch.tensor([[[[0.0, 1e-6, -1e-6, 5.0]]]])  # sigmoid(0) = 0.5 is not > 0.5
    target = torch.tensor([[[[0.5, 0.51, 1.0, 0.49]]]])  # luminance: only > 0.5 is foreground
    counts = pixel_counts(logits, target)
    assert counts["pred"].item() == 2  # 1e-6 and 5.0
    assert counts["target"].item() == 2  # 0.51 and 1.0
    assert counts["inter"].item() == 1  # the 1e-6 pixel
    as_float01 = per_image_scores(logits, (target > 0.5).float())
    as_bool = per_image_scores(logits, target > 0.5)
    assert torch.equal(as_float01["dice"], as_bool["dice"])


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="resize the logits"):
        per_image_scores(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 5, 5))
    with pytest.raises(ValueError, match="one channel"):
        per_image_scores(torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 4, 4))


def test_pooled_dice_is_pixel_pooled_not_the_mean():
    pred = torch.zeros(2, 10, 10, dtype=torch.bool)
    target = torch.zeros(2, 10, 10, dtype=torch.bool)
    target[0] = True  # big object, perfectly found
    pred[0] = True
    target[1, 0, 0] = True  # one-pixel object, missed
    logits = logits_of(pred)
    c = pixel_counts(logits, target[:, None])
    pooled = pooled_dice(c["inter"], c["pred"], c["target"])
    assert pooled == pytest.approx((2 * 100 + S) / (100 + 101 + S))
    assert per_image_scores(logits, target[:, None])["dice"].mean().item() == pytest.approx(0.5)
    acc = PooledDice()
    acc.update(logits[:1], target[:1, None])
    acc.update(logits[1:], target[1:, None])
    assert acc.compute() == pytest.approx(pooled)


def test_metrics_throughput_is_reasonable():
    logits = torch.randn(16, 1, 288, 384)
    target = torch.rand(16, 1, 288, 384)
    per_image_scores(logits, target)  # warm-up
    import time

    start = time.perf_counter()
    per_image_scores(logits, target)
    assert time.perf_counter() - start < 2.0


# ---------------------------------------------------------------------------------------------
# statistics helpers


def test_competition_rank_ties_share_best_rank_and_ignore_float_noise():
    assert stats.competition_rank([0.9, 0.8, 0.8, 0.7]) == [1, 2, 2, 4]
    assert stats.competition_rank([0.1 + 0.2, 0.3, 0.2]) == [1, 1, 3]  # 0.30000000000000004 ties 0.3
    assert stats.competition_rank([0.7891, 0.7894]) == [2, 1]  # differ at 4 decimals: not a tie
    assert stats.competition_rank([0.5, float("nan"), 0.6]) == [2, 3, 1]


def test_rank_change_and_arrows():
    assert stats.rank_change([4, 1, 3], [1, 4, 3]) == [3, -3, 0]
    assert [stats.arrow(c) for c in (3, -3, 0)] == ["↑3", "↓3", ""]


def test_holm_matches_hand_computation():
    p = [0.01, 0.04, 0.03, 0.005]
    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> running max 0.02, 0.03, 0.06, 0.06
    assert stats.holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    out = stats.holm([0.5, float("nan"), 0.9])
    assert out[0] == pytest.approx(1.0) and math.isnan(out[1]) and out[2] == pytest.approx(1.0)


def test_wilcoxon_handles_identical_and_different_samples():
    x = np.linspace(0.2, 0.9, 30)
    assert stats.paired_wilcoxon(x, x.copy()) == (0.0, 1.0)
    _, p = stats.paired_wilcoxon(x, x - 0.05 - 0.01 * np.sin(np.arange(30)))
    assert p < 1e-4


def test_bootstrap_interval_is_deterministic_and_covers_the_mean():
    rng = np.random.default_rng(1)
    values = rng.uniform(0, 1, size=(200, 2))
    ci = stats.bootstrap_ci(values, n_resamples=2000, seed=3)
    assert ci.shape == (2, 2)
    assert np.all(ci[0] < values.mean(0)) and np.all(values.mean(0) < ci[1])
    # standard error of a uniform mean ~ 0.289/sqrt(200) = 0.0204 -> 95% width ~ 0.08
    assert np.allclose(ci[1] - ci[0], 0.08, atol=0.015)
    assert np.array_equal(ci, stats.bootstrap_ci(values, n_resamples=2000, seed=3))
    assert np.allclose(stats.bootstrap_ci(np.full(5, 0.7)), [0.7, 0.7])  # no spread, no interval


def test_rank_correlations():
    a = [0.9, 0.8, 0.7, 0.6, 0.5]
    r = stats.rank_correlations(a, [0.85, 0.75, 0.65, 0.55, 0.45])
    assert r["kendall_tau"] == pytest.approx(1.0) and r["spearman_rho"] == pytest.approx(1.0)
    r = stats.rank_correlations(a, a[::-1])
    assert r["kendall_tau"] == pytest.approx(-1.0)
    assert math.isnan(stats.rank_correlations([0.1, 0.2], [0.2, 0.1])["kendall_tau"])
