"""`comfyd` command line: run | serve | worker | submit | models | aws.

Each subcommand parses its flags into Settings overrides and calls one function of the package;
the heavy modules (torch, diffusers) load only inside the commands that execute workflows.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from comfyd.settings import Settings

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INVALID = 2
EXIT_INTERRUPTED = 130


def _settings(args: argparse.Namespace, **extra: Any) -> Settings:
    """Settings from env/config, overridden by the flags the user gave."""
    overrides: dict[str, Any] = {}
    for flag, field in (
        ("models_dir", "models_dir"),
        ("input_dir", "input_dir"),
        ("output", "output_dir"),
        ("output_dir", "output_dir"),
        ("host", "host"),
        ("port", "port"),
        ("device", "device"),
    ):
        value = getattr(args, flag, None)
        if value is not None:
            overrides[field] = value
    overrides.update(extra)
    return Settings(**overrides)


def _read_workflow(path: str | None) -> dict[str, Any] | None:
    from comfyd.engine.graph import read_workflow_file

    if path is None:
        return None
    try:
        return read_workflow_file("/dev/stdin" if path == "-" else path)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_INVALID) from exc


# --- run ---------------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    from comfyd.engine.errors import WorkflowParseError, WorkflowValidationError
    from comfyd.runner import LocalRunner, apply_sets, default_workflow

    settings = _settings(args)
    workflow = _read_workflow(args.workflow)
    if workflow is None:
        workflow = default_workflow()
    try:
        apply_sets(workflow, args.set or [])
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID

    runner = LocalRunner(settings)
    notice = runner.ensure_default_checkpoint(workflow)
    if notice:
        print(f"note: {notice}", file=sys.stderr)

    progress = _ProgressBar(enabled=not args.quiet)
    try:
        result = runner.run(
            workflow,
            node_id=args.node_id,
            execution_mode=args.mode,
            listener=progress.on_event,
        )
    except (WorkflowParseError, WorkflowValidationError) as exc:
        body = exc.body() if isinstance(exc, WorkflowParseError) else exc.body
        print("error: the workflow is invalid:", file=sys.stderr)
        print(json.dumps(body, indent=2), file=sys.stderr)
        return EXIT_INVALID
    finally:
        progress.close()

    class_types = _class_types(workflow)
    if args.json:
        print(json.dumps({
            "job_id": result.job_id, "status": result.status, "seconds": round(result.seconds, 4),
            "images": [str(p) for p in result.paths], "node_timings": result.node_timings,
            "cached": result.cached, "error": result.error,
        }, indent=2))
    else:
        _print_timings(result.node_timings, result.cached, class_types)
        for path in result.paths:
            print(f"wrote {path}")
    if result.status == "interrupted":
        return EXIT_INTERRUPTED
    if not result.ok:
        error = result.error or {}
        print(f"error: node {error.get('node_id')} ({error.get('node_type')}): {error.get('exception_type', '')}: "
              f"{error.get('exception_message', error.get('message', ''))}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _class_types(workflow: dict[str, Any]) -> dict[str, str]:
    from comfyd.runner import workflow_nodes

    return {nid: node.get("class_type", "?") for nid, node in workflow_nodes(workflow).items() if isinstance(node, dict)}


def _print_timings(timings: dict[str, float], cached: list[str], class_types: dict[str, str]) -> None:
    rows = [(nid, class_types.get(nid, "?"), f"{secs:8.3f}", "") for nid, secs in timings.items()]
    rows += [(nid, class_types.get(nid, "?"), "       -", "cached") for nid in cached if nid not in timings]
    if not rows:
        return
    width = max(len(r[1]) for r in rows)
    print(f"{'node':>5}  {'class_type':<{width}}  {'seconds':>8}")
    for nid, cls, secs, note in rows:
        print(f"{nid:>5}  {cls:<{width}}  {secs}  {note}".rstrip())
    print(f"{'':>5}  {'total':<{width}}  {sum(timings.values()):8.3f}")


class _ProgressBar:
    """A tqdm bar fed by the executor's progress events (sampler steps)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._bar: Any = None
        self._node: str | None = None

    def on_event(self, event: str, data: dict[str, Any]) -> None:
        if not self.enabled or event != "progress":
            return
        from tqdm import tqdm

        if self._bar is None or self._node != data.get("node") or data["value"] < self._bar.n:
            self.close()
            self._node = data.get("node")
            self._bar = tqdm(total=data["max"], desc=f"node {self._node}", unit="step", file=sys.stderr)
        self._bar.update(data["value"] - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


# --- serve / worker / submit --------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    from comfyd.server import serve

    serve(_settings(args))
    return EXIT_OK


def cmd_worker(args: argparse.Namespace) -> int:
    from comfyd.backends.aws.session import AwsConfigError, InvalidRegion
    from comfyd.worker import run_worker

    try:
        run_worker(_settings(args), visibility_s=args.visibility_timeout, poll_s=args.poll, max_jobs=args.max_jobs)
    except (InvalidRegion, AwsConfigError) as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def cmd_submit(args: argparse.Namespace) -> int:
    from comfyd.client import submit_cli

    return submit_cli(args)


# --- models / aws -------------------------------------------------------------------------
def cmd_models_make_tiny(args: argparse.Namespace) -> int:
    from comfyd.models.tiny import make_tiny

    written = make_tiny(Path(args.dir))
    for path in written if isinstance(written, list | tuple) else [written]:
        print(f"wrote {path}")
    print("These are random weights: images from them are noise. They exist for tests and the demo.")
    return EXIT_OK


def cmd_models_list(args: argparse.Namespace) -> int:
    from comfyd.models.manager import ModelManager

    manager = ModelManager(_settings(args))
    for folder in ("checkpoints", "vae", "loras", "embeddings", "clip", "unet", "upscale_models"):
        for name in manager.list_files(folder):
            print(f"{folder}/{name}")
    return EXIT_OK


def cmd_aws_init(args: argparse.Namespace) -> int:
    from comfyd.backends.aws.init import aws_init
    from comfyd.backends.aws.session import AwsConfigError, InvalidRegion

    try:
        created = aws_init(_settings(args))
    except (InvalidRegion, AwsConfigError) as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(json.dumps(created, indent=2, default=str))
    return EXIT_OK


def cmd_aws_local(args: argparse.Namespace) -> int:
    from comfyd.backends.aws.local_endpoint import LocalAwsEndpoint

    # moto in-process, with DynamoDB's atomic conditional writes restored (see local_endpoint.py).
    server = LocalAwsEndpoint(host=args.host, port=args.port).start()
    print(f"moto server on {server.url}; export AWS_ENDPOINT_URL={server.url} "
          "AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1")
    try:
        import threading

        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="comfyd", description="Run ComfyUI workflows as a service.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run one workflow in this process")
    run.add_argument("workflow", nargs="?", help="API-format or graph-form JSON (default: ComfyUI's default graph)")
    run.add_argument("--set", action="append", metavar="NODE.INPUT=VALUE", help='override an input, e.g. 6.text="a red fox"')
    run.add_argument("--models-dir", help="ComfyUI-layout models folder (also COMFYD_MODELS_DIR)")
    run.add_argument("--input-dir", help="where LoadImage finds its files")
    run.add_argument("--output", help="output folder")
    run.add_argument("--node-id", help="node whose progress is followed (default: the workflow's, or 3)")
    run.add_argument("--mode", choices=["sequential", "parallel"], help="execution mode")
    run.add_argument("--device", help="auto | cpu | cuda | cuda:N | mps")
    run.add_argument("--json", action="store_true", help="print the result as JSON")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    run.set_defaults(func=cmd_run)

    serve = sub.add_parser("serve", help="HTTP server: ComfyUI API, predictions, websocket")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--models-dir")
    serve.add_argument("--output-dir")
    serve.add_argument("--input-dir")
    serve.add_argument("--device")
    serve.set_defaults(func=cmd_serve)

    worker = sub.add_parser("worker", help="consume the shared job queue (SQS) and run jobs")
    worker.add_argument("--models-dir")
    worker.add_argument("--output-dir")
    worker.add_argument("--input-dir")
    worker.add_argument("--device")
    worker.add_argument("--visibility-timeout", type=int, default=60, help="SQS visibility timeout per job lease (s)")
    worker.add_argument("--poll", type=int, default=20, help="SQS long-poll wait (s)")
    worker.add_argument("--max-jobs", type=int, default=None, help="exit after this many jobs")
    worker.set_defaults(func=cmd_worker)

    submit = sub.add_parser("submit", help="submit a workflow to a comfyd server and wait")
    submit.add_argument("workflow")
    submit.add_argument("--server", default="http://127.0.0.1:8188")
    submit.add_argument("--api-key")
    submit.add_argument("--set", action="append", metavar="NODE.INPUT=VALUE")
    submit.add_argument("--output", help="download the images here")
    submit.set_defaults(func=cmd_submit)

    models = sub.add_parser("models", help="model files").add_subparsers(dest="models_command", required=True)
    tiny = models.add_parser("make-tiny", help="write tiny random-weight SD1 checkpoints (tests, demo)")
    tiny.add_argument("dir", help="models folder (checkpoints/ is created inside)")
    tiny.set_defaults(func=cmd_models_make_tiny)
    listing = models.add_parser("list", help="list model files")
    listing.add_argument("--models-dir")
    listing.set_defaults(func=cmd_models_list)

    aws = sub.add_parser("aws", help="AWS resources").add_subparsers(dest="aws_command", required=True)
    init = aws.add_parser("init", help="create the bucket, table, queues and topic the settings name")
    init.set_defaults(func=cmd_aws_init)
    local = aws.add_parser("local", help="start a local AWS endpoint (moto server) for development")
    local.add_argument("--host", default="127.0.0.1")
    local.add_argument("--port", type=int, default=5000)
    local.set_defaults(func=cmd_aws_local)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # Custom nodes are code: which packs loaded (and which did not) is always shown.
    logging.getLogger("comfyd.custom_nodes").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
