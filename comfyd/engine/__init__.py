"""The engine: workflow parsing, validation, caching and execution. It imports no node module.

req = parse_workflow(body)
outputs = validate_workflow(req, registry, env)
result = Executor(registry, env, cache=NodeCache(max_bytes=...)).execute(req, job_id=...)
"""

from __future__ import annotations

from comfyd.engine import errors
from comfyd.engine.cache import NodeCache
from comfyd.engine.errors import (
    ExecutionInterrupted,
    NodeExecutionError,
    RetryableError,
    WorkflowParseError,
    WorkflowValidationError,
    is_retryable,
)
from comfyd.engine.executor import ExecutionResult, Executor
from comfyd.engine.graph import Graph, GraphNode, Link, WorkflowRequest, parse_workflow, to_api_prompt
from comfyd.engine.validate import InputLimit, ServiceLimits, validate_workflow

__all__ = [
    "ExecutionInterrupted",
    "ExecutionResult",
    "Executor",
    "Graph",
    "GraphNode",
    "InputLimit",
    "Link",
    "NodeCache",
    "NodeExecutionError",
    "RetryableError",
    "ServiceLimits",
    "WorkflowParseError",
    "WorkflowRequest",
    "WorkflowValidationError",
    "errors",
    "is_retryable",
    "parse_workflow",
    "to_api_prompt",
    "validate_workflow",
]
