"""Training methods: registry name -> loss on the shared training loop."""
from .base import METHODS, LossOutput, Method, Runner, TrainingModule, build_method, register
from . import repbend  # noqa: F401  (registers "repbend")

__all__ = ["METHODS", "LossOutput", "Method", "Runner", "TrainingModule", "build_method", "register"]
