"""`python tests/aws/split_api.py`: `comfyd serve` (settings from COMFYD_* variables) that also
knows the test node TestSegfault, for tests/aws/test_e2e_split.py."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import split_nodes  # noqa: E402

from comfyd.server import serve  # noqa: E402
from comfyd.settings import Settings  # noqa: E402

if __name__ == "__main__":
    import comfyd.nodes  # noqa: F401  (the real nodes first, then the test node beside them)

    split_nodes.register()
    serve(Settings())
