"""The shared training loop: checkpoints, exact resume, non-finite guard, metrics."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch
from torch.utils.data import DataLoader

from polypssl.data.sampling import EpochSampler, SeededDataset
from polypssl.runs import is_complete, read_json, read_jsonl
from polypssl.training import LoopConfig, NonFiniteLossError, TrainingSession


@dataclass
class ToyConfig:
    epochs: int = 3
    lr: float = 0.05
    loop: LoopConfig = field(default_factory=LoopConfig)


class NoisyPoints:
    """Dataset whose 'augmentation' draws from the torch RNG, like a real transform."""

    def __init__(self, n: int = 24) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 4, generator=g)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5, 3.0])

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i]


def jitter(item):
    x, y = item
    return x + 0.1 * torch.randn_like(x), y


def train(cfg: ToyConfig, stop_after_steps: int | None = None, poison_at: int | None = None) -> torch.Tensor:
    session = TrainingSession(cfg, cfg.loop, stage="toy")
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr)
    data = SeededDataset(NoisyPoints(), jitter, seed=cfg.loop.seed)
    loader = DataLoader(data, batch_size=4, sampler=EpochSampler(len(data), seed=cfg.loop.seed))
    model, opt, loader = session.prepare(model, opt, loader)
    session.resume()
    for _epoch in session.epochs(cfg.epochs):
        for x, y in session.batches(loader):
            with session.accelerator.accumulate(model):
                loss = torch.nn.functional.mse_loss(model(x).squeeze(1), y)
                if poison_at is not None and session.step == poison_at:
                    loss = loss * float("nan")
                session.check_finite(loss)
                session.accelerator.backward(loss)
                opt.step()
                opt.zero_grad()
            session.step_done({"loss": loss.item()}, images=len(x))
            if stop_after_steps is not None and session.step == stop_after_steps:
                return model.weight.detach().clone()  # simulate a kill: no finish()
        session.epoch_done({"train_loss_last": loss.item()})
    session.finish()
    return model.weight.detach().clone()


def make_cfg(tmp_path, **loop) -> ToyConfig:
    return ToyConfig(loop=LoopConfig(run_dir=str(tmp_path / "run"), checkpoint_every=2, log_every=1,
                                     progress=False, num_workers=0, **loop))


def test_uninterrupted_run_writes_run_directory(tmp_path):
    cfg = make_cfg(tmp_path)
    train(cfg)
    run = tmp_path / "run"
    assert is_complete(run)
    assert (run / "config.yaml").read_text().count("epochs: 3") == 1
    prov = read_json(run / "provenance.json")
    assert prov["world_size"] == 1 and prov["packages"]["torch"] and prov["ended"]
    rows = read_jsonl(run / "metrics.jsonl")
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, 19))
    assert all(r["images_per_s"] > 0 for r in rows if "loss" in r)
    # keep_last=2 keeps only the two newest complete checkpoints
    kept = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert kept == ["step-00000016", "step-00000018"]


def test_killed_run_resumed_with_auto_matches_uninterrupted(tmp_path):
    reference = train(make_cfg(tmp_path / "a"))
    cfg = make_cfg(tmp_path / "b")
    # killed mid-epoch (step 9 of 18; last checkpoint at step 8, inside epoch 1)
    train(cfg, stop_after_steps=9)
    assert not is_complete(tmp_path / "b" / "run")
    resumed = train(cfg)
    torch.testing.assert_close(resumed, reference, rtol=0, atol=0)
    assert read_json(tmp_path / "b" / "run" / "provenance.json")["resumed"]


def test_non_finite_loss_stops_with_clear_error_and_keeps_checkpoint(tmp_path):
    cfg = make_cfg(tmp_path)
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss .* step 5 .*step-00000004"):
        train(cfg, poison_at=5)
    ckpt = tmp_path / "run" / "checkpoints" / "step-00000004"
    assert (ckpt / "loop.json").is_file()


def test_resume_from_a_folder_that_is_not_a_checkpoint_is_refused(tmp_path):
    cfg = make_cfg(tmp_path, resume=str(tmp_path))
    with pytest.raises(Exception, match="not a complete checkpoint"):
        train(cfg)


@pytest.mark.parametrize(("given", "expected"), [("no", "no"), ("False", "no"), ("fp32", "no"), ("bf16", "bf16")])
def test_mixed_precision_accepts_yaml_spellings(given, expected):
    from polypssl.training import normalise_precision

    assert normalise_precision(given) == expected


def test_unknown_mixed_precision_is_refused():
    from polypssl.errors import PolypsslError
    from polypssl.training import normalise_precision

    with pytest.raises(PolypsslError, match="loop.mixed_precision"):
        normalise_precision("fp8")


def test_tensorboard_tracker_writes_event_files(tmp_path):
    cfg = make_cfg(tmp_path, tracker="tensorboard")
    cfg.epochs = 1
    train(cfg)
    events = list((tmp_path / "run" / "logs").rglob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0


@pytest.mark.slow
def test_wandb_tracker_logs_offline_without_credentials(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc: not logged in
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = make_cfg(tmp_path, tracker="wandb", project="polypssl-test")
    cfg.epochs = 1
    train(cfg)
    offline_runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert offline_runs, "expected an offline W&B run under the run directory"
