"""Stage 5, report: tell the world. Never raises into the pipeline."""

from deployer.report.audit import Journal

__all__ = ["Journal"]
