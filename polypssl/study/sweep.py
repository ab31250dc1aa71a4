"""A W&B sweep over the models of a study, for users who drive their grids from W&B.

Each sweep run is ``polypssl study CONFIG only=<model>``: it plans and runs that model's
pretraining (if any), fine-tuning and evaluations in the study's directory, so a later
``polypssl study CONFIG`` finds them complete and only writes the report.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from polypssl.runs import atomic_write_text
from polypssl.study.plan import StudyConfig, _selected_models


def sweep_config(cfg: StudyConfig, config_arg: str, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The sweep as a dict: a grid over the model names; each run logs its training to W&B."""
    names = [name for _, _, name in _selected_models(cfg)]
    passed = [o for o in overrides if not o.startswith(("only=", "report.enabled=", "tracker="))]
    return {
        "name": cfg.name,
        "program": "polypssl",
        "method": "grid",
        "command": [
            "${env}", "${program}", "study", config_arg, *passed,
            "tracker=wandb", "report.enabled=false", "${args_no_hyphens}",
        ],
        "parameters": {"only": {"values": names}},
    }


def write_sweep(path: str | Path, cfg: StudyConfig, config_arg: str, overrides: Sequence[str] = ()) -> Path:
    """Write the sweep YAML (``wandb sweep PATH`` registers it; ``wandb agent ID`` runs it)."""
    path = Path(path)
    atomic_write_text(path, yaml.safe_dump(sweep_config(cfg, config_arg, overrides), sort_keys=False))
    return path
