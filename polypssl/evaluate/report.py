"""``polypssl report RUNS_DIR [--out DIR]``: Table 1, Fig. 1, Fig. 2 and the statistics behind them.

Every run directory below RUNS_DIR that holds ``run.json`` is one model. Its two evaluations
(in-distribution, default ``kvasir-seg-test``, and cross-dataset, default ``cvc-clinicdb-all``)
are read from ``eval/<dataset>-<split>/per_image.csv``; all numbers are recomputed from those
per-image rows, so the report never depends on a stale summary. See docs/report.md for what each
output file holds and how ranks, rank changes and the statistics are computed.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from polypssl import runs
from polypssl.errors import PolypsslError
from polypssl.evaluate import figures, labels, stats
from polypssl.evaluate.metrics import METRICS
from polypssl.evaluate.run import CSV_COLUMNS, MEAN_KEYS

log = logging.getLogger(__name__)

MEAN_NAMES = tuple(MEAN_KEYS[m] for m in METRICS)  # mDice, mIoU, mPrecision, mRecall
TABLE_COLUMNS = (
    "model", "encoder", "pretrain_data", "pretrain_method",
    *(f"{name}{suffix}" for name in MEAN_NAMES for suffix in ("", "_rank", "_rank_change")),
)
REQUIRED_KEYS = ("encoder", "pretrain_data", "pretrain_method")
ALPHA = 0.05


@dataclass
class Evaluation:
    """Per-image scores of one model on one dataset, as read from ``per_image.csv``."""

    path: Path
    names: list[str]
    values: np.ndarray  # [n, 4] in METRICS order

    @property
    def means(self) -> np.ndarray:
        return self.values.mean(axis=0) if len(self.values) else np.full(len(METRICS), np.nan)

    @property
    def dice(self) -> np.ndarray:
        return self.values[:, 0]

    def keyed(self) -> dict[str, int]:
        """Image key -> row; a name seen twice gets ``name#2`` so pairs stay one-to-one."""
        keys: dict[str, int] = {}
        for i, name in enumerate(self.names):
            key, k = name, 1
            while key in keys:
                k += 1
                key = f"{name}#{k}"
            keys[key] = i
        return keys


@dataclass
class Model:
    run_dir: Path
    info: dict[str, Any]
    label: str = ""
    evals: dict[str, Evaluation] = field(default_factory=dict)

    @property
    def family(self) -> str:
        return labels.encoder_code(self.info["encoder"])


# ---------------------------------------------------------------------------------------------
# reading


def split_eval_name(name: str) -> tuple[str, str]:
    """``cvc-clinicdb-all`` -> (``cvc-clinicdb``, ``all``)."""
    dataset, _, split = name.rpartition("-")
    return (dataset, split) if dataset else (name, "test")


