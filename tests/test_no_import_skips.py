"""A broken comfyd module must fail the suite, not turn tests into skips."""

from __future__ import annotations

import re
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def test_no_test_skips_when_a_comfyd_module_fails_to_import() -> None:
    offenders = []
    pattern = re.compile(r"importorskip\(\s*[\"']comfyd|importorskip\(\s*module\b")
    for path in TESTS.rglob("*.py"):
        if path.name == Path(__file__).name:
            continue
        text = path.read_text()
        if pattern.search(text):
            offenders.append(str(path.relative_to(TESTS)))
        # `except ImportError/ModuleNotFoundError: ... skip` around an import of comfyd.
        for match in re.finditer(r"import comfyd[^\n]*\n(?:[^\n]*\n){0,6}?\s*except (?:ImportError|ModuleNotFoundError)[^\n]*\n(?:[^\n]*\n){0,3}?[^\n]*skip", text):
            offenders.append(f"{path.relative_to(TESTS)}: {match.group(0)[:60]!r}")
    assert offenders == []
