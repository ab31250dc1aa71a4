"""The whole study in one command: plan the grid of runs, execute it here or on SLURM, report.

``plan`` expands a study config into pretraining, fine-tuning, evaluation and report steps whose run
directories are named by their resolved configs (so re-running skips finished work and resumes
interrupted runs); ``executors`` runs them locally or as dependent SLURM jobs; ``sweep`` writes a W&B
sweep over the models; ``cli`` is ``polypssl study``.
"""
