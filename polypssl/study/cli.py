"""``polypssl study [CONFIG] [key=value ...] [--dry-run] [--executor local|slurm] [--sweep-file OUT.yaml]``.

Without CONFIG it runs the built-in demo (``configs/study/demo.yaml``): synthetic data, tiny encoders,
the whole pipeline on CPU in minutes.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

from polypssl.config import config_to_yaml
from polypssl.errors import PolypsslError
from polypssl.runs import atomic_write_text
from polypssl.study.plan import Plan, StudyConfig, load_study, plan_study, replace_roots

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "args", nargs="*", metavar="[CONFIG] [key=value]",
        help="a study YAML or preset name under configs/study (default: demo), then key=value overrides",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the plan (step, state, run dir, dependencies) and exit")
    parser.add_argument("--executor", choices=("local", "slurm"), help="override executor.kind")
    parser.add_argument("--sweep-file", metavar="OUT.yaml", help="write a W&B sweep over the models and exit")


def split_args(args: list[str]) -> tuple[str | None, list[str]]:
    """``[CONFIG] key=value ...`` -> (CONFIG or None, overrides)."""
    if args and "=" not in args[0]:
        return args[0], list(args[1:])
    return None, list(args)


def prepare_data(cfg: StudyConfig, dry_run: bool = False) -> tuple[StudyConfig, bool]:
    """Synthesise the datasets under ``<out_dir>/data`` when the config asks for it (kept if present).

    Returns the config with the synthetic roots filled in, and whether those roots exist yet (a dry
    run writes nothing, so it only names the folders the real run would create).
    """
    if not cfg.data.synthesize:
        return cfg, True
    from polypssl.data.synth import DOMAINS, ensure_synthetic

    out = cfg.root / "data"
    if dry_run:
        roots = {name: out / name for name in DOMAINS}
        exists = all(path.is_dir() for path in roots.values())
        if not exists:
            print(f"(dry run: synthetic datasets would be created under {out})")
    else:
        log.info("study %s: synthetic datasets under %s (created if absent)", cfg.name, out)
        roots, exists = ensure_synthetic(out, cfg.data.synth_seed, cfg.data.synth_scale), True
    return replace_roots(cfg, {name: str(path) for name, path in roots.items()}), exists


def build_plan(
    config: str | None, overrides: list[str], executor: str | None = None, dry_run: bool = False
) -> Plan:
    """Load, synthesise data if asked, plan and validate (every root and weight file checked)."""
    cfg = load_study(config, overrides)
    if executor:
        cfg = dataclasses.replace(cfg, executor=dataclasses.replace(cfg.executor, kind=executor))
    if cfg.executor.kind not in ("local", "slurm"):
        raise PolypsslError(f"executor.kind must be local or slurm, got '{cfg.executor.kind}'")
    cfg, data_present = prepare_data(cfg, dry_run)
    return plan_study(cfg, validate=data_present)


def execute(plan: Plan) -> dict[str, str] | list[str]:
    cfg = plan.study
    cfg.root.mkdir(parents=True, exist_ok=True)
    snapshot, text = cfg.root / "study.yaml", config_to_yaml(cfg)
    if not snapshot.exists() or snapshot.read_text() != text:
        atomic_write_text(snapshot, text)
    if cfg.executor.kind == "slurm":
        from polypssl.study.executors import SlurmExecutor

        folder = Path(cfg.executor.log_dir) if cfg.executor.log_dir else cfg.root / "slurm"
        return SlurmExecutor(cfg.executor, folder).execute(plan)
    from polypssl.study.executors import LocalExecutor

    return LocalExecutor.from_config(cfg.executor).execute(plan)


def run(args: argparse.Namespace) -> int:
    config, overrides = split_args(list(args.args))
    if args.sweep_file:
        from polypssl.study.sweep import write_sweep

        cfg = load_study(config, overrides)
        path = write_sweep(args.sweep_file, cfg, config or "demo", overrides)
        print(f"wrote W&B sweep {path}: register it with `wandb sweep {path}`, then run `wandb agent ID`")
        return 0
    plan = build_plan(config, overrides, args.executor, dry_run=args.dry_run)
    print(plan.table(), flush=True)
    if args.dry_run:
        return 0
    result = execute(plan)
    cfg = plan.study
    if cfg.executor.kind == "slurm" and cfg.executor.cluster not in ("local", "debug"):
        print(f"submitted {len(result)} jobs; logs under {cfg.executor.log_dir or cfg.root / 'slurm'}. "
              f"Run the same command again to see what is done.")
    elif "report" in {s.id for s in plan.steps}:
        print(f"study {cfg.name} complete: report in {plan.step('report').run_dir}")
    else:
        print(f"study {cfg.name} complete")
    return 0