def find_runs(runs_dir: str | Path) -> list[Path]:
    """Every directory below ``runs_dir`` (itself included) that holds ``run.json``, sorted."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise PolypsslError(f"runs folder {runs_dir} does not exist; pass the folder that holds your fine-tuning runs")
    found = sorted(p.parent for p in runs_dir.rglob("run.json") if "eval" not in p.relative_to(runs_dir).parts[:-1])
    if not found:
        raise PolypsslError(
            f"no run.json below {runs_dir}: RUNS_DIR must hold fine-tuning runs (run `polypssl finetune CONFIG` first)"
        )
    return found


def read_run_info(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "run.json"
    try:
        info = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise PolypsslError(f"{path} is not valid JSON ({err}); re-run `polypssl finetune` for this run") from err
    if not isinstance(info, dict):
        raise PolypsslError(f"{path} must hold a JSON object with keys {', '.join(REQUIRED_KEYS)}")
    missing = [k for k in REQUIRED_KEYS if k not in info]
    if missing:
        raise PolypsslError(
            f"{path} lacks key(s) {', '.join(missing)}; add them (e.g. \"pretrain_data\": \"IN\", "
            f"\"pretrain_method\": \"mocov3\") or re-run `polypssl finetune`"
        )
    return info


def read_per_image(path: Path) -> Evaluation:
    """Read ``per_image.csv`` (``image,dice,iou,precision,recall``)."""
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise PolypsslError(
                f"{path} lacks column(s) {', '.join(missing)} (expected {','.join(CSV_COLUMNS)}); "
                "re-create it with `polypssl evaluate`"
            )
        names, rows = [], []
        for line, row in enumerate(reader, start=2):
            try:
                rows.append([float(row[m]) for m in METRICS])
            except (TypeError, ValueError) as err:
                raise PolypsslError(f"{path} line {line}: not a number ({err}); re-create it with `polypssl evaluate`") from err
            names.append(row["image"])
    if not rows:
        raise PolypsslError(f"{path} holds no images; re-create it with `polypssl evaluate`")
    return Evaluation(path, names, np.asarray(rows, dtype=float))


def _evaluate_command(run_dir: Path, eval_name: str) -> str:
    dataset, split = split_eval_name(eval_name)
    return f"polypssl evaluate {run_dir} {dataset} ROOT --split {split}"


def load_models(runs_dir: str | Path, eval_names: Sequence[str]) -> list[Model]:
    """Runs below ``runs_dir`` with the given evaluations, in the paper's row order, labelled."""
    models = [Model(d, read_run_info(d)) for d in find_runs(runs_dir)]
    missing = []
    for model in models:
        for name in eval_names:
            path = model.run_dir / "eval" / name / "per_image.csv"
            if path.is_file():
                model.evals[name] = read_per_image(path)
            else:
                missing.append(f"{model.run_dir}: missing {Path('eval', name, 'per_image.csv')} "
                               f"(create it with `{_evaluate_command(model.run_dir, name)}`)")
    if missing:
        raise PolypsslError(f"{len(missing)} evaluation(s) missing; " + "; ".join(missing))
    models.sort(key=lambda m: (labels.sort_key(m.info), str(m.run_dir)))
    for model, label in zip(models, labels.disambiguate([labels.model_label(m.info) for m in models])):
        model.label = label
    return models


# ---------------------------------------------------------------------------------------------
# Table 1


def table1_rows(models: Sequence[Model], in_dist: str, cross: str) -> list[dict[str, Any]]:
    """One row per model: cross-dataset value, rank and rank change (in-dist rank - cross rank) per metric."""
    rows = [
        {"model": m.label, "encoder": m.info["encoder"], "pretrain_data": m.info["pretrain_data"],
         "pretrain_method": m.info["pretrain_method"]}
        for m in models
    ]
    for j, name in enumerate(MEAN_NAMES):
        cross_values = [m.evals[cross].means[j] for m in models]
        cross_rank = stats.competition_rank(cross_values)
        in_rank = stats.competition_rank([m.evals[in_dist].means[j] for m in models])
        change = stats.rank_change(in_rank, cross_rank)
        for row, v, r, c in zip(rows, cross_values, cross_rank, change):
            row[name] = float(v)
            row[f"{name}_rank"] = r
            row[f"{name}_rank_change"] = c
    return rows


def table1_csv(rows: Sequence[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=TABLE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in row.items()})
    return buf.getvalue()


def rank_cell(rank: int, change: int, latex: bool = False) -> str:
    """``9 (↑1)``, ``10 (↓2)`` or ``5`` (LaTeX: ``9 ($\\uparrow$1)``)."""
    if change == 0:
        return str(rank)
    if latex:
        return f"{rank} ($\\{'up' if change > 0 else 'down'}arrow${abs(change)})"
    return f"{rank} ({stats.arrow(change)})"


def _grouped(models: Sequence[Model]) -> list[tuple[str, str, str, bool, bool]]:
    """(encoder, data, method, new encoder group, new data group) per row, repeats blanked like the paper."""
    out, prev_enc, prev_data = [], None, None
    for m in models:
        enc = labels.encoder_display(m.info["encoder"])
        data = labels.data_display(m.info["pretrain_data"])
        new_enc = enc != prev_enc
        new_data = new_enc or data != prev_data
        out.append((enc if new_enc else "", data if new_data else "", labels.method_display(m.info["pretrain_method"]),
                    new_enc, new_data))
        prev_enc, prev_data = enc, data
    return out


