"""Stage 3, decide: which stacks a commit affects, and in what order. Pure: files in, values out."""

from deployer.plan.catalog import load_catalog, secret_format, stack_names_in
from deployer.plan.planner import make_plan

__all__ = ["load_catalog", "make_plan", "secret_format", "stack_names_in"]
