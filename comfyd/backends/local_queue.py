"""JobQueue in-process, persisted in the job store's SQLite database.

Higher priority first, FIFO within a priority (by insertion sequence; a retried job keeps its
place). A received item is invisible (it has a receipt) until acked or nacked; a nack may delay
it. The queue belongs to ONE process: on open, items a dead process had received become
visible again, which is how a kill -9 loses nothing.
"""

from __future__ import annotations

import threading
import time
import uuid

from comfyd.backends.sqlite_store import SqliteDatabase
from comfyd.engine.interfaces import QueueItem


class LocalJobQueue:
    """comfyd.engine.interfaces.JobQueue on a table of the shared SQLite database."""

    def __init__(self, db: SqliteDatabase) -> None:
        self.db = db
        self._changed = threading.Condition()
        self._generation = 0
        self._wakeups = 0
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

    def _notify(self) -> None:
        with self._changed:
            self._generation += 1
            self._changed.notify_all()

    def put(self, job_id: str, priority: int) -> None:
        """Enqueue; a job already in the queue keeps its place (no duplicate)."""
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO queue_items (job_id, priority, seq, visible_at)"
                " VALUES (?, ?, (SELECT COALESCE(MAX(seq), 0) + 1 FROM queue_items), ?)",
                (job_id, int(priority), time.time()),
            )
        self._notify()

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
            conn.execute(
                "UPDATE queue_items SET receipt = NULL, visible_at = ? WHERE job_id = ? AND receipt = ?",
                (time.time() + max(0.0, delay), item.job_id, item.receipt),
            )
        self._notify()

    def extend(self, item: QueueItem, seconds: float) -> None:
        """Local items stay invisible until acked or nacked (or the process dies): nothing to do."""

    def remove(self, job_id: str) -> bool:
        with self.db.transaction() as conn:
            cursor = conn.execute("DELETE FROM queue_items WHERE job_id = ? AND receipt IS NULL", (job_id,))
            return cursor.rowcount == 1

    def depth(self) -> int:
        rows = self.db.query("SELECT COUNT(*) AS n FROM queue_items WHERE receipt IS NULL")
        return int(rows[0]["n"])
