"""JobStore on DynamoDB: one item per job, conditional writes for every status change.

Item layout (table key: `id`, a string):
- scalar JobRecord fields (status, priority, timestamps, attempts, worker id...) as native
  attributes: S for strings, N for numbers, BOOL, NULL for None;
- structured fields (workflow, outputs, node timings, error...) as B: UTF-8 JSON. The attribute
  type says how to read it back, so a field added to JobRecord later needs no change here;
- a structured field over INLINE_LIMIT bytes is written to S3 (`{prefix}/state/{job_id}/...`)
  and the item keeps only its key under `_s3`: "S3 state backup". At most a dozen such fields of
  at most 32 KB each keeps every item well under DynamoDB's 400 KB limit;
- `expires_at` (N, epoch seconds) is the table's TTL attribute. DynamoDB deletes expired items
  only eventually (days later; moto never), so every read treats a past `expires_at` as gone and
  conditional writes refuse to touch expired items.

A global secondary index `by_status` (hash `status`, range `created_at`) serves `list` and
`list_unsent` (queued items, oldest first) without scanning the table. `request_cancel` and
`claim_requeue` are conditional updates like the status changes; `cancel_requested`, polled by
workers, reads two attributes only. `heartbeat` (the holder renewing its lease: only while the
item is running and its `worker_id`) and `take_over` (running -> queued, only with the
`worker_id` and `heartbeat_at` the caller saw) are conditional updates too.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
import uuid
from decimal import Decimal
from typing import Any

from botocore.exceptions import ClientError

from comfyd.backends.aws.retry import with_backoff
from comfyd.backends.aws.session import AwsSession
from comfyd.engine.interfaces import TERMINAL_STATUSES, JobRecord, JobStatus

log = logging.getLogger(__name__)

STATUS_INDEX = "by_status"
TTL_ATTRIBUTE = "expires_at"
INLINE_LIMIT = 32 * 1024
ITEM_LIMIT = 400 * 1024
_OFFLOAD_ATTRIBUTE = "_s3"  # map: field name -> S3 key of its JSON
# A fresh random token every conditional write sets. When a write is retried (an answer lost, or
# a 500 for a write DynamoDB applied) and the retry's condition fails, the item is read back: our
# own token there means the first try took effect, so it is our success, not a conflict.
_TOKEN_ATTRIBUTE = "_wt"
_FIELDS = {f.name for f in dataclasses.fields(JobRecord)}
# Never confirmed sent: no `enqueued_at`, or NULL (how None is stored).
_UNSENT = "(attribute_not_exists(#enq) OR attribute_type(#enq, :null))"
UNSENT_SCAN_LIMIT = 1000  # queued items one list_unsent call reads at most


class _StaleReference(Exception):
    """An offloaded field was replaced (and its old S3 object deleted) while we read the item."""


class ItemTooLargeError(ValueError):
    """A job field is too large to keep in DynamoDB and no S3 bucket is configured for it."""


def _encode_scalar(value: Any) -> dict[str, Any]:
    if value is None:
        return {"NULL": True}
    if isinstance(value, bool):
        return {"BOOL": value}
    if isinstance(value, JobStatus):
        return {"S": value.value}
    if isinstance(value, int | float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"job field holds {value!r}; DynamoDB numbers must be finite")
        return {"N": repr(value) if isinstance(value, float) else str(value)}
    if isinstance(value, str):
        return {"S": value}
    raise TypeError(f"not a scalar: {type(value).__name__}")


def _decode(attribute: dict[str, Any]) -> Any:
    (kind, raw), = attribute.items()
    if kind == "NULL":
        return None
    if kind == "BOOL":
        return raw
    if kind == "S":
        return raw
    if kind == "N":
        number = Decimal(raw)
        return int(number) if number == number.to_integral_value() and "." not in raw and "e" not in raw.lower() else float(number)
    if kind == "B":
        return json.loads(raw)
    if kind == "M":
        return {k: _decode(v) for k, v in raw.items()}
    raise ValueError(f"unexpected DynamoDB attribute type {kind}")


def _item_size(item: dict[str, dict[str, Any]]) -> int:
    """Upper bound of DynamoDB's item size (name + value bytes)."""
    total = 0
    for name, attribute in item.items():
        (kind, raw), = attribute.items()
        size = len(raw) if isinstance(raw, bytes) else len(json.dumps(raw)) if kind == "M" else len(str(raw).encode())
        total += len(name.encode()) + size + 1
    return total


