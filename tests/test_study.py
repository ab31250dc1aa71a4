"""The study planner, its executors and the sweep generator, on stand-in stage schemas (fast).

The stand-in schemas have the keys the real stage configs share (``method``, ``encoder``,
``data.root``, ``loop``...), so planning, naming and validation are exercised exactly as with the
real stages, without importing them; ``test_study_e2e.py`` runs the real stages.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import cloudpickle
import pytest
import yaml

from polypssl import runs
from polypssl.config import config_to_dict, load_config
from polypssl.errors import PolypsslError
from polypssl.study import cli as study_cli
from polypssl.study.executors import (
    LocalExecutor,
    SlurmExecutor,
    StepFailed,
    afterok,
    run_step_job,
    stage_command,
)
from polypssl.study.plan import (
    ExecutorSection,
    SlurmResources,
    StudyConfig,
    config_hash,
    load_study,
    model_label,
    plan_study,
)
from polypssl.study.sweep import sweep_config, write_sweep
from polypssl.training import LoopConfig


# ----------------------------------------------------------------------------- stand-in stages
@dataclass
class FakePretrainData:
    name: str = "hyperkvasir-unlabelled"
    root: str = "data"
    label: str | None = None


@dataclass
class FakePretrain:
    method: str = "mocov3"
    encoder: str = "resnet50"
    epochs: int = 100
    batch_size: int = 4096
    data: FakePretrainData = field(default_factory=FakePretrainData)
    loop: LoopConfig = field(default_factory=LoopConfig)


@dataclass
class FakeFinetuneData:
    name: str = "kvasir-seg"
    root: str = "data"


@dataclass
class FakeFinetune:
    encoder: str = "resnet50"
    weights: str = "random"
    pretrain_data: str | None = None
    pretrain_method: str | None = None
    epochs: int = 200
    freeze_encoder: bool = False
    data: FakeFinetuneData = field(default_factory=FakeFinetuneData)
    loop: LoopConfig = field(default_factory=LoopConfig)


SCHEMAS = {"pretrain": FakePretrain, "finetune": FakeFinetune}


def fake_resolver(stage, preset, overrides):
    return config_to_dict(load_config(SCHEMAS[stage], preset, list(overrides)))


@pytest.fixture
def study(tmp_path, monkeypatch):
    """A study YAML over existing (empty) dataset folders and stand-in presets; returns a loader."""
    monkeypatch.chdir(tmp_path)
    for d in ("kvasir", "cvc", "hk", "weights"):
        (tmp_path / d).mkdir()
    (tmp_path / "weights" / "r50.pth.tar").write_bytes(b"x")
    (tmp_path / "pre.yaml").write_text("epochs: 100\n")
    (tmp_path / "ft.yaml").write_text("epochs: 200\n")
    base = {
        "name": "t",
        "out_dir": str(tmp_path / "study"),
        "data": {"kvasir": str(tmp_path / "kvasir"), "cvc": str(tmp_path / "cvc"), "hyperkvasir": str(tmp_path / "hk")},
        "pretrain": {"recipes": [
            {"method": "mocov3", "encoder": "resnet", "preset": str(tmp_path / "pre.yaml")},
            {"method": "barlowtwins", "encoder": "resnet", "preset": str(tmp_path / "pre.yaml")},
        ]},
        "finetune": {"recipes": [{"encoder": "resnet", "preset": str(tmp_path / "ft.yaml")}]},
        "models": [
            {"encoder": "resnet50", "pretrain_data": "HK", "pretrain_method": "mocov3"},
            {"encoder": "resnet50", "pretrain_data": "HK", "pretrain_method": "mocov3", "name": "RN-HK-MC-frozen",
             "overrides": ["freeze_encoder=true"]},
            {"encoder": "resnet50", "pretrain_data": "IN", "pretrain_method": "mocov3",
             "weights": f"mocov3:{tmp_path / 'weights' / 'r50.pth.tar'}"},
            {"encoder": "resnet50", "pretrain_data": "none", "pretrain_method": "none"},
        ],
    }

    def make(overrides=(), edit=None) -> tuple[Path, StudyConfig]:
        doc = json.loads(json.dumps(base))
        if edit:
            edit(doc)
        path = tmp_path / "study.yaml"
        path.write_text(yaml.safe_dump(doc))
        return path, load_config(StudyConfig, path, list(overrides))

    return make


def plan_of(cfg: StudyConfig, validate: bool = True):
    return plan_study(cfg, resolver=fake_resolver, validate=validate)


# ------------------------------------------------------------------------------------ planner
def test_plan_expands_models_into_steps_with_dependencies(study):
    _, cfg = study()
    plan = plan_of(cfg)
    ids = [s.id for s in plan.steps]
    # one pretraining run shared by the two models that need the same HK/MoCo v3 ResNet50
    assert [i for i in ids if i.startswith("pretrain/")] == ["pretrain/mocov3-resnet50-HK"]
    pre = plan.step("pretrain/mocov3-resnet50-HK")
    for name in ("RN-HK-MC", "RN-HK-MC-frozen"):
        ft = plan.step(f"finetune/{name}")
        assert ft.deps == [pre.id]
        assert f"weights=file:{pre.run_dir / 'backbone.safetensors'}" in ft.argv
        assert "pretrain_data=HK" in ft.argv and "pretrain_method=mocov3" in ft.argv
    assert plan.step("finetune/RN-IN-MC").deps == []  # official weights: nothing to pretrain
    assert any(a.startswith("weights=mocov3:") for a in plan.step("finetune/RN-IN-MC").argv)
    assert "weights=random" in plan.step("finetune/RN-NA-NA").argv
    evals = [s for s in plan.steps if s.kind == "evaluate"]
    assert len(evals) == 4 * 2
    ev = plan.step("evaluate/RN-NA-NA/cvc-clinicdb-all")
    assert ev.deps == ["finetune/RN-NA-NA"]
    assert ev.argv[:4] == ["evaluate", str(plan.step("finetune/RN-NA-NA").run_dir), "cvc-clinicdb", cfg.data.cvc]
    assert ev.argv[4:6] == ["--split", "all"]
    report = plan.step("report")
    assert sorted(report.deps) == sorted(s.id for s in evals)
    assert report.argv[-4:] == ["--in-dist", "kvasir-seg-test", "--cross", "cvc-clinicdb-all"]
    # dependency order: every step comes after what it depends on
    position = {s.id: i for i, s in enumerate(plan.steps)}
    assert all(position[d] < position[s.id] for s in plan.steps for d in s.deps)
    assert ids[-1] == "report"
    # the run directory is passed to the stage as its last override
    assert pre.argv[-1] == f"loop.run_dir={pre.run_dir}"
    assert pre.run_dir.parent == cfg.root / "pretrain" and pre.run_dir.name.startswith("mocov3-resnet50-HK-")


def test_run_names_ignore_bookkeeping_keys_and_follow_relevant_ones(study):
    _, cfg = study()
    dirs = {s.id: s.run_dir for s in plan_of(cfg).steps}
    for bookkeeping in (["loop.num_workers=0", "loop.tracker=wandb", "loop.progress=false"], ["tracker=tensorboard"]):
        key = "finetune.overrides" if bookkeeping[0].startswith("loop.") else None
        overrides = [f"{key}=[{','.join(bookkeeping)}]"] if key else bookkeeping
        _, cfg2 = study(overrides)
        assert {s.id: s.run_dir for s in plan_of(cfg2).steps} == dirs
    _, cfg3 = study(["finetune.overrides=[epochs=3]"])
    dirs3 = {s.id: s.run_dir for s in plan_of(cfg3).steps}
    assert dirs3["pretrain/mocov3-resnet50-HK"] == dirs["pretrain/mocov3-resnet50-HK"]
    assert all(dirs3[i] != dirs[i] for i in dirs if i.startswith("finetune/"))
    # a changed pretraining recipe renames the pretraining run AND the fine-tuning runs built on it
    _, cfg4 = study(["pretrain.overrides=[epochs=5]"])
    dirs4 = {s.id: s.run_dir for s in plan_of(cfg4).steps}
    assert dirs4["pretrain/mocov3-resnet50-HK"] != dirs["pretrain/mocov3-resnet50-HK"]
    assert dirs4["finetune/RN-HK-MC"] != dirs["finetune/RN-HK-MC"]
    assert dirs4["finetune/RN-NA-NA"] == dirs["finetune/RN-NA-NA"]


def test_config_hash_ignores_volatile_keys_and_study_location():
    cfg = {"epochs": 3, "loop": {"run_dir": "/a/x", "seed": 1, "num_workers": 4}, "weights": "file:/s1/p/b.st"}
    same = {"epochs": 3, "loop": {"run_dir": "/b/y", "seed": 1, "num_workers": 0}, "weights": "file:/s2/p/b.st"}
    assert config_hash(cfg, Path("/s1")) == config_hash(same, Path("/s2"))
    assert config_hash(cfg) != config_hash({**cfg, "loop": {**cfg["loop"], "seed": 2}})


def test_states_and_dry_run_table(study, capsys, monkeypatch):
    path, cfg = study()
    plan = plan_of(cfg)
    assert set(plan.states().values()) == {"todo"}
    pre = plan.step("pretrain/mocov3-resnet50-HK")
    runs.init_run_dir(pre.run_dir, {"x": 1})  # started, not finished
    assert pre.state() == "partial"
    runs.finish_run_dir(pre.run_dir)
    assert pre.state() == "done"
    ev = plan.step("evaluate/RN-NA-NA/kvasir-seg-test")
    runs.write_json(ev.output, {"mDice": 0.5})
    assert ev.state() == "done"
    table = plan.table()
    lines = table.splitlines()
    assert lines[0].split() == ["step", "state", "run", "dir", "depends", "on"]
    row = next(line for line in lines if line.startswith("pretrain/mocov3-resnet50-HK"))
    assert row.split()[1:3] == ["done", str(pre.run_dir)]
    row = next(line for line in lines if line.startswith("finetune/RN-HK-MC "))
    assert row.split()[1] == "todo" and row.rstrip().endswith("pretrain/mocov3-resnet50-HK")
    assert lines[-1] == f"{len(plan.steps)} steps: 2 done, 0 partial, {len(plan.steps) - 2} todo"

    # through the CLI: --dry-run prints the same table and runs nothing
    import polypssl.study.plan as plan_module

    monkeypatch.setattr(plan_module, "resolve_stage_config", fake_resolver)
    code = study_cli.run(argparse.Namespace(args=[str(path)], dry_run=True, executor=None, sweep_file=None))
    assert code == 0
    out = capsys.readouterr().out
    assert out.strip() == table
    assert not (cfg.root / "study.yaml").exists()  # nothing executed


@pytest.mark.parametrize(
    ("edit", "key", "culprit"),
    [
        (lambda d: d["data"].update(cvc="/nonexistent/CVC-ClinicDB"), "data.cvc", "/nonexistent/CVC-ClinicDB"),
        (lambda d: d["data"].update(hyperkvasir="/nonexistent/hyperkvasir"), "data.hyperkvasir", "/nonexistent/hyperkvasir"),
        (lambda d: d["data"].update(kvasir="/nonexistent/Kvasir-SEG"), "data.kvasir", "/nonexistent/Kvasir-SEG"),
        (lambda d: d["models"][2].update({"weights": "mocov3:/nonexistent/r-50-100ep.pth.tar"}),
         "models[2] (RN-IN-MC).weights", "/nonexistent/r-50-100ep.pth.tar"),
    ],
)
def test_missing_dataset_or_weights_fail_before_any_run(study, edit, key, culprit):
    _, cfg = study(edit=edit)
    calls = []
    with pytest.raises(PolypsslError) as err:
        plan = plan_of(cfg)
        LocalExecutor(runner=lambda step, cmd: calls.append(step.id) or 0).execute(plan)
    assert key in str(err.value) and culprit in str(err.value)
    assert calls == [] and not cfg.root.exists()


def test_config_mistakes_name_the_key(study):
    _, cfg = study(edit=lambda d: d["models"].append({"encoder": "resnet50", "pretrain_data": "HK", "pretrain_method": "mae"}))
    with pytest.raises(PolypsslError, match="no pretrain.recipes entry for method 'mae'"):
        plan_of(cfg)
    _, cfg = study(edit=lambda d: d["models"].append({"encoder": "resnet50"}))
    with pytest.raises(PolypsslError, match="both named 'RN-NA-NA'"):
        plan_of(cfg)
    _, cfg = study(["finetune.overrides=[epochz=3]"])
    with pytest.raises(PolypsslError, match="epochz"):
        plan_of(cfg)
    _, cfg = study(edit=lambda d: d["models"].append({"encoder": "resnet50", "pretrain_data": "IN", "pretrain_method": "mocov3", "name": "x"}))
    with pytest.raises(PolypsslError, match="needs data.imagenet"):
        plan_of(cfg)


def test_only_selects_models_and_their_pretraining(study):
    _, cfg = study(["only=RN-HK-MC-frozen,RN-NA-NA", "report.enabled=false"])
    ids = [s.id for s in plan_of(cfg).steps]
    assert ids[0] == "pretrain/mocov3-resnet50-HK"
    assert {i.split("/")[1] for i in ids if i.startswith("finetune/")} == {"RN-HK-MC-frozen", "RN-NA-NA"}
    assert "report" not in ids


def test_report_reads_exactly_this_studys_runs(study):
    _, cfg = study()
    plan = plan_of(cfg)
    report = plan.step("report")
    for s in plan.steps:
        if s.kind == "finetune":
            runs.write_json(s.run_dir / "run.json", {"encoder": "resnet50"})
        if s.kind == "evaluate":
            runs.write_json(s.output, {"mDice": 0.1})
    view = Path(report.argv[1])
    (view / "stale-model").mkdir(parents=True)
    (view / "stale-model" / "run.json").symlink_to("/nonexistent/run.json")
    (view / "user-notes").mkdir()
    (view / "user-notes" / "keep.txt").write_text("mine")
    report.prepare()
    names = sorted(p.name for p in view.iterdir())
    assert names == sorted([*report.links, "user-notes"])
    linked = view / "RN-NA-NA"
    assert json.loads((linked / "run.json").read_text()) == {"encoder": "resnet50"}
    assert (linked / "eval" / "kvasir-seg-test" / "summary.json").exists()
    assert sorted(p.parent.name for p in view.rglob("run.json")) == sorted(report.links)  # found without following links
    assert report.state() == "partial"
    report.finish()
    assert report.state() == "done"
    runs.write_json(plan.step("evaluate/RN-NA-NA/kvasir-seg-test").output, {"mDice": 0.2})  # a result changed
    assert report.state() == "partial"


# ----------------------------------------------------------------------------------- executors
def test_stage_commands():
    from polypssl.study.plan import Step

    step = Step("finetune/x", "finetune", "x", ["finetune", "cfg.yaml", "epochs=1"], Path("r"))
    assert stage_command(step, python="py") == ["py", "-m", "polypssl", "finetune", "cfg.yaml", "epochs=1"]
    cmd = stage_command(step, 4, ["--mixed_precision", "bf16"], python="py")
    assert cmd == ["py", "-m", "accelerate.commands.launch", "--num_processes", "4", "--mixed_precision", "bf16",
                   "-m", "polypssl.finetune", "cfg.yaml", "epochs=1"]
    ev = Step("evaluate/x/k", "evaluate", "x", ["evaluate", "r", "kvasir-seg", "root"], Path("r"))
    assert stage_command(ev, 4, python="py") == ["py", "-m", "polypssl", "evaluate", "r", "kvasir-seg", "root"]


def _complete(step) -> None:
    """What a stage leaves behind when it succeeds (stand-in for the real stages)."""
    if step.kind in ("pretrain", "finetune"):
        runs.write_json(step.run_dir / "provenance.json", {"status": "complete"})
    elif step.kind == "evaluate":
        runs.write_json(step.output, {"mDice": 0.5})
    else:
        step.run_dir.mkdir(parents=True, exist_ok=True)


def test_local_executor_runs_pending_steps_in_order_and_fails_fast(study):
    _, cfg = study()
    plan = plan_of(cfg)
    ran: list[str] = []

    def runner(step, command):
        assert command[1:3] == ["-m", "polypssl"] and command[3:] == step.argv
        assert all(plan.step(d).state() == "done" for d in step.deps)
        ran.append(step.id)
        if step.id == "finetune/RN-IN-MC":
            return 3
        _complete(step)
        return 0

    with pytest.raises(StepFailed, match=r"step finetune/RN-IN-MC failed \(exit code 3\)"):
        LocalExecutor(runner=runner).execute(plan)
    assert ran[-1] == "finetune/RN-IN-MC"
    first = list(ran)
    ran.clear()
    LocalExecutor(runner=lambda s, c: runner(s, c) if s.id != "finetune/RN-IN-MC" else (_complete(s), ran.append(s.id), 0)[2]).execute(plan)
    assert "finetune/RN-IN-MC" in ran and not set(ran) & set(first[:-1])  # nothing redone
    assert ran[-1] == "report" and not plan.pending()
    ran.clear()
    assert LocalExecutor(runner=runner).execute(plan) == [] and ran == []  # all done: no work


def recording_runner(step, command) -> int:
    """Job body for the submitit test: record when the step ran, then complete it."""
    start = time.time()
    _complete(step)
    runs.write_json(Path(os.environ["STUDY_TEST_LOG"]) / f"{step.id.replace('/', '__')}.json",
                    {"start": start, "end": time.time(), "pid": os.getpid()})
    return 0


def test_slurm_executor_submits_the_dependency_graph_through_submitit_local(study, tmp_path, monkeypatch):
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the job unpickles recording_runner
    monkeypatch.setenv("STUDY_TEST_LOG", str(tmp_path / "job-log"))
    _, cfg = study(["executor.kind=slurm", "executor.cluster=local", "only=RN-HK-MC,RN-NA-NA"])
    plan = plan_of(cfg)
    # one step is already complete: it is not submitted, and nothing waits for it
    _complete(plan.step("finetune/RN-NA-NA"))
    executor = SlurmExecutor(cfg.executor, tmp_path / "jobs", runner=recording_runner)
    job_of = executor.execute(plan)
    assert set(job_of) == {s.id for s in plan.steps} - {"finetune/RN-NA-NA"}
    expected = {
        job_of[s.id]: sorted(job_of[d] for d in s.deps if d in job_of) for s in plan.steps if s.id in job_of
    }
    assert {k: sorted(v) for k, v in executor.graph.items()} == expected
    assert executor.graph[job_of["finetune/RN-HK-MC"]] == [job_of["pretrain/mocov3-resnet50-HK"]]
    assert executor.graph[job_of["evaluate/RN-NA-NA/kvasir-seg-test"]] == []
    assert len(executor.graph[job_of["report"]]) == 4
    assert not plan.pending()
    # every job ran in its own process, after the jobs it depends on had finished
    times = {s.id: runs.read_json(tmp_path / "job-log" / f"{s.id.replace('/', '__')}.json") for s in plan.steps if s.id in job_of}
    assert len({t["pid"] for t in times.values()}) == len(times)
    for s in plan.steps:
        for d in s.deps:
            if d in times:
                assert times[d]["end"] <= times[s.id]["start"], (d, s.id)
    # a local try uses one process per step and no GPUs
    assert executor.parameters["pretrain/mocov3-resnet50-HK"]["gpus_per_node"] == 0


class FakeSubmitit:
    """Records what a real SLURM submission would send (no cluster needed)."""

    def __init__(self) -> None:
        self.params: dict = {}
        self.submitted: list[dict] = []

    def update_parameters(self, **kwargs):
        self.params.update(kwargs)

    def submit(self, fn, step, *args):
        job = argparse.Namespace(job_id=str(1000 + len(self.submitted)), step=step.id)
        self.submitted.append({"step": step.id, "job": job.job_id, **json.loads(json.dumps(self.params))})
        return job


def test_slurm_dependency_strings_and_resources(study, tmp_path):
    assert afterok(["12", "13"]) == "afterok:12:13" and afterok([]) is None
    _, cfg = study([
        "executor.kind=slurm", "executor.partition=gpu", "executor.account=lab", "executor.qos=high",
        "executor.pretrain.nodes=2", "executor.pretrain.gpus_per_node=4", "executor.setup=[module load cuda]",
    ])
    fake = FakeSubmitit()
    executor = SlurmExecutor(cfg.executor, tmp_path / "jobs", executor=fake)
    job_of = executor.execute(plan_of(cfg))
    by_step = {s["step"]: s for s in fake.submitted}
    pre = by_step["pretrain/mocov3-resnet50-HK"]
    assert pre["nodes"] == 2 and pre["gpus_per_node"] == 4 and pre["tasks_per_node"] == 1
    assert pre["slurm_partition"] == "gpu" and pre["slurm_account"] == "lab" and pre["slurm_qos"] == "high"
    assert pre["slurm_setup"] == ["module load cuda"]
    assert "dependency" not in pre["slurm_additional_parameters"]
    ft = by_step["finetune/RN-HK-MC"]
    assert ft["slurm_additional_parameters"]["dependency"] == f"afterok:{job_of['pretrain/mocov3-resnet50-HK']}"
    assert ft["nodes"] == 1 and ft["gpus_per_node"] == 1
    assert "dependency" not in by_step["finetune/RN-NA-NA"]["slurm_additional_parameters"]  # not inherited
    evals = [job_of[s] for s in job_of if s.startswith("evaluate/")]
    assert by_step["report"]["slurm_additional_parameters"]["dependency"] == "afterok:" + ":".join(evals)
    assert fake.submitted[-1]["step"] == "report"


def test_slurm_job_launches_accelerate_across_nodes(study, monkeypatch):
    import submitit

    _, cfg = study()
    plan = plan_of(cfg)
    env = argparse.Namespace(node=1, hostnames=["gpu-a", "gpu-b"])
    monkeypatch.setattr(submitit, "JobEnvironment", lambda: env)
    commands = []
    step = plan.step("pretrain/mocov3-resnet50-HK")
    run_step_job(step, SlurmResources(nodes=2, gpus_per_node=4), ["--mixed_precision", "bf16"], 29500,
                 lambda s, c: commands.append(c) or 0)
    cmd = commands[0]
    launch = cmd[: cmd.index("-m", 3)]
    assert launch[1:3] == ["-m", "accelerate.commands.launch"]
    text = " ".join(launch)
    for part in ("--num_processes 8", "--num_machines 2", "--machine_rank 1", "--main_process_ip gpu-a",
                 "--main_process_port 29500", "--multi_gpu", "--mixed_precision bf16"):
        assert part in text
    assert cmd[cmd.index("-m", 3) + 1] == "polypssl.pretrain" and cmd[-1] == f"loop.run_dir={step.run_dir}"


def test_executor_section_defaults_are_sensible():
    ex = ExecutorSection()
    assert ex.kind == "local" and ex.pretrain.gpus_per_node >= 1 and ex.report.gpus_per_node == 0


# -------------------------------------------------------------------------------------- sweep
def test_sweep_file_is_a_grid_over_the_models(study, tmp_path):
    _, cfg = study()
    out = write_sweep(tmp_path / "sweep.yaml", cfg, "study.yaml", ["finetune.overrides=[epochs=3]"])
    sweep = yaml.safe_load(out.read_text())
    assert sweep["program"] == "polypssl" and sweep["method"] == "grid"
    assert sweep["parameters"]["only"]["values"] == ["RN-HK-MC", "RN-HK-MC-frozen", "RN-IN-MC", "RN-NA-NA"]
    assert sweep["command"][:4] == ["${env}", "${program}", "study", "study.yaml"]
    assert sweep["command"][-1] == "${args_no_hyphens}"
    assert "finetune.overrides=[epochs=3]" in sweep["command"] and "report.enabled=false" in sweep["command"]
    assert sweep == sweep_config(cfg, "study.yaml", ["finetune.overrides=[epochs=3]"])


# ------------------------------------------------------------------------------------ configs
@pytest.mark.parametrize("name", ["demo", "paper"])
def test_shipped_study_configs_load(name):
    cfg = load_study(name)
    assert cfg.models and cfg.evaluations[0].dataset == "kvasir-seg"
    labels = [m.name or model_label(m) for m in cfg.models]
    if name == "paper":
        assert sorted(labels) == sorted([
            "RN-HK-MC", "RN-HK-BT", "RN-IN-MC", "RN-IN-BT", "RN-IN-SL", "RN-NA-NA",
            "VT-HK-MC", "VT-HK-MA", "VT-IN-MC", "VT-IN-MA", "VT-IN-SL", "VT-NA-NA",
        ])
        assert cfg.executor.kind == "slurm"
    else:
        assert sorted(labels) == sorted(["RN-HK-MC", "RN-HK-BT", "RN-NA-NA", "VT-HK-MC", "VT-HK-MA", "VT-NA-NA"])
        assert cfg.data.synthesize and cfg.executor.kind == "local"


def test_sweep_file_from_the_command_line(study, tmp_path, capsys):
    path, _ = study()
    args = argparse.Namespace(args=[str(path), "only=RN-NA-NA"], dry_run=False, executor=None,
                              sweep_file=str(tmp_path / "s.yaml"))
    assert study_cli.run(args) == 0
    sweep = yaml.safe_load((tmp_path / "s.yaml").read_text())
    assert sweep["parameters"]["only"]["values"] == ["RN-NA-NA"]
    assert "only=RN-NA-NA" not in sweep["command"]  # the grid sets it
    assert "wandb sweep" in capsys.readouterr().out


def test_slurm_without_sbatch_says_what_to_do(monkeypatch):
    import polypssl.study.executors as executors

    monkeypatch.setattr(executors.shutil, "which", lambda name: None)
    with pytest.raises(PolypsslError, match="--executor local"):
        SlurmExecutor(ExecutorSection(kind="slurm"), "jobs")


def test_dry_run_of_the_demo_prints_the_plan_and_writes_nothing(tmp_path, capsys):
    from polypssl.cli import main

    out = tmp_path / "study"
    assert main(["study", f"out_dir={out}", "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "synthetic datasets would be created" in printed
    assert "23 steps: 0 done, 0 partial, 23 todo" in printed
    assert not out.exists()
