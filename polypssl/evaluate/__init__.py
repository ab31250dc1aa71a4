"""Evaluation: protocol metrics, per-image scores of fine-tuned runs, and the generalisation report.

- ``metrics``: ``per_image_scores(logits, targets)`` (Dice, IoU, precision, recall exactly as
  docs/protocol.md section 4) and dataset-level pooled Dice; imports only torch.
- ``run``: ``polypssl evaluate RUN_DIR DATASET ROOT [--split test|all]`` / ``evaluate_run(...)``.
- ``report``: ``polypssl report RUNS_DIR`` / ``build_report(...)``: Table 1, Fig. 1, Fig. 2, report.md.
- ``stats``, ``figures``, ``labels``: ranks, bootstrap, paired tests; the figures; the paper's labels.

Submodules are imported on use, so ``import polypssl.evaluate`` stays cheap.
"""
