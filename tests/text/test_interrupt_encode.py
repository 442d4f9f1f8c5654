"""An interrupt takes effect inside text encoding (between encoder layers), and the check
changes nothing when no interrupt comes (hostile-input issue, item 7)."""

from __future__ import annotations

import pytest
import torch

from comfyd.engine.errors import ExecutionInterrupted
from comfyd.models.interrupts import interruptible
from comfyd.models.text_encoding import encode_text


def test_encoding_stops_between_layers_when_interrupted(sd1_clip) -> None:
    calls = []

    def check() -> None:
        calls.append(1)
        if len(calls) == 2:  # the second layer: mid-encoding, not before or after it
            raise ExecutionInterrupted("interrupted")

    with pytest.raises(ExecutionInterrupted), interruptible(check):
        encode_text(sd1_clip, "a long prompt " * 50)
    assert len(calls) == 2


def test_checks_do_not_change_the_result(sd1_clip) -> None:
    plain = encode_text(sd1_clip, "a red fox (in snow:1.2)")
    with interruptible(lambda: None):
        checked = encode_text(sd1_clip, "a red fox (in snow:1.2)")
    assert torch.equal(plain[0][0], checked[0][0])
    assert torch.equal(plain[0][1]["pooled_output"], checked[0][1]["pooled_output"])


def test_another_threads_interrupt_is_not_seen(sd1_clip) -> None:
    import threading

    def refuse() -> None:
        raise ExecutionInterrupted("other job")

    errors: list[BaseException] = []
    with interruptible(refuse):  # this thread's job is interrupted...
        def other() -> None:
            try:
                encode_text(sd1_clip, "fine")  # ...the other thread's is not
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
    assert errors == []
