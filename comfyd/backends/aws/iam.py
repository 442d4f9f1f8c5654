"""The least-privilege IAM policies of deploy/, filled in for one set of settings.

One policy per role, each exactly the calls that role makes:
- deploy/iam-policy.json: a process that runs jobs (`comfyd worker`, the Lambda job function,
  `comfyd serve` with its local workers): outputs, job state, the queues' whole life cycle.
- deploy/iam-policy-api.json: an API process that runs no jobs (`comfyd serve` in front of SQS,
  the Lambda API function): no sqs:ReceiveMessage/DeleteMessage/ChangeMessageVisibility, no
  s3:DeleteObject, no dead-letter queue.
- deploy/iam-policy-init.json: what `comfyd aws init` needs once.
All hold placeholders (PARTITION, REGION, ACCOUNT, BUCKET, PREFIX, TABLE, QUEUE, TOPIC, NAMESPACE,
KMS_KEY_ID); `render_policy` replaces them and drops statements for parts that are not
configured (no KMS key: no KMS statement).

With COMFYD_AWS_ROLE_ARN, attach the runtime policy to that role; the identity comfyd starts
with then needs only `sts:AssumeRole` on it.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from comfyd.settings import Settings

RUNTIME_POLICY = "iam-policy.json"
API_POLICY = "iam-policy-api.json"
INIT_POLICY = "iam-policy-init.json"
_DEPLOY = Path(__file__).resolve().parents[3] / "deploy"


def load_policy(name: str = RUNTIME_POLICY, directory: Path | None = None) -> dict[str, Any]:
    path = (directory or _DEPLOY) / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing (it ships in the repository's deploy/ folder)")
    return json.loads(path.read_text())


def _fill(value: Any, names: dict[str, str]) -> Any:
    if isinstance(value, str):
        for token in sorted(names, key=len, reverse=True):  # KMS_KEY_ID before ...
            value = value.replace(token, names[token])
        return value
    if isinstance(value, list):
        return [_fill(v, names) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, names) for k, v in value.items()}
    return value


def render_policy(settings: Settings, account: str, partition: str = "aws", region: str | None = None,
                  name: str = RUNTIME_POLICY) -> dict[str, Any]:
    """The policy `name` for these settings, ready for `aws iam create-policy`."""
    document = copy.deepcopy(load_policy(name))
    topic = settings.sns_topic or ""
    names = {
        "PARTITION": partition, "REGION": region or settings.aws_region or "", "ACCOUNT": account,
        "BUCKET": settings.s3_bucket or "", "PREFIX": settings.s3_prefix.strip("/"),
        "TABLE": settings.dynamodb_table or "", "QUEUE": settings.sqs_queue or "",
        "TOPIC": topic.rsplit(":", 1)[-1], "NAMESPACE": settings.cloudwatch_namespace,
        "KMS_KEY_ID": settings.s3_kms_key_id or "",
    }
    needs = {
        "BUCKET": bool(settings.s3_bucket), "TABLE": bool(settings.dynamodb_table), "QUEUE": bool(settings.sqs_queue),
        "TOPIC": bool(topic), "KMS_KEY_ID": bool(settings.s3_kms_key_id),
        "NAMESPACE": settings.metrics == "cloudwatch",
    }
    kept = []
    for statement in document["Statement"]:
        text = json.dumps(statement)
        if all(ok or token not in text for token, ok in needs.items()):
            kept.append(_fill(statement, names))
    document["Statement"] = kept
    return document


def policy_actions(document: dict[str, Any]) -> set[str]:
    actions: set[str] = set()
    for statement in document["Statement"]:
        found = statement["Action"]
        actions.update([found] if isinstance(found, str) else found)
    return actions


__all__ = ["API_POLICY", "INIT_POLICY", "RUNTIME_POLICY", "load_policy", "policy_actions", "render_policy"]
