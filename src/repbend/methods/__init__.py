"""Training methods: registry name -> loss on the shared training loop."""
from .base import METHODS, LossOutput, Method, Runner, TrainingModule, build_method, register
from . import repbend  # noqa: F401  (registers "repbend")
# The baselines; task arithmetic is a weight merge in .task_arithmetic.
from . import circuit_breaker, dpo, npo, refusal_sft, rmu  # noqa: F401,E402

__all__ = ["METHODS", "LossOutput", "Method", "Runner", "TrainingModule", "build_method", "register"]
