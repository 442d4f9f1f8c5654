"""JobStore on SQLite (WAL): the embedded, durable job store.

One database file holds the jobs (this module) and the local queue (`local_queue.py`), so one
writer lock serves both and a submission stores the job and its queue item in one transaction. WAL with synchronous=NORMAL: a committed transaction
survives the process being killed (kill -9) at any point; only an OS crash or power loss can
lose the last commits (set `COMFYD_SQLITE_SYNC=FULL` to pay an fsync per commit instead).

A record is stored as JSON (every JobRecord field is JSON-serialisable) beside the columns the
store filters and orders on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from comfyd.engine.interfaces import TERMINAL_STATUSES, JobRecord, JobStatus

_FIELD_NAMES = tuple(f.name for f in dataclasses.fields(JobRecord))
_RECORD_FIELDS = frozenset(_FIELD_NAMES)
CACHE_KIB = 512  # per connection, so per thread that touches the database
_TERMINAL_VALUES = tuple(s.value for s in TERMINAL_STATUSES)


class _Connection(sqlite3.Connection):
    """A plain connection that can be weakly referenced (the database closes every thread's)."""


class SqliteDatabase:
    """One SQLite file in WAL mode: a connection per thread, one writer at a time.

    Reads run on the calling thread's own connection without any Python lock (WAL readers see
    the last committed state and never wait for the writer). Writes are explicit transactions
    behind one in-process lock: SQLite's own busy wait sleeps in steps of up to 100 ms, which a
    lock queue avoids. A thread's connection closes when the thread ends (or at close()).
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._memory = str(path) == ":memory:"  # one shared connection: each would be its own db
        if not self._memory:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._local = threading.local()
        self._all: weakref.WeakSet[_Connection] = weakref.WeakSet()
        self._closed = False
        sync = os.environ.get("COMFYD_SQLITE_SYNC", "NORMAL").upper()
        self._sync = "FULL" if sync == "FULL" else "NORMAL"
        self._shared = self._connect()
        self._shared.execute("PRAGMA journal_mode=WAL")

    def _connect(self) -> _Connection:
        conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False, timeout=30.0,
                               factory=_Connection)
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA synchronous={self._sync}")
        conn.execute("PRAGMA busy_timeout=30000")
        # Each thread's page cache is private: a small one bounds memory (the OS caches the file).
        conn.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
        with self._lock:
            self._all.add(conn)
        return conn

    def connection(self) -> sqlite3.Connection:
        """This thread's connection (opened on first use)."""
        if self._memory:
            return self._shared
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if self._closed:
                raise sqlite3.ProgrammingError("Cannot operate on a closed database.")
            conn = self._local.conn = self._connect()
        return conn

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception."""
        with self._lock:
            conn = self.connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        if self._memory:
            with self._lock:
                return self._shared.execute(sql, params).fetchall()
        return self.connection().execute(sql, params).fetchall()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for conn in list(self._all):
                conn.close()


def _json_default(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return str(value)


def record_to_json(job: JobRecord) -> str:
    # Field by field rather than dataclasses.asdict, which deep-copies the whole workflow first.
    data = {name: getattr(job, name) for name in _FIELD_NAMES}
    data["status"] = job.status.value
    return json.dumps(data, separators=(",", ":"), default=_json_default)


def record_from_json(text: str) -> JobRecord:
    data = json.loads(text)
    known = {k: v for k, v in data.items() if k in _RECORD_FIELDS}
    known["status"] = JobStatus(known.get("status", JobStatus.QUEUED.value))
    return JobRecord(**known)


def _check_fields(fields: dict[str, Any]) -> None:
    unknown = set(fields) - _RECORD_FIELDS
    if unknown:
        raise ValueError(f"unknown JobRecord field(s): {', '.join(sorted(unknown))}")
    if "id" in fields or "status" in fields:
        raise ValueError("id and status cannot be set through fields; use transition()")


class SqliteJobStore:
    """comfyd.engine.interfaces.JobStore on SQLite."""

    def __init__(self, db: SqliteDatabase, history_max_items: int = 10000) -> None:
        self.db = db
        self.history_max_items = history_max_items
        self._terminal_writes = 0
        with db.transaction() as conn:
            conn.execute(
                """CREATE TABLE IF NOT EXISTS jobs (
                    id TEXT PRIMARY KEY,
                    status TEXT NOT NULL,
                    priority INTEGER NOT NULL,
                    number INTEGER NOT NULL,
                    created_at REAL NOT NULL,
                    finished_at REAL,
                    expires_at REAL,
                    data TEXT NOT NULL)"""
            )
            conn.execute("CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, created_at)")
            conn.execute("CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created_at)")

    def create(self, job: JobRecord) -> bool:
        with self.db.transaction() as conn:
            return self.insert(conn, job)

    @staticmethod
    def insert(conn: sqlite3.Connection, job: JobRecord) -> bool:
        """Insert within the caller's transaction; False if the id exists (nothing written)."""
        cursor = conn.execute(
            "INSERT OR IGNORE INTO jobs (id, status, priority, number, created_at, finished_at, expires_at, data)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (job.id, job.status.value, job.priority, job.number, job.created_at, job.finished_at,
             job.expires_at, record_to_json(job)),
        )
        return cursor.rowcount == 1

    def get(self, job_id: str) -> JobRecord | None:
        rows = self.db.query("SELECT data, expires_at FROM jobs WHERE id = ?", (job_id,))
        if not rows:
            return None
        expires = rows[0]["expires_at"]
        if expires is not None and expires < time.time():
            return None
        return record_from_json(rows[0]["data"])

    def transition(self, job_id: str, expected: set[JobStatus], new: JobStatus, *, holder: str | None = None,
                   **fields: Any) -> bool:
        _check_fields(fields)
        with self.db.transaction() as conn:
            row = conn.execute("SELECT status, data FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None or JobStatus(row["status"]) not in expected:
                return False
            job = record_from_json(row["data"])
            if holder is not None and job.worker_id != holder:
                return False
            job = dataclasses.replace(job, status=new, **fields)
            self._write(conn, job)
        if new.terminal:
            self._maybe_prune()
        return True

    def update(self, job_id: str, **fields: Any) -> None:
        _check_fields(fields)
        with self.db.transaction() as conn:
            row = conn.execute("SELECT data FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return
            self._write(conn, dataclasses.replace(record_from_json(row["data"]), **fields))

    @staticmethod
    def _write(conn: sqlite3.Connection, job: JobRecord) -> None:
        conn.execute(
            "UPDATE jobs SET status = ?, priority = ?, number = ?, finished_at = ?, expires_at = ?, data = ?"
            " WHERE id = ?",
            (job.status.value, job.priority, job.number, job.finished_at, job.expires_at, record_to_json(job), job.id),
        )

    def list(self, status: set[JobStatus] | None = None, limit: int = 100) -> list[JobRecord]:
        now = time.time()
        if status:
            marks = ",".join("?" for _ in status)
            rows = self.db.query(
                f"SELECT data FROM jobs WHERE status IN ({marks}) AND (expires_at IS NULL OR expires_at >= ?)"
                " ORDER BY created_at DESC, rowid DESC LIMIT ?",
                (*[s.value for s in status], now, limit),
            )
        else:
            rows = self.db.query(
                "SELECT data FROM jobs WHERE expires_at IS NULL OR expires_at >= ?"
                " ORDER BY created_at DESC, rowid DESC LIMIT ?",
                (now, limit),
            )
        return [record_from_json(r["data"]) for r in rows]

    def delete(self, job_id: str) -> None:
        with self.db.transaction() as conn:
            conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    # --- scale-out: cancel requests and unsent jobs ----------------------------------------
    def request_cancel(self, job_id: str, reason: str) -> bool:
        return self._modify(job_id, lambda job: not job.status.terminal, cancel_requested=reason)

    def cancel_requested(self, job_id: str) -> str | None:
        rows = self.db.query(
            "SELECT json_extract(data, '$.cancel_requested') AS reason, expires_at FROM jobs WHERE id = ?", (job_id,)
        )
        if not rows or (rows[0]["expires_at"] is not None and rows[0]["expires_at"] < time.time()):
            return None
        return rows[0]["reason"]

    def list_unsent(self, created_before: float, limit: int = 100) -> list[JobRecord]:
        rows = self.db.query(
            "SELECT data FROM jobs WHERE status = ? AND created_at < ? AND json_extract(data, '$.enqueued_at') IS NULL"
            " AND (expires_at IS NULL OR expires_at >= ?) ORDER BY created_at ASC, rowid ASC LIMIT ?",
            (JobStatus.QUEUED.value, created_before, time.time(), limit),
        )
        return [record_from_json(r["data"]) for r in rows]

    def claim_requeue(self, job_id: str, now: float, lease_s: float) -> bool:
        def unclaimed(job: JobRecord) -> bool:
            claim = job.requeue_claimed_at
            return (job.status is JobStatus.QUEUED and job.enqueued_at is None
                    and (claim is None or claim < now - lease_s))

        return self._modify(job_id, unclaimed, requeue_claimed_at=now)

    # --- scale-out: the running holder's lease ---------------------------------------------
    def heartbeat(self, job_id: str, worker_id: str, now: float) -> bool:
        return self._modify(job_id, lambda job: job.status is JobStatus.RUNNING and job.worker_id == worker_id,
                            heartbeat_at=now)

    def take_over(self, job_id: str, worker_id: str | None, heartbeat_at: float | None) -> bool:
        def unchanged(job: JobRecord) -> bool:
            return (job.status is JobStatus.RUNNING and job.worker_id == worker_id
                    and job.heartbeat_at == heartbeat_at)

        return self._modify(job_id, unchanged, new_status=JobStatus.QUEUED,
                            worker_id=None, heartbeat_at=None, lease_s=None)

    def _modify(self, job_id: str, accept: Callable[[JobRecord], bool], new_status: JobStatus | None = None,
                **fields: Any) -> bool:
        """Set `fields` (and `new_status`) only if `accept(current record)`: check and write in
        one transaction."""
        _check_fields(fields)
        with self.db.transaction() as conn:
            row = conn.execute("SELECT data, expires_at FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None or (row["expires_at"] is not None and row["expires_at"] < time.time()):
                return False
            job = record_from_json(row["data"])
            if not accept(job):
                return False
            self._write(conn, dataclasses.replace(job, status=new_status or job.status, **fields))
        return True

    def count(self, status: set[JobStatus]) -> int:
        marks = ",".join("?" for _ in status)
        rows = self.db.query(f"SELECT COUNT(*) AS n FROM jobs WHERE status IN ({marks})", tuple(s.value for s in status))
        return int(rows[0]["n"])

    def _maybe_prune(self) -> None:
        """Keep at most history_max_items finished jobs (checked every 100 terminal writes)."""
        self._terminal_writes += 1
        if self._terminal_writes % 100 != 1:
            return
        marks = ",".join("?" for _ in _TERMINAL_VALUES)
        with self.db.transaction() as conn:
            conn.execute(
                f"DELETE FROM jobs WHERE id IN (SELECT id FROM jobs WHERE status IN ({marks})"
                " ORDER BY created_at DESC, rowid DESC LIMIT -1 OFFSET ?)",
                (*_TERMINAL_VALUES, self.history_max_items),
            )
