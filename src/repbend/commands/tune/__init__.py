"""``repbend tune``: a multi-objective Optuna search over training settings.

Each trial applies the sampled values (``tune.space``: dotted config keys) to CONFIG, trains
with the core trainer on the built training data, and is evaluated by the evaluation path
on seeded samples of the build's *dev* split (harmful, benign and everyday, over-refusal
prompts). The test split is read only by the final evaluation, so its numbers are not
tuned ones.

Objectives: harmful compliance (minimised), benign helpfulness and over-refusal compliance
(maximised). Degenerate shares are recorded, and with the helpfulness and over-refusal
ratios to the base model they are Optuna constraints (``trial.set_constraint``): the
sampler prefers feasible points, and the best point is the feasible one with the lowest
harmful compliance (the least infeasible one when none is feasible, flagged as such).

Pruning: Optuna's ``trial.report``/``should_prune`` do not support multi-objective
studies, so a trial raises ``optuna.TrialPruned`` itself when the trainer's divergence
guard stops it, or when its benign answers at ``tune.intermediate_check_step`` are more
often degenerate than ``tune.max_benign_degenerate`` (training then resumes from that
step's checkpoint).

Resume: the study lives in SQLite (``OUTPUT_DIR/tune/study.db``); running the same command
again runs only the trials still missing from ``tune.trials`` (complete or pruned ones
count). A trial cut off by an interruption is run again with its own values in its own
folder, so its training resumes from its last checkpoint. One ``repbend tune`` process
per study: parallel trials are ``tune.n_jobs`` threads in that process.

Output in ``OUTPUT_DIR/tune``: ``front.md``/``front.json``/``front.png`` (Pareto front and
every trial), ``best.yaml`` (the best point as a ready ``repbend run`` config) and
``final/`` (``repbend run`` of ``best.yaml``: trained on all training data, evaluated on
the test split).
"""
from .report import TuneResult, summary_lines
from .space import parse_space
from .study import tune

__all__ = ["TuneResult", "parse_space", "summary_lines", "tune"]
