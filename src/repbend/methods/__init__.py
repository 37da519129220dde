"""Training methods: registry name -> loss on the shared training loop, each registered
with the dataclass of its own settings (``register_method``)."""
from ..config import MethodSettings
from .base import METHODS, LossOutput, Method, Runner, TrainingModule, build_method, register_method
from . import repbend  # noqa: F401  (registers "repbend")
# The baselines; task arithmetic is a weight merge (repbend.commands.task_arithmetic), here
# only its settings.
from . import circuit_breaker, dpo, npo, refusal_sft, rmu, task_arithmetic  # noqa: F401,E402

__all__ = ["METHODS", "LossOutput", "Method", "MethodSettings", "Runner", "TrainingModule", "build_method",
           "register_method"]
