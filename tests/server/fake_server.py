"""`python tests/server/fake_server.py PORT`: a real comfyd server process on the fake nodes.

Settings come from COMFYD_* environment variables. The kill -9 recovery test starts it, kills
it mid-job and starts it again on the same database.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import uvicorn  # noqa: E402
from conftest import Recorder, fake_runtime  # noqa: E402

from comfyd.runtime import build_services  # noqa: E402
from comfyd.server import create_app  # noqa: E402
from comfyd.settings import Settings  # noqa: E402


def main() -> None:
    port = int(sys.argv[1])
    settings = Settings(host="127.0.0.1", port=port)
    recorder = Recorder()
    services = dataclasses.replace(build_services(settings), executor_factory=lambda: fake_runtime(settings, recorder))
    uvicorn.run(create_app(settings, services), host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    main()
