"""`python tests/server/fake_server.py PORT`: a real comfyd server process on the fake nodes.

Settings come from COMFYD_* environment variables. The kill -9 recovery test starts it, kills
it mid-job and starts it again on the same database; the drain test stops it with SIGTERM.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from conftest import Recorder, fake_runtime  # noqa: E402

from comfyd.runtime import build_services  # noqa: E402
from comfyd.server import serve  # noqa: E402
from comfyd.settings import Settings  # noqa: E402


def main() -> None:
    port = int(sys.argv[1])
    settings = Settings(host="127.0.0.1", port=port)
    recorder = Recorder()
    services = dataclasses.replace(build_services(settings), executor_factory=lambda: fake_runtime(settings, recorder))
    serve(settings, services)  # as `comfyd serve` does: SIGTERM drains, then exit 0


if __name__ == "__main__":
    main()
