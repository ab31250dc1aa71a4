"""Statistics for the report: ranks, bootstrap intervals, paired tests, rank correlations.

The paper reports point estimates only; these say which differences are real. Tests come from
scipy; the few lines hand-written here (competition ranks, shared-resample bootstrap, Holm) are
either absent from scipy or, for the bootstrap, much faster when one resample matrix serves all
metrics of an image set.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
from scipy import stats as sps

RANK_DECIMALS = 9
DEFAULT_RESAMPLES = 10_000
DEFAULT_SEED = 0


def competition_rank(values: Sequence[float], higher_is_better: bool = True, decimals: int = RANK_DECIMALS) -> list[int]:
    """Ranks with 1 = best and ties sharing the best rank ("1224" ranking).

    Values are compared after rounding to ``decimals`` places so float noise does not split a tie,
    while genuinely different means (even ones that print alike at 3 decimals) keep distinct ranks.
    NaN ranks last.
    """
    arr = np.round(np.asarray(values, dtype=float), decimals)
    key = -arr if higher_is_better else arr
    key = np.where(np.isnan(key), np.inf, key)
    return [int(r) for r in sps.rankdata(key, method="min")]


def rank_change(in_dist_rank: Sequence[int], cross_rank: Sequence[int]) -> list[int]:
    """In-distribution rank minus cross-dataset rank: positive = the model moved up."""
    return [int(a) - int(b) for a, b in zip(in_dist_rank, cross_rank)]


def arrow(change: int) -> str:
    """``↑n`` for a move up, ``↓n`` for a move down, empty for no change."""
    if change > 0:
        return f"↑{change}"
    if change < 0:
        return f"↓{-change}"
    return ""


def bootstrap_means(
    values: np.ndarray, n_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED, chunk: int = 2000
) -> np.ndarray:
    """Bootstrap distribution of column means: ``values`` [n] or [n, k] -> [n_resamples] or [n_resamples, k].

    Resampling images with replacement is drawn as per-resample counts, so the means of all
    ``k`` columns come out of one matrix product; the same seed and ``n`` give the same resamples.
    """
    arr = np.asarray(values, dtype=float)
    squeeze = arr.ndim == 1
    arr = arr.reshape(len(arr), -1)
    n = len(arr)
    if n == 0:
        raise ValueError("cannot bootstrap an empty sample")
    rng = np.random.default_rng(seed)
    out = np.empty((n_resamples, arr.shape[1]))
    for start in range(0, n_resamples, chunk):
        b = min(chunk, n_resamples - start)
        idx = rng.integers(0, n, size=(b, n))
        counts = np.bincount((idx + n * np.arange(b)[:, None]).ravel(), minlength=b * n).reshape(b, n)
        out[start : start + b] = counts @ arr / n
    return out[:, 0] if squeeze else out


def percentile_ci(boot: np.ndarray, level: float = 0.95) -> np.ndarray:
    """Percentile interval(s) ``[low, high]`` along the first axis."""
    alpha = (1 - level) / 2
    return np.quantile(boot, [alpha, 1 - alpha], axis=0)


def bootstrap_ci(
    values: np.ndarray, n_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED, level: float = 0.95
) -> np.ndarray:
    """95% percentile bootstrap interval of the mean over images (per column for 2-D input)."""
    return percentile_ci(bootstrap_means(values, n_resamples, seed), level)


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm step-down adjusted p-values (scipy has no Holm; statsmodels is not a dependency).

    Sort ascending, multiply the i-th smallest by (m - i), take the running maximum, cap at 1.
    NaN p-values stay NaN and do not count towards m.
    """
    p = np.asarray(pvalues, dtype=float)
    out = np.full_like(p, np.nan)
    ok = ~np.isnan(p)
    m = int(ok.sum())
    if m == 0:
        return out
    order = np.argsort(p[ok])
    adj = np.minimum(1.0, np.maximum.accumulate(p[ok][order] * (m - np.arange(m))))
    res = np.empty(m)
    res[order] = adj
    out[ok] = res
    return out


def paired_wilcoxon(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Two-sided Wilcoxon signed-rank test on paired per-image scores: ``(statistic, p)``.

    Identical scores on every image (all differences zero) mean no evidence of a difference:
    ``(0.0, 1.0)``. Zero differences are otherwise dropped (scipy's default ``wilcox``).
    """
    d = np.asarray(x, dtype=float) - np.asarray(y, dtype=float)
    if len(d) == 0:
        return math.nan, math.nan
    if np.all(d == 0):
        return 0.0, 1.0
    res = sps.wilcoxon(x, y)
    return float(res.statistic), float(res.pvalue)


def rank_correlations(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """Spearman rho and Kendall tau (tau-b, ties allowed) between two sets of per-model scores.

    Correlating the values equals correlating their rankings. Fewer than 3 models, or a constant
    set, give NaN: no ranking to compare.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    nan = {"spearman_rho": math.nan, "spearman_p": math.nan, "kendall_tau": math.nan, "kendall_p": math.nan}
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rho = sps.spearmanr(a, b)
        tau = sps.kendalltau(a, b)
    return {
        "spearman_rho": float(rho.statistic), "spearman_p": float(rho.pvalue),
        "kendall_tau": float(tau.statistic), "kendall_p": float(tau.pvalue),
    }


def one_sided_drop_test(in_dist: np.ndarray, cross: np.ndarray) -> float:
    """p-value that per-image scores are lower on the cross dataset (Mann-Whitney U; different images)."""
    if len(in_dist) == 0 or len(cross) == 0:
        return math.nan
    if np.ptp(np.concatenate([in_dist, cross])) == 0:
        return 1.0
    return float(sps.mannwhitneyu(in_dist, cross, alternative="greater").pvalue)
