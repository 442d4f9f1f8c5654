"""`comfyd check`: validate a workflow, list what it lacks, estimate its cost, without running it."""

from comfyd.check.report import EXIT_INVALID, EXIT_NEEDS_MODELS, EXIT_OK, CheckError, CheckReport
from comfyd.check.run import check_workflow, device_memory_bytes

__all__ = [
    "EXIT_INVALID",
    "EXIT_NEEDS_MODELS",
    "EXIT_OK",
    "CheckError",
    "CheckReport",
    "check_workflow",
    "device_memory_bytes",
]
