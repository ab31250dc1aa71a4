"""The demo study end to end with the real stages, at test size (slow).

The test-sized demo keeps two models (HK/MoCo v3 ResNet-18 and its random-init twin), tiny images
and one epoch per stage, so pretrain -> fine-tune -> both evaluations -> report all really run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from polypssl import runs
from polypssl.study import cli as study_cli
from polypssl.study.executors import LocalExecutor, subprocess_runner

pytestmark = pytest.mark.slow

#: The demo, reduced for tests (also usable by hand: `polypssl study demo <these>`).
DEMO_TEST = [
    "only=RN-HK-MC,RN-NA-NA",  # a later only= wins
    "vars.image_size=32",
    "vars.pretrain_epochs=1",
    "vars.pretrain_batch=32",
    "vars.pretrain_images=64",
    "vars.finetune_epochs=1",
    "vars.finetune_batch=16",
]


def study_args(*extra: str, dry_run: bool = False) -> argparse.Namespace:
    return argparse.Namespace(args=["demo", *DEMO_TEST, *extra], dry_run=dry_run, executor=None, sweep_file=None)


def snapshot(root: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def demo_study(tmp_path_factory):
    """The reduced demo, run once: synthesises its data, then runs every step."""
    out = tmp_path_factory.mktemp("demo") / "study"
    code = study_cli.run(study_args(f"out_dir={out}"))
    return out, code


def test_reduced_demo_runs_end_to_end_and_writes_the_report(demo_study):
    out, code = demo_study
    assert code == 0
    report = out / "report"
    for name in ("table1.csv", "table1.md", "table1.tex", "report.md", "fig1_dice_distributions.png",
                 "fig2_relative_drop.png"):
        assert (report / name).is_file(), name
    table = (report / "table1.csv").read_text().splitlines()
    assert table[0].startswith("model,encoder,pretrain_data,pretrain_method,mDice")
    assert sorted(line.split(",")[0] for line in table[1:]) == ["RN-HK-MC", "RN-NA-NA"]
    (pre,) = list((out / "pretrain").iterdir())
    assert runs.is_complete(pre) and (pre / "backbone.safetensors").is_file()
    for run in (out / "runs").iterdir():
        assert runs.is_complete(run)
        assert (run / "eval" / "kvasir-seg-test" / "summary.json").is_file()
        assert (run / "eval" / "cvc-clinicdb-all" / "summary.json").is_file()
    info = runs.read_json(next((out / "runs").glob("RN-HK-MC-*")) / "run.json")
    assert (info["pretrain_data"], info["pretrain_method"]) == ("HK", "mocov3")
    assert str(pre / "backbone.safetensors") in info["weights"]


def test_second_invocation_does_no_work(demo_study, capsys):
    out, _ = demo_study
    before = snapshot(out)
    assert study_cli.run(study_args(f"out_dir={out}")) == 0
    printed = capsys.readouterr().out
    assert "8 steps: 8 done, 0 partial, 0 todo" in printed
    assert "===" not in printed  # no step was started
    assert snapshot(out) == before


class Interrupt(KeyboardInterrupt):
    pass


def test_interrupted_study_completes_without_redoing_finished_runs(demo_study, tmp_path, capsys):
    synth, _ = demo_study
    data = ["data.synthesize=false", f"data.kvasir={synth}/data/kvasir-seg", f"data.cvc={synth}/data/cvc-clinicdb",
            f"data.hyperkvasir={synth}/data/hyperkvasir-unlabelled"]
    # one model keeps the test short: pretrain -> fine-tune -> 2 evaluations -> report
    ns = study_args(f"out_dir={tmp_path / 'study'}", *data, "only=RN-HK-MC")
    config, overrides = study_cli.split_args(ns.args)
    ran: list[str] = []

    def stop_after_two(step, command):
        if len(ran) == 2:
            raise Interrupt  # as if Ctrl-C arrived between runs
        ran.append(step.id)
        return subprocess_runner(step, command)

    plan = study_cli.build_plan(config, overrides)
    with pytest.raises(Interrupt):
        LocalExecutor(runner=stop_after_two).execute(plan)
    assert ran == ["pretrain/mocov3-resnet18-HK", "finetune/RN-HK-MC"]
    finished = snapshot(tmp_path / "study" / "pretrain") | snapshot(tmp_path / "study" / "runs")
    capsys.readouterr()

    assert study_cli.run(ns) == 0
    printed = capsys.readouterr().out
    assert "5 steps: 2 done, 0 partial, 3 todo" in printed
    started = [line.split("] ")[1].split(" ")[0] for line in printed.splitlines() if line.startswith("=== study")]
    assert started == ["evaluate/RN-HK-MC/kvasir-seg-test", "evaluate/RN-HK-MC/cvc-clinicdb-all", "report"]
    after = snapshot(tmp_path / "study" / "pretrain") | snapshot(tmp_path / "study" / "runs")
    assert {k: v for k, v in after.items() if k in finished} == finished  # nothing finished was rewritten
    table = (tmp_path / "study" / "report" / "table1.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in table[1:]] == ["RN-HK-MC"]
