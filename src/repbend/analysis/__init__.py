"""Analysis of a bent model: logit lens and safe-vs-unsafe activation geometry
(`repbend analyze` is :mod:`repbend.commands.analyze`)."""
from .report import report_lines, summary_lines

__all__ = ["report_lines", "summary_lines"]
