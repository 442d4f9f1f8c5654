"""AssetStore and IdempotencyKeys on SQLite, in the same database file as the jobs.

Both survive kill -9 like the job store (WAL; a committed claim is durable), so a key used
before a crash still refuses a second submission after the restart.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import time

from comfyd.backends.sqlite_store import SqliteDatabase
from comfyd.engine.assets import IDEMPOTENCY_TTL_S, AssetRecord

_FIELDS = frozenset(f.name for f in dataclasses.fields(AssetRecord))


def _to_json(asset: AssetRecord) -> str:
    return json.dumps(dataclasses.asdict(asset), separators=(",", ":"))


def _from_row(row: sqlite3.Row) -> AssetRecord:
    data = json.loads(row["data"])
    return AssetRecord(**{k: v for k, v in data.items() if k in _FIELDS})


class SqliteAssetStore:
    """comfyd.engine.assets.AssetStore on SQLite."""

    def __init__(self, db: SqliteDatabase) -> None:
        self.db = db
        with db.transaction() as conn:
            conn.execute(
                """CREATE TABLE IF NOT EXISTS assets (
                    id TEXT PRIMARY KEY,
                    hash TEXT,
                    job_id TEXT,
                    created_at REAL NOT NULL,
                    data TEXT NOT NULL)"""
            )
            conn.execute("CREATE INDEX IF NOT EXISTS assets_hash ON assets (hash, created_at)")
            conn.execute("CREATE INDEX IF NOT EXISTS assets_job ON assets (job_id)")

    def put(self, asset: AssetRecord) -> AssetRecord:
        with self.db.transaction() as conn:
            row = conn.execute("SELECT data FROM assets WHERE id = ?", (asset.id,)).fetchone()
            if row is not None:
                return _from_row(row)
            conn.execute(
                "INSERT INTO assets (id, hash, job_id, created_at, data) VALUES (?, ?, ?, ?, ?)",
                (asset.id, asset.hash, asset.job_id, asset.created_at, _to_json(asset)),
            )
        return asset

    def get(self, asset_id: str) -> AssetRecord | None:
        rows = self.db.query("SELECT data FROM assets WHERE id = ?", (asset_id,))
        if not rows:
            return None
        asset = _from_row(rows[0])
        if asset.expires_at is not None and asset.expires_at < time.time():
            return None
        return asset

    def by_hash(self, digest: str) -> list[AssetRecord]:
        rows = self.db.query("SELECT data FROM assets WHERE hash = ? ORDER BY created_at, rowid", (digest,))
        now = time.time()
        return [a for a in map(_from_row, rows) if a.expires_at is None or a.expires_at >= now]

    def for_job(self, job_id: str) -> list[AssetRecord]:
        rows = self.db.query("SELECT data FROM assets WHERE job_id = ? ORDER BY created_at, rowid", (job_id,))
        return [_from_row(r) for r in rows]

    def delete(self, asset_id: str) -> bool:
        with self.db.transaction() as conn:
            return conn.execute("DELETE FROM assets WHERE id = ?", (asset_id,)).rowcount == 1


class SqliteIdempotencyKeys:
    """comfyd.engine.assets.IdempotencyKeys on SQLite."""

    def __init__(self, db: SqliteDatabase) -> None:
        self.db = db
        with db.transaction() as conn:
            conn.execute(
                """CREATE TABLE IF NOT EXISTS idempotency_keys (
                    scope TEXT NOT NULL,
                    key TEXT NOT NULL,
                    claimed_at REAL NOT NULL,
                    resource_id TEXT,
                    PRIMARY KEY (scope, key))"""
            )

    def claim(self, scope: str, key: str, now: float, ttl_s: float = IDEMPOTENCY_TTL_S) -> bool:
        with self.db.transaction() as conn:
            row = conn.execute("SELECT claimed_at FROM idempotency_keys WHERE scope = ? AND key = ?",
                               (scope, key)).fetchone()
            if row is not None and row["claimed_at"] >= now - ttl_s:
                return False
            conn.execute("INSERT OR REPLACE INTO idempotency_keys (scope, key, claimed_at, resource_id)"
                         " VALUES (?, ?, ?, NULL)", (scope, key, now))
            # Keys older than the TTL are dead weight: drop a few on each claim.
            conn.execute("DELETE FROM idempotency_keys WHERE rowid IN (SELECT rowid FROM idempotency_keys"
                         " WHERE claimed_at < ? LIMIT 100)", (now - ttl_s,))
        return True

    def bind(self, scope: str, key: str, resource_id: str) -> None:
        with self.db.transaction() as conn:
            conn.execute("UPDATE idempotency_keys SET resource_id = ? WHERE scope = ? AND key = ?",
                         (resource_id, scope, key))

    def release(self, scope: str, key: str) -> None:
        with self.db.transaction() as conn:
            conn.execute("DELETE FROM idempotency_keys WHERE scope = ? AND key = ?", (scope, key))
