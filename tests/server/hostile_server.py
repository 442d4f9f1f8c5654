"""`python tests/server/hostile_server.py PORT`: fake_server.py plus nodes that crash the process.

- TestLoadWait: inside a model-loading section, writes `COMFYD_TEST_DIR/loading` (holding this
  process id) and waits until the file `release` exists (a job sharing a model load).
- TestCrash: waits until `loading` names this process, then kills it with SIGKILL (the culprit).
- TestSaveCrash: saves an image the way SaveImage does, then, the first time only (marker file
  `crashed-once`), kills the process before the job's success can be recorded.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import uvicorn  # noqa: E402
from conftest import Recorder, fake_runtime  # noqa: E402

from comfyd.engine.context import NodeContext  # noqa: E402
from comfyd.engine.schema import Link, Node, NodeOutput, NodeSchema, OutputSpec, String  # noqa: E402
from comfyd.runtime import build_services  # noqa: E402
from comfyd.server import create_app  # noqa: E402
from comfyd.settings import Settings  # noqa: E402

SHARED = Path(os.environ.get("COMFYD_TEST_DIR", "."))


def _wait_for(predicate, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("test condition never came")
        time.sleep(0.01)


def add_nodes(registry) -> None:  # type: ignore[no-untyped-def]
    @registry.register
    class TestLoadWait(Node):
        schema = NodeSchema(class_type="TestLoadWait", inputs=(String("tag", ""),), outputs=(OutputSpec("INT"),))

        def run(self, ctx: NodeContext, tag: str) -> tuple[int]:
            with ctx.loading():
                (SHARED / "loading").write_text(str(os.getpid()))
                _wait_for(lambda: (SHARED / "release").exists())
            return (1,)

    @registry.register
    class TestCrash(Node):
        schema = NodeSchema(class_type="TestCrash", inputs=(String("tag", ""),), outputs=(OutputSpec("INT"),))

        def run(self, ctx: NodeContext, tag: str) -> tuple[int]:
            marker = SHARED / "loading"
            _wait_for(lambda: marker.exists() and marker.read_text() == str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
            return (0,)

    @registry.register
    class TestSaveCrash(Node):
        schema = NodeSchema(class_type="TestSaveCrash", inputs=(Link("value", "INT"), String("filename_prefix", "x")),
                            outputs=(), output_node=True)

        def run(self, ctx: NodeContext, value: int, filename_prefix: str) -> NodeOutput:
            import torch  # here, not at import: the other tests' processes start faster without it

            from comfyd.nodes.image.save_load import SAVE_COMPRESS_LEVEL, save_images

            images = torch.full((2, 8, 8, 3), 0.5)
            results = save_images(images, ctx.env.output_dir, filename_prefix, "output", SAVE_COMPRESS_LEVEL,
                                  ctx.prompt, None, owner=(ctx.job_id, ctx.node_id))
            marker = SHARED / "crashed-once"
            if not marker.exists():
                marker.write_text("1")
                os.kill(os.getpid(), signal.SIGKILL)
            return NodeOutput(values=(), ui={"images": results})


def main() -> None:
    port = int(sys.argv[1])
    settings = Settings(host="127.0.0.1", port=port)
    recorder = Recorder()

    def runtime():  # type: ignore[no-untyped-def]
        built = fake_runtime(settings, recorder)
        add_nodes(built.registry)
        return built

    services = dataclasses.replace(build_services(settings), executor_factory=runtime)
    uvicorn.run(create_app(settings, services), host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    main()
