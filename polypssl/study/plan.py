"""Expand a study config into the runs it needs (pretrain, fine-tune, evaluate, report) and their order.

A run's directory name is ``<label>-<hash>``, the hash taken over its resolved stage config without
the keys that do not change its result (run directory, progress, trackers, checkpoint cadence,
workers). Planning the same study twice therefore names the same directories: complete runs are
skipped, interrupted ones resume (the stages use ``loop.resume=auto``), and a changed recipe gets a
fresh directory instead of silently reusing an old result.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from polypssl import runs
from polypssl.config import config_to_dict, load_config, resolve_config_path
from polypssl.errors import PolypsslError

log = logging.getLogger(__name__)

SSL_METHODS = ("mocov3", "barlowtwins", "mae")
PRETRAIN_METHODS = (*SSL_METHODS, "supervised", "none")
TRAINING_KINDS = ("pretrain", "finetune")
#: Keys of a stage config that do not change what the run computes: left out of the run's hash.
VOLATILE_KEYS = (
    "loop.run_dir", "loop.progress", "loop.tracker", "loop.project", "loop.run_name", "loop.tags",
    "loop.num_workers", "loop.checkpoint_every", "loop.keep_last", "loop.log_every", "loop.resume",
)
#: Study keys of the labelled datasets, and of the two pretraining datasets of the paper (with their format).
LABELLED_KEYS = {"kvasir-seg": "kvasir", "cvc-clinicdb": "cvc"}
UNLABELLED_KEYS = {"HK": ("hyperkvasir", "hyperkvasir-unlabelled"), "IN": ("imagenet", "imagenet-1k")}
#: Where each stage keeps its config schema (imported only when a study is planned).
STAGE_SCHEMAS = {
    "pretrain": ("polypssl.pretrain.loop", "PretrainConfig"),
    "finetune": ("polypssl.finetune.loop", "FinetuneConfig"),
}


# --------------------------------------------------------------------------------------- schema
@dataclass
class UnlabelledData:
    """Another pretraining-data source: its label (recorded with the backbone), format and root."""

    label: str = "folder"
    name: str = "folder"  # dataset format: folder | hf | hyperkvasir-unlabelled | imagenet-1k ...
    root: str = ""


@dataclass
class DataSection:
    """Dataset roots. ``synthesize`` creates synthetic stand-ins under ``<out_dir>/data`` when absent."""

    kvasir: str | None = None  # Kvasir-SEG (fine-tuning, in-distribution test)
    cvc: str | None = None  # CVC-ClinicDB (cross-dataset evaluation)
    hyperkvasir: str | None = None  # Hyperkvasir-unlabelled: pretraining data HK
    imagenet: str | None = None  # ImageNet-1k: pretraining data IN (when pretrained here)
    unlabelled: list[UnlabelledData] = field(default_factory=list)  # any other pretraining data
    synthesize: bool = False
    synth_seed: int = 0
    synth_scale: str = "small"  # small | full (polypssl.data.synth.SCALES)

    def labelled_root(self, dataset: str) -> tuple[str | None, str]:
        """(root, config key) of a labelled dataset."""
        key = LABELLED_KEYS.get(dataset)
        return (getattr(self, key), f"data.{key}") if key else (None, f"evaluations (root of {dataset})")

    def unlabelled_source(self, label: str) -> tuple[str | None, str, str]:
        """(root, dataset format, config key) of the pretraining data called ``label``."""
        if label in UNLABELLED_KEYS:
            key, fmt = UNLABELLED_KEYS[label]
            return getattr(self, key), fmt, f"data.{key}"
        for i, extra in enumerate(self.unlabelled):
            if extra.label == label:
                return extra.root, extra.name, f"data.unlabelled[{i}].root"
        return None, "folder", f"data.unlabelled (an entry with label: {label})"


@dataclass
class PretrainRecipe:
    """The stage preset used to pretrain ``encoder`` (exact name or family prefix) with ``method``."""

    method: str = "mocov3"
    encoder: str = "resnet50"
    preset: str = "mocov3_resnet50"
    overrides: list[str] = field(default_factory=list)


@dataclass
class FinetuneRecipe:
    """The stage preset used to fine-tune ``encoder`` (exact name or family prefix such as ``vit``)."""

    encoder: str = "resnet"
    preset: str = "deeplabv3plus_resnet50"
    overrides: list[str] = field(default_factory=list)


@dataclass
class PretrainSection:
    recipes: list[PretrainRecipe] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)  # applied to every pretraining run


@dataclass
class FinetuneSection:
    dataset: str = "kvasir-seg"
    recipes: list[FinetuneRecipe] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)  # applied to every fine-tuning run


@dataclass
class ModelEntry:
    """One model of the study: an encoder, where its weights come from, and fine-tuning overrides.

    Without ``weights`` an SSL method means "pretrain it here on ``pretrain_data``"; ``supervised``
    means the library's supervised ImageNet weights and ``none`` random initialisation. With
    ``weights`` (e.g. ``mocov3:/ckpt/r-50-100ep.pth.tar``) nothing is pretrained.
    """

    encoder: str = "resnet50"
    pretrain_data: str = "none"  # HK | IN | none | another label of data.unlabelled
    pretrain_method: str = "none"  # mocov3 | barlowtwins | mae | supervised | none
    weights: str | None = None
    name: str | None = None  # default: the paper's label, e.g. RN-HK-MC
    overrides: list[str] = field(default_factory=list)  # fine-tuning overrides
    pretrain_overrides: list[str] = field(default_factory=list)


@dataclass
class EvaluationEntry:
    dataset: str = "kvasir-seg"
    split: str = "test"  # test | all
    root: str | None = None  # default: data.kvasir / data.cvc


def _default_evaluations() -> list[EvaluationEntry]:
    return [EvaluationEntry("kvasir-seg", "test"), EvaluationEntry("cvc-clinicdb", "all")]


@dataclass
class SlurmResources:
    """What one job of a kind asks SLURM for; training jobs run ``accelerate launch`` over all of it."""

    nodes: int = 1
    gpus_per_node: int = 1
    cpus_per_task: int = 8
    mem_gb: int | None = None
    time_min: int = 60


@dataclass
class ExecutorSection:
    kind: str = "local"  # local | slurm
    # local: processes per training run (> 1: `accelerate launch --num_processes N`)
    num_processes: int = 1
    accelerate_args: list[str] = field(default_factory=list)  # extra `accelerate launch` arguments
    # slurm (submitit)
    cluster: str = "slurm"  # submitit cluster: slurm, or local/debug to try the submission on one machine
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    setup: list[str] = field(default_factory=list)  # shell lines run first in every job (module load ...)
    additional_parameters: dict[str, str] = field(default_factory=dict)  # more sbatch options
    log_dir: str | None = None  # default <out_dir>/slurm
    main_process_port: int = 29500
    pretrain: SlurmResources = field(default_factory=lambda: SlurmResources(1, 8, 10, None, 48 * 60))
    finetune: SlurmResources = field(default_factory=lambda: SlurmResources(1, 1, 8, None, 12 * 60))
    evaluate: SlurmResources = field(default_factory=lambda: SlurmResources(1, 1, 8, None, 60))
    report: SlurmResources = field(default_factory=lambda: SlurmResources(1, 0, 2, None, 30))


@dataclass
class ReportSection:
    enabled: bool = True
    out_dir: str | None = None  # default <out_dir>/report


@dataclass
class StudyConfig:
    """A study: which models, how each is pretrained and fine-tuned, what is evaluated, where it runs."""

    name: str = "study"
    out_dir: str | None = None  # default studies/<name>
    vars: Any = None  # a mapping of sizes that the config references as ${vars.x} (easy to tune)
    tracker: str = "none"  # loop.tracker of every training run (none | wandb | tensorboard)
    only: str | None = None  # comma-separated model names: plan just these (sweeps)
    data: DataSection = field(default_factory=DataSection)
    pretrain: PretrainSection = field(default_factory=PretrainSection)
    finetune: FinetuneSection = field(default_factory=FinetuneSection)
    models: list[ModelEntry] = field(default_factory=list)
    evaluations: list[EvaluationEntry] = field(default_factory=_default_evaluations)
    evaluate_args: list[str] = field(default_factory=list)  # extra `polypssl evaluate` options
    executor: ExecutorSection = field(default_factory=ExecutorSection)
    report: ReportSection = field(default_factory=ReportSection)

    @property
    def root(self) -> Path:
        return Path(self.out_dir or f"studies/{self.name}")


def load_study(path: str | Path | None, overrides: Sequence[str] = ()) -> StudyConfig:
    """Load a study config (a YAML path or a preset under ``configs/study``; ``None`` = the demo)."""
    cfg_path = resolve_config_path(path or "demo", "study")
    return load_config(StudyConfig, cfg_path, overrides)


# ----------------------------------------------------------------------------------------- steps
@dataclass
class Step:
    """One unit of work: a stage invocation (``polypssl <argv>``) with the run directory it fills."""

    id: str  # unique: pretrain/<label>, finetune/<model>, evaluate/<model>/<dataset>-<split>, report
    kind: str  # pretrain | finetune | evaluate | report
    label: str
    argv: list[str]  # arguments of `polypssl`, starting with the stage name
    run_dir: Path
    deps: list[str] = field(default_factory=list)
    output: Path | None = None  # evaluate: summary.json; report: its input stamp
    inputs: list[Path] = field(default_factory=list)  # report: the evaluation summaries it reads
    links: dict[str, Path] = field(default_factory=dict)  # report: model name -> fine-tuning run dir

    @property
    def distributed(self) -> bool:
        """Training stages may run over several processes; evaluation and report run on one."""
        return self.kind in TRAINING_KINDS

    def state(self) -> str:
        """``done``, ``partial`` (started, will resume or be redone) or ``todo``."""
        if self.kind in TRAINING_KINDS:
            if runs.is_complete(self.run_dir):
                return "done"
            return "partial" if (self.run_dir / runs.COMPLETE_MARKER).exists() else "todo"
        if self.kind == "evaluate":
            assert self.output is not None
            if self.output.exists():
                return "done"
            return "partial" if self.output.parent.exists() else "todo"
        # report: done when its stamp names exactly the current evaluation results
        assert self.output is not None
        if self.output.exists() and self.output.read_text() == self.fingerprint():
            return "done"
        return "partial" if self.run_dir.exists() else "todo"

    def fingerprint(self) -> str:
        """What the report was built from: each evaluation summary's path and content hash."""
        items = []
        for path in self.inputs:
            digest = hashlib.sha1(path.read_bytes()).hexdigest() if path.exists() else None
            items.append([str(path), digest])
        return json.dumps(items, indent=1) + "\n"

    def prepare(self) -> None:
        """Before running: the report reads a folder holding exactly this study's models.

        ``report/runs/<model>/`` is a real folder with links to the fine-tuning run's ``run.json``
        and ``eval/`` (the report searches for ``run.json`` without entering linked folders), so
        runs of earlier versions of the study, still under ``runs/``, stay out of the report.
        """
        if self.kind != "report":
            return
        view = Path(self.argv[1])
        view.mkdir(parents=True, exist_ok=True)
        for entry in view.iterdir():
            ours = entry.is_dir() and not entry.is_symlink() and all(c.is_symlink() for c in entry.iterdir())
            if entry.name not in self.links and ours:  # only ever remove folders of our own links
                for child in entry.iterdir():
                    child.unlink()
                entry.rmdir()
        for name, target in self.links.items():
            folder = view / name
            folder.mkdir(exist_ok=True)
            for item in ("run.json", "eval"):
                link = folder / item
                rel = os.path.relpath(target / item, folder)
                if link.is_symlink() and os.readlink(link) == rel:
                    continue
                if link.is_symlink() or link.exists():
                    link.unlink()
                link.symlink_to(rel, target_is_directory=item == "eval")

    def finish(self) -> None:
        """After a successful run: the report records what it was built from."""
        if self.kind == "report":
            assert self.output is not None
            runs.atomic_write_text(self.output, self.fingerprint())