def table1_markdown(models: Sequence[Model], rows: Sequence[dict[str, Any]], cross: str, in_dist: str) -> str:
    head = ["Backbone", "Data", "Algo."] + [f"{n} {c}" for n in MEAN_NAMES for c in ("value", "rank")]
    lines = [
        f"Models fine-tuned and tested across datasets: values on **{cross}**; rank 1 = best; arrows give the "
        f"change of rank relative to **{in_dist}** (↑ moved up, ↓ moved down).",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join([":--"] * 3 + ["--:", ":--"] * len(MEAN_NAMES)) + "|",
    ]
    for (enc, data, method, _, _), row in zip(_grouped(models), rows):
        cells = [enc, data, method]
        for n in MEAN_NAMES:
            cells += [f"{row[n]:.3f}", rank_cell(row[f'{n}_rank'], row[f'{n}_rank_change'])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


TEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
    "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
}


def _tex_escape(text: str) -> str:
    return "".join(TEX_SPECIAL.get(ch, ch) for ch in str(text))


def table1_latex(models: Sequence[Model], rows: Sequence[dict[str, Any]], cross: str, in_dist: str) -> str:
    """booktabs table grouped by encoder and pretraining data, like the paper's Table 1."""
    ncol = 3 + 2 * len(MEAN_NAMES)
    lines = [
        "% requires \\usepackage{booktabs}",
        "\\begin{table}[t]",
        "\\centering",
        f"\\caption{{Models tested on {_tex_escape(cross)}: value and rank (1 = best) of each metric, with the "
        f"change of rank relative to {_tex_escape(in_dist)}.}}",
        "\\begin{tabular}{lll" + "rl" * len(MEAN_NAMES) + "}",
        "\\toprule",
        "Backbone arch. & \\multicolumn{2}{c}{Pretraining} & "
        + " & ".join(f"\\multicolumn{{2}}{{c}}{{{n}}}" for n in MEAN_NAMES) + " \\\\",
        "\\cmidrule(lr){2-3}" + "".join(f"\\cmidrule(lr){{{4 + 2 * k}-{5 + 2 * k}}}" for k in range(len(MEAN_NAMES))),
        " & Data & Algo. & " + " & ".join(["Value & Rank"] * len(MEAN_NAMES)) + " \\\\",
    ]
    for i, ((enc, data, method, new_enc, new_data), row) in enumerate(zip(_grouped(models), rows)):
        if new_enc:
            lines.append("\\midrule")
        elif new_data and i:
            lines.append(f"\\cmidrule(l){{2-{ncol}}}")
        cells = [_tex_escape(enc), _tex_escape(data), _tex_escape(method)]
        for n in MEAN_NAMES:
            cells += [f"{row[n]:.3f}", rank_cell(row[f'{n}_rank'], row[f'{n}_rank_change'], latex=True)]
        lines.append(" & ".join(cells) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# statistics


def pairwise_tests(models: Sequence[Model], eval_name: str) -> list[dict[str, Any]]:
    """Paired Wilcoxon signed-rank tests on per-image Dice for every pair of models, Holm-corrected.

    Images are paired by name; only images both models were scored on count.
    """
    results = []
    keyed = [m.evals[eval_name].keyed() for m in models]
    for a, b in combinations(range(len(models)), 2):
        common = [k for k in keyed[a] if k in keyed[b]]
        x = models[a].evals[eval_name].dice[[keyed[a][k] for k in common]]
        y = models[b].evals[eval_name].dice[[keyed[b][k] for k in common]]
        stat, p = stats.paired_wilcoxon(x, y)
        results.append({
            "a": models[a].label, "b": models[b].label, "n": len(common),
            "mean_diff": float(np.mean(x - y)) if len(common) else math.nan, "statistic": stat, "p": p,
        })
    for res, adj in zip(results, stats.holm([r["p"] for r in results])):
        res["p_holm"] = float(adj)
    return results


def compute_statistics(
    models: Sequence[Model], in_dist: str, cross: str, n_resamples: int = stats.DEFAULT_RESAMPLES,
    seed: int = stats.DEFAULT_SEED,
) -> dict[str, Any]:
    """Bootstrap intervals, relative drops, paired tests, drop tests and rank correlations."""
    per_model = []
    for m in models:
        entry: dict[str, Any] = {"model": m.label}
        boots = {}
        for name in (in_dist, cross):
            ev = m.evals[name]
            boot = stats.bootstrap_means(ev.values, n_resamples, seed)
            ci = stats.percentile_ci(boot)
            boots[name] = boot[:, 0]
            entry[name] = {
                "n": len(ev.names),
                **{mn: float(ev.means[j]) for j, mn in enumerate(MEAN_NAMES)},
                **{f"{mn}_ci95": [float(ci[0, j]), float(ci[1, j])] for j, mn in enumerate(MEAN_NAMES)},
            }
        in_mean, cross_mean = entry[in_dist]["mDice"], entry[cross]["mDice"]
        entry["relative_drop"] = 1 - cross_mean / in_mean if in_mean > 0 else math.nan
        # The two datasets hold different images, so their resamples are independent.
        with np.errstate(divide="ignore", invalid="ignore"):
            drop_boot = 1 - boots[cross] / boots[in_dist]
        entry["relative_drop_ci95"] = [float(v) for v in stats.percentile_ci(drop_boot)] if in_mean > 0 else [math.nan] * 2
        entry["drop_p"] = stats.one_sided_drop_test(m.evals[in_dist].dice, m.evals[cross].dice)
        per_model.append(entry)
    for entry, adj in zip(per_model, stats.holm([e["drop_p"] for e in per_model])):
        entry["drop_p_holm"] = float(adj)

    in_mdice = [e[in_dist]["mDice"] for e in per_model]
    cross_mdice = [e[cross]["mDice"] for e in per_model]
    families = _family_drop_tests(models, per_model)
    return {
        "models": per_model,
        "pairwise": {name: pairwise_tests(models, name) for name in (in_dist, cross)},
        "rank_correlation": stats.rank_correlations(in_mdice, cross_mdice),
        "families": families,
        "bootstrap": {"method": "percentile", "level": 0.95, "resamples": n_resamples, "seed": seed},
        "alpha": ALPHA,
    }


def _family_drop_tests(models: Sequence[Model], per_model: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mann-Whitney U between the relative drops of two encoder families (each with >= 2 models)."""
    from scipy.stats import mannwhitneyu

    drops: dict[str, list[float]] = {}
    for m, e in zip(models, per_model):
        if not math.isnan(e["relative_drop"]):
            drops.setdefault(m.family, []).append(e["relative_drop"])
    fams = [f for f in drops if len(drops[f]) >= 2]
    out = []
    for fa, fb in combinations(fams, 2):
        a, b = np.asarray(drops[fa]), np.asarray(drops[fb])
        p = 1.0 if np.ptp(np.concatenate([a, b])) == 0 else float(mannwhitneyu(a, b).pvalue)
        out.append({"a": fa, "b": fb, "n_a": len(a), "n_b": len(b), "mean_a": float(a.mean()),
                    "mean_b": float(b.mean()), "p": p})
    return out


def _fmt_p(p: float) -> str:
    if math.isnan(p):
        return "n/a"
    return f"{p:.2g}" if p >= 1e-4 else f"{p:.1e}"


def _p_floor(p: float) -> str:
    return "Holm p = 1" if p >= 1 else f"Holm p >= {_fmt_p(p)}"


def findings(models: Sequence[Model], rows: Sequence[dict[str, Any]], st: dict[str, Any], in_dist: str, cross: str) -> list[str]:
    """One sentence per finding, each worded only as strongly as the statistics allow."""
    out: list[str] = []
    n = len(models)
    idx = {m.label: i for i, m in enumerate(models)}
    per = st["models"]

    # 1. The best model on each dataset and which others it is significantly better than.
    for name in (in_dist, cross) if n >= 2 else ():
        means = [e[name]["mDice"] for e in per]
        best = int(np.argmax(means))
        label = models[best].label
        better, same = [], []
        for res in st["pairwise"][name]:
            if label not in (res["a"], res["b"]):
                continue
            other = res["b"] if res["a"] == label else res["a"]
            sign = res["mean_diff"] if res["a"] == label else -res["mean_diff"]
            (better if res["p_holm"] < ALPHA and sign > 0 else same).append((other, res["p_holm"]))
        ci = per[best][name]["mDice_ci95"]
        sentence = f"On {name}, {label} has the highest mDice ({means[best]:.3f}, 95% CI {ci[0]:.3f}-{ci[1]:.3f})"
        if better:
            sentence += (f"; its per-image Dice is significantly higher than that of {len(better)} of the other "
                         f"{n - 1} models ({', '.join(o for o, _ in better)}; paired Wilcoxon, Holm p <= "
                         f"{_fmt_p(max(p for _, p in better))})")
        if same:
            sentence += (f"{';' if better else ','} it is not significantly different from "
                         f"{', '.join(o for o, _ in same)} ({_p_floor(min(p for _, p in same))}), "
                         "so its first place over those is not established")
        out.append(sentence + ".")

    # 2. Is the ranking preserved?
    rc = st["rank_correlation"]
    if n >= 3 and not math.isnan(rc["kendall_tau"]):
        numbers = (f"Kendall tau = {rc['kendall_tau']:.2f}, p = {_fmt_p(rc['kendall_p'])}; "
                   f"Spearman rho = {rc['spearman_rho']:.2f}, p = {_fmt_p(rc['spearman_p'])}")
        if rc["kendall_p"] < ALPHA and rc["kendall_tau"] > 0:
            out.append(f"The mDice ranking is preserved from {in_dist} to {cross} to a significant degree ({numbers}).")
        elif rc["kendall_p"] < ALPHA:
            out.append(f"The mDice ranking is significantly reversed from {in_dist} to {cross} ({numbers}).")
        else:
            out.append(f"The data do not show that the mDice ranking is preserved from {in_dist} to {cross} ({numbers}).")

    # 3. Order reversals between the datasets, and whether they are real.
    cross_p = {(r["a"], r["b"]): r for r in st["pairwise"][cross]}
    in_p = {(r["a"], r["b"]): r for r in st["pairwise"][in_dist]}
    unsupported = 0
    for (a, b), res in cross_p.items():
        ia, ib = idx[a], idx[b]
        in_diff = per[ia][in_dist]["mDice"] - per[ib][in_dist]["mDice"]
        cross_diff = per[ia][cross]["mDice"] - per[ib][cross]["mDice"]
        if in_diff * cross_diff >= 0:
            continue
        winner, loser = (a, b) if cross_diff > 0 else (b, a)
        if res["p_holm"] < ALPHA and np.sign(res["mean_diff"]) == np.sign(cross_diff):
            r_in = in_p[(a, b)]
            tail = (f"after being significantly below it on {in_dist} (Holm p = {_fmt_p(r_in['p_holm'])})"
                    if r_in["p_holm"] < ALPHA else
                    f"while their difference on {in_dist} is not significant (Holm p = {_fmt_p(r_in['p_holm'])})")
            out.append(f"{winner} overtakes {loser}: its per-image Dice on {cross} is significantly higher "
                       f"(mDice {max(per[ia][cross]['mDice'], per[ib][cross]['mDice']):.3f} vs "
                       f"{min(per[ia][cross]['mDice'], per[ib][cross]['mDice']):.3f}, Holm p = {_fmt_p(res['p_holm'])}), {tail}.")
        else:
            unsupported += 1
    if unsupported:
        out.append(f"{unsupported} other pair(s) of models swap order between {in_dist} and {cross} without a "
                   f"significant difference on {cross} (Holm p >= {ALPHA}); those rank changes may be noise.")

    # 4. The drop from in-distribution to cross-dataset.
    dropped = [e["model"] for e in per if e["drop_p_holm"] < ALPHA and e["relative_drop"] > 0]
    if dropped:
        which = "All" if len(dropped) == n else f"{len(dropped)} of {n}"
        out.append(f"{which} models score significantly lower per-image Dice on {cross} than on {in_dist} "
                   f"(one-sided Mann-Whitney U, Holm p < {ALPHA})" + ("" if len(dropped) == n else f": {', '.join(dropped)}") + ".")
    not_dropped = n - len(dropped)
    if not_dropped and dropped:
        out.append(f"For the other {not_dropped} model(s) a drop is not established.")
    elif not dropped:
        out.append(f"No model shows a significant drop in per-image Dice from {in_dist} to {cross} "
                   "(one-sided Mann-Whitney U, Holm-corrected).")

    # 5. Encoder families.
    for fam in st["families"]:
        a, b = fam["a"], fam["b"]
        means = f"mean relative drop {100 * fam['mean_a']:.1f}% vs {100 * fam['mean_b']:.1f}%"
        if fam["p"] < ALPHA:
            lo, hi = (a, b) if fam["mean_a"] < fam["mean_b"] else (b, a)
            out.append(f"{lo} models lose significantly less mDice than {hi} models ({means}; Mann-Whitney U over "
                       f"{fam['n_a']} vs {fam['n_b']} models, p = {_fmt_p(fam['p'])}).")
        else:
            out.append(f"The relative drop of {a} and {b} models does not differ significantly ({means}; Mann-Whitney U "
                       f"over {fam['n_a']} vs {fam['n_b']} models, p = {_fmt_p(fam['p'])}).")
    return out


# ---------------------------------------------------------------------------------------------
# report.md


def _ci(c: Sequence[float], digits: int = 3) -> str:
    return f"[{c[0]:.{digits}f}, {c[1]:.{digits}f}]"


def report_markdown(
    models: Sequence[Model], rows: Sequence[dict[str, Any]], st: dict[str, Any], table_md: str,
    in_dist: str, cross: str, runs_dir: Path, sentences: Sequence[str],
) -> str:
    b = st["bootstrap"]
    lines = [
        "# Cross-dataset generalisation report",
        "",
        f"{len(models)} model(s) below `{runs_dir}`, in-distribution evaluation **{in_dist}**, cross-dataset "
        f"evaluation **{cross}**. Generated {runs.now()} by polypssl.",
        "",
        "## Findings",
        "",
        *[f"- {s}" for s in sentences],
        "",
        f"Significance level {ALPHA}. Intervals: 95% percentile bootstrap over images ({b['resamples']} resamples, "
        f"seed {b['seed']}). Pairwise tests: two-sided paired Wilcoxon signed-rank on per-image Dice, images paired "
        "by name, Holm-corrected over all pairs of models within each dataset.",
        "",
        "## Table 1",
        "",
        table_md,
        "Machine-readable: `table1.csv`; LaTeX (booktabs): `table1.tex`.",
        "",
        "## Both evaluations",
        "",
        f"| model | {in_dist} mDice [95% CI] | {cross} mDice [95% CI] | relative drop [95% CI] | "
        f"{in_dist} n | {cross} n |",
        "|:--|--:|--:|--:|--:|--:|",
    ]
    for e in st["models"]:
        lines.append(
            f"| {e['model']} | {e[in_dist]['mDice']:.3f} {_ci(e[in_dist]['mDice_ci95'])} | "
            f"{e[cross]['mDice']:.3f} {_ci(e[cross]['mDice_ci95'])} | "
            f"{100 * e['relative_drop']:.1f}% {_ci([100 * v for v in e['relative_drop_ci95']], 1)} | "
            f"{e[in_dist]['n']} | {e[cross]['n']} |"
        )
    lines += [
        "",
        "Relative drop = 1 - mDice(cross) / mDice(in-distribution); its interval combines independent resamples "
        "of the two image sets.",
        "",
        "### All four metrics with 95% bootstrap intervals",
        "",
        "| model | dataset | " + " | ".join(MEAN_NAMES) + " |",
        "|:--|:--|" + "--:|" * len(MEAN_NAMES),
    ]
    for e in st["models"]:
        for name in (in_dist, cross):
            lines.append(f"| {e['model']} | {name} | "
                         + " | ".join(f"{e[name][mn]:.3f} {_ci(e[name][mn + '_ci95'])}" for mn in MEAN_NAMES) + " |")
    lines += [
        "",
        "## Figures",
        "",
        f"Fig. 1: per-image Dice per model, {in_dist} (blue) against {cross} (red); dots mark the means.",
        "",
        "![Fig. 1](fig1_dice_distributions.png)",
        "",
        f"Fig. 2: relative mDice drop from {in_dist} to {cross} per model (ResNet blue, ViT red), with 95% intervals.",
        "",
        "![Fig. 2](fig2_relative_drop.png)",
        "",
        "PDF versions: `fig1_dice_distributions.pdf`, `fig2_relative_drop.pdf`.",
        "",
        "## Ranking agreement",
        "",
    ]
    rc = st["rank_correlation"]
    if math.isnan(rc["kendall_tau"]):
        lines.append("Not computed: it needs at least 3 models with differing mDice on both datasets.")
    else:
        lines += [
            f"Between the mDice of the models on {in_dist} and on {cross}: Spearman rho = {rc['spearman_rho']:.3f} "
            f"(p = {_fmt_p(rc['spearman_p'])}), Kendall tau-b = {rc['kendall_tau']:.3f} (p = {_fmt_p(rc['kendall_p'])}).",
        ]
    lines += ["", "## Paired tests between models", ""]
    for name in (in_dist, cross):
        pw = st["pairwise"][name]
        lines += [f"### {name}", ""]
        if not pw:
            lines += ["Only one model: no pairs to compare.", ""]
            continue
        lines += ["| model A | model B | mean Dice A - B | n images | W | p | Holm p |", "|:--|:--|--:|--:|--:|--:|--:|"]
        for r in pw:
            star = " *" if r["p_holm"] < ALPHA else ""
            lines.append(f"| {r['a']} | {r['b']} | {r['mean_diff']:+.4f} | {r['n']} | {r['statistic']:.1f} | "
                         f"{_fmt_p(r['p'])} | {_fmt_p(r['p_holm'])}{star} |")
        lines.append("")
    lines += ["## Runs", "", "| model | run directory | encoder | pretraining data | pretraining method | weights |",
              "|:--|:--|:--|:--|:--|:--|"]
    for m in models:
        rel = m.run_dir.relative_to(runs_dir) if m.run_dir.is_relative_to(runs_dir) else m.run_dir
        lines.append(f"| {m.label} | `{rel}` | {m.info['encoder']} | {m.info['pretrain_data']} | "
                     f"{m.info['pretrain_method']} | {m.info.get('weights', '')} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# entry points


def build_report(
    runs_dir: str | Path,
    out_dir: str | Path | None = None,
    in_dist: str = "kvasir-seg-test",
    cross: str = "cvc-clinicdb-all",
    n_resamples: int = stats.DEFAULT_RESAMPLES,
    seed: int = stats.DEFAULT_SEED,
) -> dict[str, Any]:
    """Write Table 1, Fig. 1, Fig. 2 and report.md for every run below ``runs_dir`` into ``out_dir``.

    ``out_dir`` defaults to ``RUNS_DIR/report``. Returns the table rows, statistics, findings and
    the paths written.
    """
    runs_dir = Path(runs_dir)
    out = Path(out_dir) if out_dir is not None else runs_dir / "report"
    if in_dist == cross:
        raise PolypsslError(f"--in-dist and --cross are both {in_dist!r}; the report compares two different evaluations")
    models = load_models(runs_dir, (in_dist, cross))
    rows = table1_rows(models, in_dist, cross)
    st = compute_statistics(models, in_dist, cross, n_resamples, seed)
    sentences = findings(models, rows, st, in_dist, cross)
    table_md = table1_markdown(models, rows, cross, in_dist)

    out.mkdir(parents=True, exist_ok=True)
    files = {
        "table1.csv": out / "table1.csv", "table1.md": out / "table1.md", "table1.tex": out / "table1.tex",
        "report.md": out / "report.md", "statistics.json": out / "statistics.json",
    }
    runs.atomic_write_text(files["table1.csv"], table1_csv(rows))
    runs.atomic_write_text(files["table1.md"], table_md)
    runs.atomic_write_text(files["table1.tex"], table1_latex(models, rows, cross, in_dist))
    model_labels = [m.label for m in models]
    fig1 = figures.dice_distributions(
        model_labels, [m.evals[in_dist].dice for m in models], [m.evals[cross].dice for m in models],
        in_dist, cross, out / "fig1_dice_distributions",
    )
    fig2 = figures.relative_drop(
        model_labels, [e["relative_drop"] for e in st["models"]], [m.family for m in models], in_dist, cross,
        out / "fig2_relative_drop", intervals=[e["relative_drop_ci95"] for e in st["models"]],
    )
    for path in (*fig1, *fig2):
        files[path.name] = path
    runs.atomic_write_text(
        files["report.md"], report_markdown(models, rows, st, table_md, in_dist, cross, runs_dir, sentences)
    )
    runs.write_json(files["statistics.json"], {"in_dist": in_dist, "cross": cross, "findings": sentences, **st})
    log.info("report for %d model(s) written to %s", len(models), out)
    return {
        "out_dir": out, "models": model_labels, "run_dirs": [m.run_dir for m in models], "table": rows,
        "statistics": st, "findings": sentences, "files": files, "in_dist": in_dist, "cross": cross,
    }


def wandb_table_data(rows: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """Columns and data of Table 1 for a W&B Table (the same columns as table1.csv)."""
    return list(TABLE_COLUMNS), [[row[c] for c in TABLE_COLUMNS] for row in rows]


def log_to_wandb(result: dict[str, Any], project: str = "polypssl", name: str | None = None) -> str:
    """Log Table 1 as a W&B Table and the figures as images; return the W&B run directory.

    Without stored credentials (and with no WANDB_MODE set) the run is kept offline, to be synced later
    with ``wandb sync``.
    """
    import os

    import wandb

    mode = os.environ.get("WANDB_MODE")
    if mode is None:
        mode = "online" if (os.environ.get("WANDB_API_KEY") or _wandb_logged_in(wandb)) else "offline"
    columns, data = wandb_table_data(result["table"])
    run = wandb.init(project=project, name=name or f"report-{Path(result['out_dir']).name}", job_type="report",
                     mode=mode, config={"in_dist": result["in_dist"], "cross": result["cross"],
                                        "models": result["models"]})
    try:
        run.log({
            "table1": wandb.Table(columns=columns, data=data),
            "fig1_dice_distributions": wandb.Image(str(result["files"]["fig1_dice_distributions.png"])),
            "fig2_relative_drop": wandb.Image(str(result["files"]["fig2_relative_drop.png"])),
        })
        run.summary["findings"] = "\n".join(result["findings"])
        return str(run.dir)
    finally:
        run.finish()


def _wandb_logged_in(wandb: Any) -> bool:
    try:
        return bool(wandb.Api().api_key)
    except Exception:  # any failure to find credentials means: not logged in
        return False


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs_dir", metavar="RUNS_DIR", help="folder searched (recursively) for fine-tuning runs")
    parser.add_argument("--out", default=None, help="output folder (default RUNS_DIR/report)")
    parser.add_argument("--in-dist", default="kvasir-seg-test",
                        help="in-distribution evaluation, <dataset>-<split> (default kvasir-seg-test)")
    parser.add_argument("--cross", default="cvc-clinicdb-all",
                        help="cross-dataset evaluation, <dataset>-<split> (default cvc-clinicdb-all)")
    parser.add_argument("--tracker", choices=("none", "wandb"), default="none",
                        help="also log the table and figures to W&B (offline unless logged in)")


def run(args: argparse.Namespace) -> int:
    result = build_report(args.runs_dir, args.out, args.in_dist, args.cross)
    if args.tracker == "wandb":
        where = log_to_wandb(result)
        print(f"logged to W&B ({where})")
    print(f"report for {len(result['models'])} model(s): {result['files']['report.md']}")
    for sentence in result["findings"]:
        print(f"  - {sentence}")
    return 0
