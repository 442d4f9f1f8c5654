"""The output-name ledger: reservations per (job, node, index), kept small."""

from __future__ import annotations

import json
import time
from pathlib import Path

from comfyd.nodes.image import output_names
from comfyd.nodes.image.output_names import LEDGER_NAME, RERUN_WINDOW_S, owner_key, reserve_name


def test_a_reservation_is_reused_and_counts_as_taken_before_its_file_exists(tmp_path: Path) -> None:
    first = reserve_name(tmp_path, "img", owner_key("job-1", "9", 0), 1)
    assert first == "img_00001_.png" and not (tmp_path / first).exists()
    assert reserve_name(tmp_path, "img", owner_key("job-2", "9", 0), 1) == "img_00002_.png"
    assert reserve_name(tmp_path, "img", owner_key("job-1", "9", 0), 1) == first


def test_old_entries_with_files_are_pruned_pending_ones_kept(tmp_path: Path) -> None:
    old = time.time() - RERUN_WINDOW_S - 10
    (tmp_path / "img_00001_.png").write_bytes(b"png")
    ledger = {"img_00001_.png": {"owner": "old/9/0", "at": old}, "img_00002_.png": {"owner": "pending/9/0", "at": old},
              "img_00003_.png": {"owner": "gone/9/0", "at": old - output_names.LEDGER_TTL_S}}
    (tmp_path / LEDGER_NAME).write_text(json.dumps(ledger))
    name = reserve_name(tmp_path, "img", owner_key("new", "9", 0), 1)
    kept = json.loads((tmp_path / LEDGER_NAME).read_text())
    assert set(kept) == {"img_00002_.png", name}
    assert name == "img_00003_.png"  # 1 has a file, 2 is reserved; 3's reservation expired