@dataclass
class Plan:
    study: StudyConfig
    steps: list[Step]  # dependency order

    def step(self, step_id: str) -> Step:
        return next(s for s in self.steps if s.id == step_id)

    def states(self) -> dict[str, str]:
        return {s.id: s.state() for s in self.steps}

    def pending(self) -> list[Step]:
        return [s for s in self.steps if s.state() != "done"]

    def table(self) -> str:
        """The plan as a plain-text table: step, state, run directory, dependencies."""
        rows = [("step", "state", "run dir", "depends on")]
        for s in self.steps:
            where = s.output.parent if s.kind == "evaluate" and s.output else s.run_dir
            kinds = {d.split("/")[0] for d in s.deps}
            deps = f"{len(s.deps)} {kinds.pop()} steps" if len(s.deps) > 3 and len(kinds) == 1 else ", ".join(s.deps)
            rows.append((s.id, s.state(), str(where), deps or "-"))
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + "  " + r[3] for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths) + "  " + "-" * 10)
        counts = {k: sum(1 for s in self.steps if s.state() == k) for k in ("done", "partial", "todo")}
        lines.append(f"{len(self.steps)} steps: {counts['done']} done, {counts['partial']} partial, {counts['todo']} todo")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------- resolving
#: (stage, preset path, overrides) -> the stage's resolved config as a plain dict.
Resolver = Callable[[str, Path, Sequence[str]], dict[str, Any]]