class DynamoJobStore:
    def __init__(
        self,
        aws: AwsSession,
        table: str,
        *,
        ttl_s: int = 7 * 24 * 3600,
        bucket: str | None = None,
        prefix: str = "comfyd",
        retry_attempts: int = 3,
        retry_backoff_s: float = 1.0,
        inline_limit: int = INLINE_LIMIT,
        delete_stale_state: bool = True,
    ) -> None:
        if not table:
            raise ValueError("COMFYD_JOBSTORE=dynamodb needs COMFYD_DYNAMODB_TABLE")
        self.aws = aws
        self.table = table
        self.ttl_s = ttl_s
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.retry_attempts = retry_attempts
        self.retry_backoff_s = retry_backoff_s
        self.inline_limit = inline_limit
        # False in API processes, whose IAM policy has no s3:DeleteObject: offloaded state a
        # failed write or a delete leaves behind is removed by the bucket's lifecycle rule instead.
        self.delete_stale_state = delete_stale_state
        self._ddb = aws.client("dynamodb")
        self._s3 = aws.client("s3") if bucket else None

    def _call(self, operation: str, **params: Any) -> dict[str, Any]:
        method = getattr(self._ddb, operation)
        return with_backoff(lambda: method(TableName=self.table, **params), attempts=self.retry_attempts,
                            base_s=self.retry_backoff_s, what=f"DynamoDB {operation} on {self.table}")

    # --- encoding ------------------------------------------------------------------------
    def _encode_fields(self, job_id: str, fields: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
        """(inline attributes, {field: S3 key} for offloaded ones). Writes offloaded JSON to S3."""
        inline: dict[str, Any] = {}
        offloaded: dict[str, str] = {}
        for name, value in fields.items():
            if name not in _FIELDS:
                raise ValueError(f"unknown job field {name!r} (JobRecord has {sorted(_FIELDS)})")
            if isinstance(value, JobStatus) or value is None or isinstance(value, bool | int | float | str):
                if name == "status":
                    value = JobStatus(value)
                inline[name] = _encode_scalar(value)
                continue
            blob = json.dumps(value, separators=(",", ":"), default=str).encode()
            if len(blob) <= self.inline_limit:
                inline[name] = {"B": blob}
            else:
                offloaded[name] = self._offload(job_id, name, blob)
        return inline, offloaded

    def _offload(self, job_id: str, name: str, blob: bytes) -> str:
        if self._s3 is None or not self.bucket:
            raise ItemTooLargeError(
                f"job {job_id}: field {name!r} is {len(blob)} bytes, over the {self.inline_limit}-byte inline "
                "limit of the DynamoDB job store; set COMFYD_S3_BUCKET so large fields go to S3"
            )
        # A fresh key per write: a write whose condition fails must not overwrite the winner's data.
        key = f"{self.prefix}/state/{job_id}/{name}-{uuid.uuid4().hex}.json"
        with_backoff(lambda: self._s3.put_object(Bucket=self.bucket, Key=key, Body=blob, ContentType="application/json"),
                     attempts=self.retry_attempts, base_s=self.retry_backoff_s, what=f"state backup {key}")
        return key

    def _discard(self, keys: list[str]) -> None:
        if not self.delete_stale_state:
            return
        for key in keys:
            try:
                self._s3.delete_object(Bucket=self.bucket, Key=key)  # type: ignore[union-attr]
            except ClientError as exc:
                log.warning("could not delete stale job state s3://%s/%s: %s", self.bucket, key, exc)

    def _record(self, item: dict[str, Any]) -> JobRecord:
        values: dict[str, Any] = {}
        for name, attribute in item.items():
            if name in _FIELDS:
                values[name] = _decode(attribute)
        for name, key in _decode(item.get(_OFFLOAD_ATTRIBUTE, {"M": {}})).items():
            if name in _FIELDS:
                try:
                    reply = self._s3.get_object(Bucket=self.bucket, Key=key)  # type: ignore[union-attr]
                except ClientError as exc:
                    if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                        raise _StaleReference(key) from exc
                    raise
                values[name] = json.loads(reply["Body"].read())
        values["status"] = JobStatus(values["status"])
        return JobRecord(**values)

    @staticmethod
    def _expired(item: dict[str, Any], now: float) -> bool:
        expiry = item.get(TTL_ATTRIBUTE)
        return expiry is not None and "N" in expiry and float(expiry["N"]) <= now

    # --- JobStore ------------------------------------------------------------------------
    def create(self, job: JobRecord) -> bool:
        values = dataclasses.asdict(job)
        if values["expires_at"] is None:
            values["expires_at"] = job.created_at + self.ttl_s
        inline, offloaded = self._encode_fields(job.id, values)
        token = uuid.uuid4().hex
        item = {**inline, _OFFLOAD_ATTRIBUTE: {"M": {k: {"S": v} for k, v in offloaded.items()}},
                _TOKEN_ATTRIBUTE: {"S": token}}
        size = _item_size(item)
        if size > ITEM_LIMIT:
            self._discard(list(offloaded.values()))
            raise ItemTooLargeError(f"job {job.id}: item would be {size} bytes, over DynamoDB's 400 KB")
        now = time.time()
        # An expired item with the same id counts as absent (TTL deletion lags).
        reply = self._conditional_write(
            "put_item", job.id, token, Item=item, ConditionExpression="attribute_not_exists(id) OR #ttl <= :now",
            ExpressionAttributeNames={"#ttl": TTL_ATTRIBUTE}, ExpressionAttributeValues={":now": {"N": repr(now)}})
        if reply is None:
            self._discard(list(offloaded.values()))
            return False
        return True

    def _conditional_write(self, operation: str, job_id: str, token: str, **params: Any) -> dict[str, Any] | None:
        """The reply of a conditional write, or None when its condition failed. A write that was
        tried more than once (by botocore's retries or ours) and then failed its condition may
        have been applied by an earlier try: the item is read back, and if it carries this
        write's token the write is ours ({} is returned: the old values are unknown)."""
        method = getattr(self._ddb, operation)
        tries = 0

        def call() -> dict[str, Any]:
            nonlocal tries
            tries += 1
            return method(TableName=self.table, **params)

        try:
            return with_backoff(call, attempts=self.retry_attempts, base_s=self.retry_backoff_s,
                                what=f"DynamoDB {operation} on {self.table}")
        except ClientError as exc:
            if not _condition_failed(exc):
                raise
            retried = tries > 1 or int(exc.response.get("ResponseMetadata", {}).get("RetryAttempts", 0) or 0) > 0
            if retried and self._token_of(job_id) == token:
                log.info("job %s: %s was applied by an earlier try (answer lost); not a conflict", job_id, operation)
                return {}
            return None

    def _token_of(self, job_id: str) -> str | None:
        reply = self._call("get_item", Key={"id": {"S": job_id}}, ConsistentRead=True,
                           ProjectionExpression="#t", ExpressionAttributeNames={"#t": _TOKEN_ATTRIBUTE})
        return reply.get("Item", {}).get(_TOKEN_ATTRIBUTE, {}).get("S")

    def get(self, job_id: str) -> JobRecord | None:
        for _ in range(3):
            reply = self._call("get_item", Key={"id": {"S": job_id}}, ConsistentRead=True)
            item = reply.get("Item")
            if item is None or self._expired(item, time.time()):
                return None
            try:
                return self._record(item)
            except _StaleReference:
                continue  # a concurrent write replaced a large field: read the new item
        raise RuntimeError(f"job {job_id}: its large fields keep changing while being read")

    def transition(self, job_id: str, expected: set[JobStatus], new: JobStatus, *, holder: str | None = None,
                   **fields: Any) -> bool:
        if not expected:
            raise ValueError("transition needs at least one expected status")
        fields = dict(fields)
        fields["status"] = JobStatus(new)
        if JobStatus(new) in TERMINAL_STATUSES and "expires_at" not in fields:
            fields["expires_at"] = time.time() + self.ttl_s  # history lives ttl_s past its end
        names = {"#status": "status"}
        values = {f":e{i}": {"S": JobStatus(s).value} for i, s in enumerate(sorted(expected, key=lambda s: s.value))}
        condition = f"#status IN ({', '.join(values)})"
        if holder is not None:
            names["#holder"] = "worker_id"
            values[":holder"] = {"S": holder}
            condition += " AND #holder = :holder"
        return self._update(job_id, fields, condition, names, values)

    def update(self, job_id: str, **fields: Any) -> None:
        if "status" in fields:
            raise ValueError("update() does not change status; use transition() so the change is conditional")
        if fields:
            self._update(job_id, fields, "attribute_exists(id)", {}, {})

    def _update(self, job_id: str, fields: dict[str, Any], condition: str,
                names: dict[str, str], values: dict[str, Any]) -> bool:
        inline, offloaded = self._encode_fields(job_id, fields)
        now = time.time()
        token = uuid.uuid4().hex
        names = {**names, "#ttl": TTL_ATTRIBUTE, "#s3": _OFFLOAD_ATTRIBUTE, "#wt": _TOKEN_ATTRIBUTE}
        values = {**values, ":now": {"N": repr(now)}, ":wt": {"S": token}}
        sets: list[str] = ["#wt = :wt"]
        removes: list[str] = []
        for i, (name, attribute) in enumerate(inline.items()):
            names[f"#f{i}"] = name
            values[f":f{i}"] = attribute
            sets.append(f"#f{i} = :f{i}")
            removes.append(f"#s3.#f{i}")  # an inline value replaces an earlier offloaded one
        for i, (name, key) in enumerate(offloaded.items()):
            names[f"#o{i}"] = name
            values[f":o{i}"] = {"S": key}
            sets.append(f"#s3.#o{i} = :o{i}")
            removes.append(f"#o{i}")
        expression = "SET " + ", ".join(sets) + (" REMOVE " + ", ".join(removes) if removes else "")
        reply = self._conditional_write(
            "update_item", job_id, token, Key={"id": {"S": job_id}}, UpdateExpression=expression,
            ConditionExpression=f"({condition}) AND attribute_exists(id) AND (attribute_not_exists(#ttl) OR #ttl > :now)",
            ExpressionAttributeNames=names, ExpressionAttributeValues=values, ReturnValues="UPDATED_OLD",
        )
        if reply is None:
            self._discard(list(offloaded.values()))
            return False
        # Offloaded values this write replaced are garbage now.
        old = reply.get("Attributes", {}).get(_OFFLOAD_ATTRIBUTE, {}).get("M", {})
        stale = [old[name]["S"] for name in fields if name in old]
        if stale:
            self._discard(stale)
        return True

    def list(self, status: set[JobStatus] | None = None, limit: int = 100) -> list[JobRecord]:
        wanted = sorted(status if status is not None else set(JobStatus), key=lambda s: s.value)
        now = time.time()
        items: list[dict[str, Any]] = []
        for one in wanted:
            items.extend(self._query_status(JobStatus(one), limit, now))
        items.sort(key=lambda item: float(item["created_at"]["N"]), reverse=True)
        records: list[JobRecord] = []
        for item in items[:limit]:
            try:
                records.append(self._record(item))
            except _StaleReference:  # changed while listed: take the current version
                current = self.get(item["id"]["S"])
                if current is not None:
                    records.append(current)
        return records

    def _query_status(self, status: JobStatus, limit: int, now: float) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        start: dict[str, Any] | None = None
        while len(found) < limit:
            params: dict[str, Any] = {
                "IndexName": STATUS_INDEX, "KeyConditionExpression": "#status = :s",
                "ExpressionAttributeNames": {"#status": "status"},
                "ExpressionAttributeValues": {":s": {"S": status.value}},
                "ScanIndexForward": False, "Limit": limit,
            }
            if start:
                params["ExclusiveStartKey"] = start
            reply = self._call("query", **params)
            found.extend(item for item in reply.get("Items", []) if not self._expired(item, now))
            start = reply.get("LastEvaluatedKey")
            if not start:
                break
        return found[:limit]

    # --- scale-out: cancel requests and unsent jobs ----------------------------------------
    def request_cancel(self, job_id: str, reason: str) -> bool:
        return self._update(job_id, {"cancel_requested": reason}, "#status IN (:q, :r)", {"#status": "status"},
                            {":q": {"S": JobStatus.QUEUED.value}, ":r": {"S": JobStatus.RUNNING.value}})

    def cancel_requested(self, job_id: str) -> str | None:
        # Polled every second or so per running job: only two attributes, eventually consistent
        # (half the read cost; a second's lag does not matter to a cancel).
        reply = self._call("get_item", Key={"id": {"S": job_id}}, ProjectionExpression="#c, #ttl",
                           ExpressionAttributeNames={"#c": "cancel_requested", "#ttl": TTL_ATTRIBUTE})
        item = reply.get("Item")
        if item is None or self._expired(item, time.time()) or "S" not in item.get("cancel_requested", {}):
            return None
        return item["cancel_requested"]["S"]

    def list_unsent(self, created_before: float, limit: int = 100) -> list[JobRecord]:
        records: list[JobRecord] = []
        for item in self._query_unsent(created_before, limit):
            try:
                records.append(self._record(item))
            except _StaleReference:
                current = self.get(item["id"]["S"])
                if current is not None:
                    records.append(current)
        return records

    def _query_unsent(self, created_before: float, limit: int) -> list[dict[str, Any]]:
        """Oldest queued items first, at most UNSENT_SCAN_LIMIT read per call: in a deep backlog
        an orphan is found once it is among the oldest queued jobs, not by reading them all."""
        now = time.time()
        found: list[dict[str, Any]] = []
        start: dict[str, Any] | None = None
        read = 0
        while len(found) < limit and read < UNSENT_SCAN_LIMIT:
            params: dict[str, Any] = {
                "IndexName": STATUS_INDEX, "KeyConditionExpression": "#status = :q AND #created < :before",
                "FilterExpression": _UNSENT, "ExpressionAttributeNames": {"#status": "status", "#created": "created_at",
                                                                          "#enq": "enqueued_at"},
                "ExpressionAttributeValues": {":q": {"S": JobStatus.QUEUED.value}, ":before": {"N": repr(created_before)},
                                              ":null": {"S": "NULL"}},
                "ScanIndexForward": True, "Limit": min(100, UNSENT_SCAN_LIMIT - read),
            }
            if start:
                params["ExclusiveStartKey"] = start
            reply = self._call("query", **params)
            read += int(reply.get("ScannedCount", 0))
            found.extend(item for item in reply.get("Items", []) if not self._expired(item, now))
            start = reply.get("LastEvaluatedKey")
            if not start:
                break
        return found[:limit]

    def claim_requeue(self, job_id: str, now: float, lease_s: float) -> bool:
        condition = (f"#status = :q AND {_UNSENT} AND "
                     "(attribute_not_exists(#claim) OR attribute_type(#claim, :null) OR #claim < :stale)")
        names = {"#status": "status", "#enq": "enqueued_at", "#claim": "requeue_claimed_at"}
        values = {":q": {"S": JobStatus.QUEUED.value}, ":null": {"S": "NULL"}, ":stale": {"N": repr(now - lease_s)}}
        return self._update(job_id, {"requeue_claimed_at": now}, condition, names, values)

    # --- scale-out: the running holder's lease ---------------------------------------------
    def heartbeat(self, job_id: str, worker_id: str, now: float) -> bool:
        return self._update(job_id, {"heartbeat_at": now}, "#status = :r AND #holder = :holder",
                            {"#status": "status", "#holder": "worker_id"},
                            {":r": {"S": JobStatus.RUNNING.value}, ":holder": {"S": worker_id}})

    def take_over(self, job_id: str, worker_id: str | None, heartbeat_at: float | None) -> bool:
        names = {"#status": "status", "#holder": "worker_id", "#hb": "heartbeat_at"}
        values: dict[str, Any] = {":r": {"S": JobStatus.RUNNING.value}}
        conditions = ["#status = :r"]
        for name, value in (("#holder", worker_id), ("#hb", heartbeat_at)):
            if value is None:  # never set: absent, or NULL (how None is stored)
                values[":null"] = {"S": "NULL"}  # DynamoDB refuses values the expression does not use
                conditions.append(f"(attribute_not_exists({name}) OR attribute_type({name}, :null))")
            else:
                values[f":{name[1:]}"] = _encode_scalar(value)
                conditions.append(f"{name} = :{name[1:]}")
        fields = {"status": JobStatus.QUEUED, "worker_id": None, "heartbeat_at": None, "lease_s": None}
        return self._update(job_id, fields, " AND ".join(conditions), names, values)

    def delete(self, job_id: str) -> None:
        reply = self._call("delete_item", Key={"id": {"S": job_id}}, ReturnValues="ALL_OLD")
        offloaded = reply.get("Attributes", {}).get(_OFFLOAD_ATTRIBUTE, {}).get("M", {})
        if offloaded:
            self._discard([v["S"] for v in offloaded.values()])


def _condition_failed(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException"
