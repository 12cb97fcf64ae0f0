"""Stage 4, apply: change the host. Secrets into memory, stacks up in order, results out."""

from deployer.apply.compose import ComposeBackend, StackBackend, refuse_host_access
from deployer.apply.engines import Engines
from deployer.apply.executor import run_stacks
from deployer.apply.secrets import decrypt_files, redact

__all__ = ["ComposeBackend", "Engines", "StackBackend", "decrypt_files", "redact", "refuse_host_access", "run_stacks"]
