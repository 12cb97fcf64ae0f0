"""Stage 5, report: tell the world. Never raises into the pipeline."""

from deployer.report.audit import format_event

__all__ = ["format_event"]