def stage_schema(stage: str) -> type:
    module_name, attr = STAGE_SCHEMAS[stage]
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise PolypsslError(f"the {stage} stage is not available ({module_name}.{attr}): {err}") from err


def resolve_stage_config(stage: str, preset: Path, overrides: Sequence[str]) -> dict[str, Any]:
    """Load a stage config exactly as ``polypssl <stage> PRESET overrides...`` will."""
    return config_to_dict(load_config(stage_schema(stage), preset, list(overrides)))


def _drop(cfg: dict[str, Any], dotted: str) -> None:
    *parents, last = dotted.split(".")
    node: Any = cfg
    for p in parents:
        node = node.get(p) if isinstance(node, dict) else None
        if node is None:
            return
    if isinstance(node, dict):
        node.pop(last, None)


def _relative_to(value: Any, root: str) -> Any:
    """Paths inside the study directory hash the same wherever the study directory lives."""
    if isinstance(value, dict):
        return {k: _relative_to(v, root) for k, v in value.items()}
    if isinstance(value, list):
        return [_relative_to(v, root) for v in value]
    if isinstance(value, str) and root in value:
        return value.replace(root, "<study>")
    return value


def config_hash(cfg: dict[str, Any], study_root: Path | None = None, length: int = 8) -> str:
    """Hash of a resolved stage config, ignoring :data:`VOLATILE_KEYS` (and where the study lives)."""
    cfg = json.loads(json.dumps(cfg, default=str))
    for key in VOLATILE_KEYS:
        _drop(cfg, key)
    if study_root is not None:
        cfg = _relative_to(cfg, str(study_root))
    canonical = json.dumps(cfg, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha1(canonical.encode()).hexdigest()[:length]


def model_label(entry: ModelEntry) -> str:
    """The paper's label (RN/VT - HK/IN/NA - MC/BT/MA/SL/NA), the same the report prints."""
    from polypssl.evaluate.labels import model_label as report_label

    return report_label(
        {"encoder": entry.encoder, "pretrain_data": entry.pretrain_data, "pretrain_method": entry.pretrain_method}
    )


def _match(recipes: Sequence[Any], encoder: str, method: str | None = None) -> Any | None:
    """The recipe for ``encoder``: an exact encoder name beats the longest matching family prefix."""
    candidates = [
        r for r in recipes
        if (method is None or r.method == method) and (encoder == r.encoder or encoder.startswith(r.encoder))
    ]
    return max(candidates, key=lambda r: (r.encoder == encoder, len(r.encoder)), default=None)


# -------------------------------------------------------------------------------------- planning
def plan_study(cfg: StudyConfig, resolver: Resolver | None = None, validate: bool = True) -> Plan:
    """Expand ``cfg`` into steps in dependency order; a pretraining run shared by models is planned once.

    ``resolver`` loads a stage config (default: the stage's own schema, :func:`resolve_stage_config`);
    with ``validate`` every dataset root and weight file the plan reads must exist.
    """
    resolver = resolver or resolve_stage_config
    root = cfg.root
    steps: dict[str, Step] = {}
    models = _selected_models(cfg)
    ft_dataset = cfg.finetune.dataset
    extra_loop = [f"loop.tracker={cfg.tracker}"] if cfg.tracker != "none" else []
    finetune_runs: dict[str, Path] = {}
    eval_summaries: list[Path] = []
    eval_ids: list[str] = []
    for index, entry, name in models:
        key = f"models[{index}] ({name})"
        deps: list[str] = []
        weights = entry.weights
        if entry.pretrain_method not in PRETRAIN_METHODS:
            raise PolypsslError(
                f"{key}.pretrain_method is '{entry.pretrain_method}'; use one of {', '.join(PRETRAIN_METHODS)}"
            )
        if weights is None:
            if entry.pretrain_method == "none":
                weights = "random"
            elif entry.pretrain_method == "supervised":
                weights = "supervised"
            else:
                pre = _plan_pretrain(cfg, entry, key, resolver, extra_loop, validate)
                steps.setdefault(pre.id, pre)
                if steps[pre.id].run_dir != pre.run_dir:  # same label, other recipe: keep both apart
                    pre.id = f"{pre.id}-{pre.run_dir.name.rsplit('-', 1)[-1]}"
                    steps.setdefault(pre.id, pre)
                deps.append(pre.id)
                weights = f"file:{pre.run_dir / 'backbone.safetensors'}"
        recipe = _match(cfg.finetune.recipes, entry.encoder)
        if recipe is None:
            raise PolypsslError(
                f"{key}: no finetune.recipes entry for encoder '{entry.encoder}'; add one with "
                f"encoder: {entry.encoder} (or its family, e.g. resnet / vit) and a finetune preset"
            )
        preset = resolve_config_path(recipe.preset, "finetune")
        data_root, data_key = cfg.data.labelled_root(ft_dataset)
        overrides = [
            f"encoder={entry.encoder}", f"weights={weights}",
            f"pretrain_data={entry.pretrain_data}", f"pretrain_method={entry.pretrain_method}",
            f"data.name={ft_dataset}",
            *([f"data.root={data_root}"] if data_root else []),
            *cfg.finetune.overrides, *recipe.overrides, *entry.overrides, *extra_loop,
        ]
        resolved = resolver("finetune", preset, overrides)
        run_dir = root / "runs" / f"{name}-{config_hash(resolved, root)}"
        overrides.append(f"loop.run_dir={run_dir}")
        ft = Step(f"finetune/{name}", "finetune", name, ["finetune", str(preset), *overrides], run_dir, deps)
        steps[ft.id] = ft
        finetune_runs[name] = run_dir
        if validate:
            _check_path(resolved.get("data", {}).get("root"), f"{data_key} (fine-tuning data, {ft_dataset})")
            from polypssl.backbones import parse_weights

            wpath = parse_weights(str(resolved.get("weights", weights))).path
            if wpath is not None and not any(steps[d].run_dir / "backbone.safetensors" == wpath for d in deps):
                _check_path(wpath, f"{key}.weights")
        for ev in cfg.evaluations:
            ev_root, ev_key = (ev.root, "evaluations[].root") if ev.root else cfg.data.labelled_root(ev.dataset)
            if validate:
                _check_path(ev_root, f"{ev_key} ({ev.dataset})")
            tag = f"{ev.dataset}-{ev.split}"
            summary = run_dir / "eval" / tag / "summary.json"
            argv = ["evaluate", str(run_dir), ev.dataset, str(ev_root), "--split", ev.split, *cfg.evaluate_args]
            step = Step(f"evaluate/{name}/{tag}", "evaluate", f"{name} {tag}", argv, run_dir, [ft.id], summary)
            steps[step.id] = step
            eval_summaries.append(summary)
            eval_ids.append(step.id)
    if cfg.report.enabled and eval_ids:
        if len(cfg.evaluations) < 2:
            raise PolypsslError(
                "the report compares two evaluations (in-distribution first, cross-dataset second); "
                "list both under 'evaluations:' or set report.enabled=false"
            )
        report_dir = Path(cfg.report.out_dir) if cfg.report.out_dir else root / "report"
        in_dist, cross = (f"{e.dataset}-{e.split}" for e in cfg.evaluations[:2])
        argv = ["report", str(report_dir / "runs"), "--out", str(report_dir), "--in-dist", in_dist, "--cross", cross]
        steps["report"] = Step(
            "report", "report", "report", argv, report_dir,
            eval_ids, report_dir / "study_inputs.json", eval_summaries, finetune_runs,
        )
    return Plan(cfg, _topological(list(steps.values())))


def _selected_models(cfg: StudyConfig) -> list[tuple[int, ModelEntry, str]]:
    """(index in ``models``, entry, name) of the models to plan: all, or those named in ``only``."""
    if not cfg.models:
        raise PolypsslError("the study has no models; add entries under 'models:'")
    named = [(i, m, m.name or model_label(m)) for i, m in enumerate(cfg.models)]
    seen: dict[str, int] = {}
    for i, _, name in named:
        if name in seen:
            raise PolypsslError(
                f"models[{seen[name]}] and models[{i}] are both named '{name}'; give one a distinct 'name:'"
            )
        seen[name] = i
    if cfg.only:
        wanted = [w.strip() for w in cfg.only.split(",") if w.strip()]
        unknown = [w for w in wanted if w not in seen]
        if unknown:
            raise PolypsslError(f"only: unknown model(s) {', '.join(unknown)}; the study has {', '.join(seen)}")
        named = [t for t in named if t[2] in wanted]
    return named


def _plan_pretrain(
    cfg: StudyConfig, entry: ModelEntry, key: str, resolver: Resolver, extra_loop: list[str], validate: bool
) -> Step:
    recipe = _match(cfg.pretrain.recipes, entry.encoder, entry.pretrain_method)
    if recipe is None:
        raise PolypsslError(
            f"{key}: no pretrain.recipes entry for method '{entry.pretrain_method}' and encoder "
            f"'{entry.encoder}'; add one, or give the model explicit 'weights:'"
        )
    data = entry.pretrain_data
    data_root, fmt, data_key = cfg.data.unlabelled_source(data)
    if not data_root:
        raise PolypsslError(
            f"{key}: pretraining on '{data}' needs {data_key} set to the unlabelled images, "
            f"or explicit 'weights:' for the model"
        )
    if validate:
        _check_path(data_root, f"{data_key} (pretraining data {data})")
    preset = resolve_config_path(recipe.preset, "pretrain")
    overrides = [
        f"method={entry.pretrain_method}", f"encoder={entry.encoder}",
        f"data.name={fmt}", f"data.root={data_root}", f"data.label={data}",
        *cfg.pretrain.overrides, *recipe.overrides, *entry.pretrain_overrides, *extra_loop,
    ]
    resolved = resolver("pretrain", preset, overrides)
    label = f"{entry.pretrain_method}-{entry.encoder}-{data}"
    run_dir = cfg.root / "pretrain" / f"{label}-{config_hash(resolved, cfg.root)}"
    overrides.append(f"loop.run_dir={run_dir}")
    return Step(f"pretrain/{label}", "pretrain", label, ["pretrain", str(preset), *overrides], run_dir)


def _check_path(path: Any, key: str) -> None:
    if path is None or path == "":
        raise PolypsslError(f"{key} is not set; give the dataset root in the study config")
    if not Path(str(path)).exists():
        raise PolypsslError(f"{key}: path does not exist: {path}. Fix the path in the study config (or set it with {key.split(' ')[0]}=PATH)")


def _topological(steps: list[Step]) -> list[Step]:
    by_id = {s.id: s for s in steps}
    order: list[Step] = []
    seen: set[str] = set()

    def visit(step: Step) -> None:
        if step.id in seen:
            return
        seen.add(step.id)
        for dep in step.deps:
            visit(by_id[dep])
        order.append(step)

    for s in steps:
        visit(s)
    return order


def replace_roots(cfg: StudyConfig, roots: dict[str, str]) -> StudyConfig:
    """Fill the dataset roots the config leaves unset from ``{dataset name: root}`` (synthesis)."""
    keys = {**LABELLED_KEYS, **{fmt: key for key, fmt in UNLABELLED_KEYS.values()}}
    filled = {keys[name]: str(path) for name, path in roots.items() if name in keys and not getattr(cfg.data, keys[name])}
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, **filled))
