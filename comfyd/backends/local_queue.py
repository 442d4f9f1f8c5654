"""JobQueue in-process, persisted in the job store's SQLite database.

Higher priority first, FIFO within a priority (by insertion sequence; a retried job keeps its
place). A received item is invisible (it has a receipt) until acked or nacked; a nack may delay
it. The queue belongs to ONE process: on open, items a dead process had received become
visible again, which is how a kill -9 loses nothing. Because it belongs to one process, the
queue keeps its depth (items not received) in memory, counted from the table on open.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from typing import Any

from comfyd.backends.sqlite_store import SqliteDatabase, SqliteJobStore
from comfyd.engine.interfaces import JobRecord, QueueItem

_INSERT = "INSERT OR IGNORE INTO queue_items (job_id, priority, seq, visible_at) VALUES (?, ?, ?, ?)"


class LocalJobQueue:
    """comfyd.engine.interfaces.JobQueue on a table of the shared SQLite database."""

    def __init__(self, db: SqliteDatabase) -> None:
        self.db = db
        self._changed = threading.Condition()
        self._generation = 0
        self._wakeups = 0
        self._count_lock = threading.Lock()
        with db.transaction() as conn:
            conn.execute(
                """CREATE TABLE IF NOT EXISTS queue_items (
                    job_id TEXT PRIMARY KEY,
                    priority INTEGER NOT NULL,
                    seq INTEGER NOT NULL,
                    visible_at REAL NOT NULL,
                    receipt TEXT,
                    receive_count INTEGER NOT NULL DEFAULT 0)"""
            )
            conn.execute("CREATE INDEX IF NOT EXISTS queue_order ON queue_items (priority DESC, seq ASC)")
            # Items received by a process that is gone are waiting again.
            conn.execute("UPDATE queue_items SET receipt = NULL WHERE receipt IS NOT NULL")
            self._visible = int(conn.execute("SELECT COUNT(*) FROM queue_items").fetchone()[0])
            # The next insertion sequence, also in memory (MAX(seq) per put scans the table).
            self._seq = int(conn.execute("SELECT COALESCE(MAX(seq), 0) FROM queue_items").fetchone()[0])

    def _insert(self, conn: sqlite3.Connection, job_id: str, priority: int, now: float) -> int:
        """Insert within a write transaction (which the writer lock serialises); rows added."""
        self._seq += 1  # a rolled-back insert leaves a gap, which orders nothing differently
        return conn.execute(_INSERT, (job_id, int(priority), self._seq, now)).rowcount

    def _count(self, delta: int) -> None:
        """Adjust the depth after a committed change (never before: a rollback changes nothing)."""
        if delta:
            with self._count_lock:
                self._visible += delta

    def _notify(self) -> None:
        with self._changed:
            self._generation += 1
            self._changed.notify_all()

    def put(self, job_id: str, priority: int) -> None:
        """Enqueue; a job already in the queue keeps its place (no duplicate)."""
        with self.db.transaction() as conn:
            added = self._insert(conn, job_id, priority, time.time())
        self._count(added)
        self._notify()

    def create_and_put(self, store: Any, job: JobRecord) -> bool | None:
        """Store a new job and enqueue it in ONE transaction (marked enqueued, as it is), when
        `store` keeps its jobs in this queue's database. True: created and queued; False: a job
        with this id exists (nothing written); None: another store, so the caller does both."""
        if not isinstance(store, SqliteJobStore) or store.db is not self.db:
            return None
        job.enqueued_at = time.time()
        try:
            with self.db.transaction() as conn:
                if not store.insert(conn, job):
                    return False
                added = self._insert(conn, job.id, job.priority, job.enqueued_at)
        except sqlite3.Error:
            job.enqueued_at = None
            raise
        self._count(added)
        self._notify()
        return True

    def _claim(self) -> QueueItem | None:
        now = time.time()
        with self.db.transaction() as conn:
            row = conn.execute(
                "SELECT job_id, priority, receive_count FROM queue_items"
                " WHERE receipt IS NULL AND visible_at <= ? ORDER BY priority DESC, seq ASC LIMIT 1",
                (now,),
            ).fetchone()
            if row is None:
                return None
            receipt = uuid.uuid4().hex
            count = row["receive_count"] + 1
            conn.execute(
                "UPDATE queue_items SET receipt = ?, receive_count = ? WHERE job_id = ?",
                (receipt, count, row["job_id"]),
            )
        self._count(-1)
        return QueueItem(job_id=row["job_id"], priority=row["priority"], receipt=receipt, receive_count=count)

    def _next_visible_in(self) -> float | None:
        rows = self.db.query("SELECT MIN(visible_at) AS t FROM queue_items WHERE receipt IS NULL")
        t = rows[0]["t"] if rows else None
        return None if t is None else max(0.0, t - time.time())

    def wake(self) -> None:
        """Make every waiting `get` return now (a stopping worker need not wait out its timeout)."""
        with self._changed:
            self._wakeups += 1
            self._generation += 1
            self._changed.notify_all()

    def get(self, timeout: float) -> QueueItem | None:
        deadline = time.monotonic() + max(0.0, timeout)
        with self._changed:
            wakeups = self._wakeups
        while True:
            with self._changed:
                if self._wakeups != wakeups:
                    return None
                generation = self._generation
            item = self._claim()
            if item is not None:
                return item
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            wait = remaining
            next_visible = self._next_visible_in()
            if next_visible is not None:
                wait = min(wait, max(0.005, next_visible))
            with self._changed:
                if self._generation == generation:
                    self._changed.wait(wait)

    def ack(self, item: QueueItem) -> None:
        with self.db.transaction() as conn:
            conn.execute("DELETE FROM queue_items WHERE job_id = ? AND receipt = ?", (item.job_id, item.receipt))

    def nack(self, item: QueueItem, delay: float = 0.0) -> None:
        with self.db.transaction() as conn:
            back = conn.execute(
                "UPDATE queue_items SET receipt = NULL, visible_at = ? WHERE job_id = ? AND receipt = ?",
                (time.time() + max(0.0, delay), item.job_id, item.receipt),
            ).rowcount
        self._count(back)
        self._notify()

    def extend(self, item: QueueItem, seconds: float) -> None:
        """Local items stay invisible until acked or nacked (or the process dies): nothing to do."""

    def remove(self, job_id: str) -> bool:
        with self.db.transaction() as conn:
            removed = conn.execute("DELETE FROM queue_items WHERE job_id = ? AND receipt IS NULL", (job_id,)).rowcount
        self._count(-removed)
        return removed == 1

    def depth(self) -> int:
        """Items waiting (not received), delayed ones included: kept in memory, no query."""
        with self._count_lock:
            return self._visible
