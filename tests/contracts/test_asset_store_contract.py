"""AssetStore and IdempotencyKeys (comfyd.engine.assets) on the embedded SQLite backend:
records, dedup lookups, single-use keys, and both surviving a reopen of the database."""

from __future__ import annotations

import time
from pathlib import Path

from comfyd.backends.sqlite_assets import SqliteAssetStore, SqliteIdempotencyKeys
from comfyd.backends.sqlite_store import SqliteDatabase
from comfyd.engine.assets import AssetRecord, AssetStore, IdempotencyKeys


def test_asset_records_by_id_hash_and_job(tmp_path: Path) -> None:
    db = SqliteDatabase(tmp_path / "a.db")
    store = SqliteAssetStore(db)
    assert isinstance(store, AssetStore)
    first = AssetRecord(id="a1", hash="blake3:" + "0" * 64, size=3, content_type="image/png", file_path="x.png",
                        location="x.png")
    assert store.put(first) == first
    clash = AssetRecord(id="a1", hash="blake3:" + "1" * 64, size=9, content_type="text/plain", file_path="y")
    assert store.put(clash).file_path == "x.png"  # an existing id is kept, not overwritten
    output = AssetRecord(id="o1", hash=first.hash, size=3, content_type="image/png", file_path="o.png",
                         kind="output", location="o.png", job_id="job-1", node_id="9")
    store.put(output)
    gone = AssetRecord(id="old", hash=first.hash, size=3, content_type="image/png", file_path="z.png",
                       expires_at=time.time() - 1)
    store.put(gone)
    assert [a.id for a in store.by_hash(first.hash)] == ["a1", "o1"]  # the expired one is hidden
    assert store.get("old") is None
    assert [a.id for a in store.for_job("job-1")] == ["o1"]
    assert store.delete("a1") and not store.delete("a1")
    db.close()
    reopened = SqliteAssetStore(SqliteDatabase(tmp_path / "a.db"))
    assert reopened.get("o1") == output and reopened.get("a1") is None


def test_idempotency_keys_are_single_use_and_durable(tmp_path: Path) -> None:
    db = SqliteDatabase(tmp_path / "k.db")
    keys = SqliteIdempotencyKeys(db)
    assert isinstance(keys, IdempotencyKeys)
    now = time.time()
    assert keys.claim("caller", "k", now)
    assert not keys.claim("caller", "k", now + 1)
    assert keys.claim("other-caller", "k", now)  # per caller
    keys.bind("caller", "k", "job-1")
    keys.release("other-caller", "k")
    assert keys.claim("other-caller", "k", now + 2)  # released: usable again
    db.close()
    reopened = SqliteIdempotencyKeys(SqliteDatabase(tmp_path / "k.db"))
    assert not reopened.claim("caller", "k", now + 3)  # still held after a restart
    assert reopened.claim("caller", "k", now + 24 * 3600 + 1)  # expired after 24 h
