"""Analysis of a bent model: logit lens and safe-vs-unsafe activation geometry."""
from .report import report_lines, summary_lines
from .run import AnalysisResult, analyze

__all__ = ["AnalysisResult", "analyze", "report_lines", "summary_lines"]
