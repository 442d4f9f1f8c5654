"""The embedded backends on their own: SQLite job store and queue, local outputs, Prometheus text."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from comfyd.backends.local_queue import LocalJobQueue
from comfyd.backends.local_storage import LocalOutputStore
from comfyd.backends.prometheus import PrometheusMetrics, metric_name
from comfyd.backends.sqlite_store import SqliteDatabase, SqliteJobStore
from comfyd.engine.interfaces import JobQueue, JobRecord, JobStatus, JobStore, Metrics, OutputStore
from comfyd.safepath import UnsafePathError


@pytest.fixture
def db(tmp_path: Path) -> SqliteDatabase:
    database = SqliteDatabase(tmp_path / "jobs.db")
    yield database
    database.close()


def test_backends_satisfy_the_engine_protocols(db: SqliteDatabase, tmp_path: Path) -> None:
    assert isinstance(SqliteJobStore(db), JobStore)
    assert isinstance(LocalJobQueue(db), JobQueue)
    assert isinstance(LocalOutputStore(tmp_path), OutputStore)
    assert isinstance(PrometheusMetrics(), Metrics)


def test_job_store_create_once_transition_conditionally_and_persist(tmp_path: Path) -> None:
    db = SqliteDatabase(tmp_path / "jobs.db")
    store = SqliteJobStore(db)
    job = JobRecord(id="a", workflow={"3": {"class_type": "X", "inputs": {}}}, priority=5, number=1)
    assert store.create(job) is True
    assert store.create(JobRecord(id="a", workflow={}, number=2)) is False
    assert store.get("a").workflow == job.workflow and store.get("a").number == 1
    assert store.transition("a", {JobStatus.RUNNING}, JobStatus.SUCCEEDED) is False
    assert store.transition("a", {JobStatus.QUEUED}, JobStatus.RUNNING, attempts=1, progress={"value": 2}) is True
    store.update("a", node_timings={"3": 0.5})
    with pytest.raises(ValueError, match="unknown JobRecord field"):
        store.update("a", colour="red")
    with pytest.raises(ValueError, match="transition"):
        store.update("a", status=JobStatus.FAILED)
    time.sleep(0.01)
    store.create(JobRecord(id="b", workflow={}, number=2))
    assert [j.id for j in store.list()] == ["b", "a"]
    assert [j.id for j in store.list(status={JobStatus.RUNNING})] == ["a"]
    db.close()

    reopened = SqliteJobStore(SqliteDatabase(tmp_path / "jobs.db"))
    again = reopened.get("a")
    assert again.status is JobStatus.RUNNING and again.attempts == 1 and again.node_timings == {"3": 0.5}
    assert again.progress == {"value": 2}
    reopened.delete("a")
    assert reopened.get("a") is None


def test_concurrent_transitions_have_one_winner(db: SqliteDatabase) -> None:
    store = SqliteJobStore(db)
    store.create(JobRecord(id="race", workflow={}))
    wins: list[bool] = []
    barrier = threading.Barrier(8)

    def claim() -> None:
        barrier.wait()
        wins.append(store.transition("race", {JobStatus.QUEUED}, JobStatus.RUNNING))

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(wins) == [False] * 7 + [True]


def test_history_is_pruned_to_its_bound(db: SqliteDatabase) -> None:
    store = SqliteJobStore(db, history_max_items=3)
    for i in range(6):
        store.create(JobRecord(id=f"j{i}", workflow={}, created_at=1000.0 + i))
        store.transition(f"j{i}", {JobStatus.QUEUED}, JobStatus.SUCCEEDED)
    store._terminal_writes = 0  # the next terminal write prunes
    store.create(JobRecord(id="last", workflow={}, created_at=2000.0))
    store.transition("last", {JobStatus.QUEUED}, JobStatus.FAILED)
    assert [j.id for j in store.list()] == ["last", "j5", "j4"]


def test_queue_priority_fifo_nack_delay_and_remove(db: SqliteDatabase) -> None:
    queue = LocalJobQueue(db)
    for job_id, priority in [("a", 1), ("b", 5), ("c", 10), ("d", 5), ("e", 1)]:
        queue.put(job_id, priority)
    queue.put("b", 5)  # again: no duplicate, keeps its place
    assert queue.depth() == 5
    assert queue.remove("e") is True and queue.remove("e") is False
    first = queue.get(0.1)
    assert first.job_id == "c" and first.receive_count == 1
    assert queue.depth() == 3  # a received item is invisible
    queue.nack(first, delay=0.3)
    assert [queue.get(0.1).job_id for _ in range(3)] == ["b", "d", "a"]
    assert queue.get(0.05) is None  # c is delayed
    started = time.monotonic()
    again = queue.get(2.0)
    assert again.job_id == "c" and again.receive_count == 2 and time.monotonic() - started >= 0.15
    queue.ack(again)
    assert queue.remove("c") is False


def test_queue_get_wakes_on_put_and_on_wake(db: SqliteDatabase) -> None:
    queue = LocalJobQueue(db)
    results: list[object] = []
    waiter = threading.Thread(target=lambda: results.append(queue.get(5.0)))
    waiter.start()
    time.sleep(0.05)
    queue.put("x", 1)
    waiter.join(2)
    assert results[0].job_id == "x"
    waiter = threading.Thread(target=lambda: results.append(queue.get(5.0)))
    started = time.monotonic()
    waiter.start()
    time.sleep(0.05)
    queue.wake()
    waiter.join(2)
    assert results[1] is None and time.monotonic() - started < 1.0


def test_queue_items_received_by_a_dead_process_come_back(tmp_path: Path) -> None:
    db = SqliteDatabase(tmp_path / "q.db")
    queue = LocalJobQueue(db)
    queue.put("in-flight", 3)
    assert queue.get(0.1).job_id == "in-flight" and queue.depth() == 0
    db.close()
    reopened = LocalJobQueue(SqliteDatabase(tmp_path / "q.db"))
    assert reopened.depth() == 1 and reopened.get(0.1).job_id == "in-flight"


def test_queue_depth_in_memory_matches_the_table(db: SqliteDatabase) -> None:
    queue = LocalJobQueue(db)

    def table_depth() -> int:
        return db.query("SELECT COUNT(*) AS n FROM queue_items WHERE receipt IS NULL")[0]["n"]

    for job_id in ("a", "b", "c", "a"):  # the second "a" is no duplicate
        queue.put(job_id, 1)
    first = queue.get(0.1)
    assert queue.depth() == table_depth() == 2
    queue.nack(first, delay=60)  # waiting again (delayed ones count)
    queue.nack(first)  # a stale receipt changes nothing
    assert queue.depth() == table_depth() == 3
    assert queue.remove("b") and not queue.remove("b")
    second = queue.get(0.1)
    queue.ack(second)
    assert queue.depth() == table_depth() == 1
    assert LocalJobQueue(db).depth() == 1  # counted from the table on open


def test_create_and_put_is_one_transaction(db: SqliteDatabase, tmp_path: Path) -> None:
    store, queue = SqliteJobStore(db), LocalJobQueue(db)
    job = JobRecord(id="j", workflow={"1": {"class_type": "X", "inputs": {}}}, priority=4, number=1)
    assert queue.create_and_put(store, job) is True
    stored = store.get("j")
    assert stored is not None and stored.enqueued_at is not None and queue.depth() == 1
    assert queue.get(0.1).job_id == "j"
    # The same id again: nothing written, no second queue item.
    assert queue.create_and_put(store, JobRecord(id="j", workflow={}, number=2)) is False
    assert store.get("j").number == 1 and queue.depth() == 0
    # A store in another database: the caller does the steps itself.
    other = SqliteJobStore(SqliteDatabase(tmp_path / "other.db"))
    assert queue.create_and_put(other, JobRecord(id="k", workflow={})) is None and other.get("k") is None


def test_each_thread_reads_committed_writes_on_its_own_connection(db: SqliteDatabase) -> None:
    store = SqliteJobStore(db)
    seen: list[bool] = []
    lock = threading.Lock()

    def writer_then_reader(index: int) -> None:
        store.create(JobRecord(id=f"t{index}", workflow={}, number=index))
        found = all(store.get(f"t{i}") is not None for i in range(index + 1))
        with lock:
            seen.append(found)

    for index in range(8):  # one after another: each thread must see every earlier commit
        thread = threading.Thread(target=writer_then_reader, args=(index,))
        thread.start()
        thread.join()
    assert seen == [True] * 8 and store.count({JobStatus.QUEUED}) == 8


def test_local_output_store(tmp_path: Path) -> None:
    store = LocalOutputStore(tmp_path / "out")
    stored = store.put("job", "sub/img.png", b"png-bytes")
    assert stored.key == "sub/img.png" and stored.size == 9
    assert stored.url == "/view?filename=img.png&subfolder=sub&type=output"
    assert store.get("sub/img.png") == b"png-bytes"
    before = (tmp_path / "out/sub/img.png").stat().st_mtime_ns
    store.put("job", "sub/img.png", b"png-bytes")  # already there, same bytes: not rewritten
    assert (tmp_path / "out/sub/img.png").stat().st_mtime_ns == before
    with pytest.raises(UnsafePathError):
        store.put("job", "../escape.png", b"x")
    assert not (tmp_path / "escape.png").exists()


def test_prometheus_text() -> None:
    assert metric_name("JobDuration", "Seconds") == "comfyd_job_duration_seconds"
    assert metric_name("QueueDepth") == "comfyd_queue_depth"
    metrics = PrometheusMetrics()
    metrics.increment("JobsCompleted", status="succeeded")
    metrics.increment("JobsCompleted", 2, status="failed")
    metrics.gauge("QueueDepth", 4)
    metrics.observe("JobDuration", 0.3, "Seconds", status="succeeded")
    metrics.observe("JobDuration", 7.0, "Seconds", status="succeeded")
    text = metrics.render()
    assert '# TYPE comfyd_jobs_completed_total counter' in text
    assert 'comfyd_jobs_completed_total{status="failed"} 2' in text
    assert "comfyd_queue_depth 4" in text
    assert 'comfyd_job_duration_seconds_bucket{status="succeeded",le="0.5"} 1' in text
    assert 'comfyd_job_duration_seconds_bucket{status="succeeded",le="10"} 2' in text
    assert 'comfyd_job_duration_seconds_bucket{status="succeeded",le="+Inf"} 2' in text
    assert 'comfyd_job_duration_seconds_sum{status="succeeded"} 7.3' in text
    assert 'comfyd_job_duration_seconds_count{status="succeeded"} 2' in text
