"""``recon``: the pipeline from a terminal, for researchers (``main``); see ``recon --help``."""

from recon_service.cli.main import main
from recon_service.cli.printing import ProgressPrinter, eval_summary, run_summary

__all__ = ["ProgressPrinter", "eval_summary", "main", "run_summary"]
