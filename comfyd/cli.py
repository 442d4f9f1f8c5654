"""`comfyd` command line: run | serve | worker | submit | models | aws.

Each subcommand parses its flags into Settings overrides and calls one function of the package;
the heavy modules (torch, diffusers) load only inside the commands that execute workflows.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
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
        ("output_dir", "output_dir"),
        ("host", "host"),
        ("port", "port"),
        ("device", "device"),
    ):
        value = getattr(args, flag, None)
        if value is not None:
            overrides[field] = value
    overrides.update(extra)
    from pydantic import ValidationError

    try:
        return Settings(**overrides)
    except ValidationError as exc:  # a bad COMFYD_* value: say which, without a traceback
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise SystemExit(f"error: invalid settings: {problems}") from None


def _read_workflow(path: str | None) -> dict[str, Any] | None:
    """JSON in any accepted form, or the workflow a PNG/WEBP carries (UI chunks converted later)."""
    from comfyd.cli_check import read_workflow_arg

    if path is None:
        return None
    return read_workflow_arg(path)[0]


# --- run ---------------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    from comfyd.engine.errors import WorkflowParseError, WorkflowValidationError
    from comfyd.runner import CheckpointChoiceError, LocalRunner, apply_sets, default_workflow

    settings = _settings(args)
    if args.dry_run:
        from comfyd.cli_check import cmd_check

        if args.workflow is None:
            print("error: --dry-run needs a workflow file", file=sys.stderr)
            return EXIT_INVALID
        return cmd_check(args, settings)
    workflow = _read_workflow(args.workflow)
    if workflow is None:
        workflow = default_workflow()
    try:
        import comfyd.nodes  # noqa: F401  (node schemas give a UI workflow's widget layout)
        from comfyd.workflow_formats import ensure_api_format

        source = workflow
        workflow = apply_sets(ensure_api_format(workflow), args.set or [])
        # A UI graph goes into the PNGs as ComfyUI's frontend has it do (the `workflow` chunk).
        ui_graph = source if source is not workflow and isinstance(source.get("nodes"), list) else None
    except WorkflowParseError as exc:
        print("error: the workflow is invalid:", file=sys.stderr)
        print(json.dumps(exc.body(), indent=2), file=sys.stderr)
        return EXIT_INVALID
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID

    runner = LocalRunner(settings)
    try:
        notice = runner.resolve_checkpoint(workflow, ckpt=args.ckpt)
    except CheckpointChoiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    if notice:
        print(f"note: {notice}", file=sys.stderr)

    progress = _ProgressBar(enabled=not args.quiet)
    progress.set_class_types(_class_types(workflow))
    interrupt = threading.Event()
    try:
        with _interrupt_on_sigint(interrupt, progress):
            result = runner.run(
                workflow,
                node_id=args.node_id,
                execution_mode=args.mode,
                listener=progress.on_event,
                interrupt=interrupt,
                extra_data={"extra_pnginfo": {"workflow": ui_graph}} if ui_graph is not None else None,
            )
    except (WorkflowParseError, WorkflowValidationError) as exc:
        body = exc.body() if isinstance(exc, WorkflowParseError) else exc.body
        if args.json:
            print(json.dumps(body, indent=2))
        else:
            print_invalid(body)
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
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    if not result.ok:
        print(f"error: {runtime_error_line(result.error or {})}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


@contextmanager
def _interrupt_on_sigint(interrupt: threading.Event, progress: _ProgressBar) -> Iterator[None]:
    """First Ctrl-C: set the run's interrupt flag, so the running node stops at its next step
    (in both execution modes: in parallel mode the node runs on a pool thread, where a
    KeyboardInterrupt raised in the main thread would never reach it). Second Ctrl-C: leave at
    once. `os._exit` skips the interpreter's shutdown, which would otherwise wait for (or abort
    under) the native threads torch is still running."""

    def on_sigint(signum: int, frame: Any) -> None:
        if interrupt.is_set():
            sys.stderr.write("\ninterrupted again: exiting now\n")
            sys.stderr.flush()
            os._exit(EXIT_INTERRUPTED)
        interrupt.set()
        progress.close()
        sys.stderr.write("\ninterrupting at the next step (Ctrl-C again to quit at once)\n")
        sys.stderr.flush()

    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be installed from the main thread
        return
    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def print_invalid(body: dict[str, Any]) -> None:
    """A /prompt error body as one line per problem (`--json` prints the body itself)."""
    from comfyd.engine.errors import validation_problems

    problems = validation_problems(body)
    print(f"error: the workflow is invalid ({len(problems)} problem{'s' if len(problems) != 1 else ''}):",
          file=sys.stderr)
    for line in problems:
        print(f"  {line}", file=sys.stderr)
    details = (body.get("error") or {}).get("details")
    if not body.get("node_errors") and isinstance(details, str) and details and details not in problems[0]:
        print(f"  ({details})", file=sys.stderr)
    print("  (--json prints the full error body)", file=sys.stderr)


def runtime_error_line(error: dict[str, Any]) -> str:
    """`node 3 (KSampler): RuntimeError: ...` from an execution error dict ({type, message, ...})."""
    where = f"node {error.get('node_id')} ({error.get('node_type')})" if error.get("node_id") else "the run"
    kind = str(error.get("type") or "").rsplit(".", 1)[-1]
    message = str(error.get("message") or "")
    return f"{where}: {kind}: {message}" if kind else f"{where}: {message}"


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
    """Sampler progress from the executor's events: a tqdm bar on a terminal, plain lines
    (first step, every tenth, last) when stderr is a pipe or a log file.

    The bar closes at its node's last step, or when another node starts, so what follows (VAE
    decode, saving) is not shown under a finished bar.
    """

    def __init__(self, enabled: bool, interactive: bool | None = None) -> None:
        self.enabled = enabled
        self.interactive = sys.stderr.isatty() if interactive is None else interactive
        self._bar: Any = None
        self._node: str | None = None
        self._class_types: dict[str, str] = {}

    def set_class_types(self, class_types: dict[str, str]) -> None:
        self._class_types = class_types

    def on_event(self, event: str, data: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if event == "executing":
            if data.get("node") != self._node:
                self.close()
            return
        if event != "progress":
            return
        node, value, total = data.get("node"), int(data["value"]), int(data["max"])
        label = f"node {node} {self._class_types.get(str(node), '')}".rstrip()
        if not self.interactive:
            self._node = node
            if value in (1, total) or (total >= 10 and value % max(1, total // 10) == 0):
                sys.stderr.write(f"{label}: step {value}/{total}\n")
                sys.stderr.flush()
            return
        from tqdm import tqdm

        if self._bar is None or self._node != node or value < self._bar.n:
            self.close()
            self._node = node
            self._bar = tqdm(total=total, desc=label, unit="step", file=sys.stderr)
        self._bar.update(value - self._bar.n)
        if value >= total:
            self.close()

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
    from comfyd.worker import run_until_signalled

    # SIGTERM drains (the running job finishes within COMFYD_SHUTDOWN_GRACE_S or is handed
    # back), then exit 0; a start-up error is one line and exit 1.
    return run_until_signalled(_settings(args), visibility_s=args.visibility_timeout, poll_s=args.poll,
                               max_jobs=args.max_jobs)


def cmd_submit(args: argparse.Namespace) -> int:
    from comfyd.client import submit_cli

    return submit_cli(args)


# --- models / aws -------------------------------------------------------------------------
def cmd_models_make_tiny(args: argparse.Namespace) -> int:
    from comfyd.models.tiny import make_tiny
    from comfyd.models.tiny_control import make_tiny_controlnet

    try:
        written = make_tiny(Path(args.dir), family=args.family)
    except ValueError as exc:  # an unknown family: the message lists the registered ones
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    from comfyd.models import families

    family = families.get(args.family)
    own_files = type(family).make_tiny_files is not families.Family.make_tiny_files  # AuraFlow: no UNet
    if all(Path(p).parent.name == "checkpoints" for p in written) and not own_files:
        # A UNet family's ControlNet; split-file families (Flux, Wan, SD3) have none here.
        written = [*written, make_tiny_controlnet(Path(args.dir), args.family)]
    for path in written if isinstance(written, list | tuple) else [written]:
        print(f"wrote {path}")
    print("These are random weights: images from them are noise. They exist for tests and the demo.")
    return EXIT_OK


def cmd_models_list(args: argparse.Namespace) -> int:
    from comfyd.models.manager import ModelManager

    manager = ModelManager(_settings(args))
    for folder in ("checkpoints", "vae", "loras", "embeddings", "clip", "unet", "upscale_models", "controlnet",
                   "clip_vision", "style_models"):
        for name in manager.list_files(folder):
            print(f"{folder}/{name}")
    return EXIT_OK


def cmd_models_publish(args: argparse.Namespace) -> int:
    """Publish this host's models to the shared catalog (needs COMFYD_STORAGE=s3)."""
    from comfyd.backends.aws import AwsConfigError, InvalidRegion, build_model_catalog, session_for
    from comfyd.catalog_publish import publish_models

    settings = _settings(args)
    try:
        session_for(settings).verify()
        count = publish_models(settings, build_model_catalog(settings), host=args.manifest_name)
    except (InvalidRegion, AwsConfigError) as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"published {count} model(s)")
    return EXIT_OK


def cmd_models_sync(args: argparse.Namespace) -> int:
    """Fill the models folder from an S3 prefix, checksum-verified."""
    from comfyd.backends.aws import AwsConfigError, InvalidRegion, session_for
    from comfyd.backends.aws.model_catalog import sync_models

    settings = _settings(args)
    try:
        aws = session_for(settings)
        aws.verify_credentials()
        report = sync_models(aws, args.source, Path(settings.models_dir))
    except (InvalidRegion, AwsConfigError, ValueError) as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(json.dumps(report, indent=2))
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


_HELP_MODELS = "ComfyUI-layout models folder (checkpoints/, loras/, vae/, ...; also COMFYD_MODELS_DIR)"
_HELP_INPUT = "folder LoadImage reads and uploads go to (also COMFYD_INPUT_DIR)"
_HELP_OUTPUT = "folder SaveImage writes to (also COMFYD_OUTPUT_DIR)"
_HELP_DEVICE = "auto | cpu | cuda | cuda:N | mps (also COMFYD_DEVICE)"


def _add_folders(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models-dir", help=_HELP_MODELS)
    parser.add_argument("--input-dir", help=_HELP_INPUT)
    # One name for the output folder everywhere; `--output` still works (it was run's name).
    parser.add_argument("--output-dir", "--output", dest="output_dir", help=_HELP_OUTPUT)
    parser.add_argument("--device", help=_HELP_DEVICE)


def build_parser() -> argparse.ArgumentParser:
    from comfyd import __version__
    from comfyd.cli_check import add_check_arguments, add_check_parser, add_pull_parser

    parser = argparse.ArgumentParser(prog="comfyd", description="Run ComfyUI workflows as a service.")
    parser.add_argument("--version", action="version", version=f"comfyd {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run one workflow in this process")
    run.add_argument("workflow", nargs="?", help="API, graph-form or UI JSON, or a PNG/WEBP ComfyUI wrote "
                     "(default: ComfyUI's default graph)")
    run.add_argument("--set", action="append", metavar="NODE.INPUT=VALUE", help='override an input, e.g. 6.text="a red fox"')
    run.add_argument("--ckpt", metavar="NAME", help="checkpoint every CheckpointLoaderSimple loads (a name in checkpoints/)")
    _add_folders(run)
    run.add_argument("--node-id", help="node whose progress is followed (default: the workflow's, or 3)")
    run.add_argument("--mode", choices=["sequential", "parallel"], help="execution mode (default: the workflow's, else sequential)")
    run.add_argument("--json", action="store_true", help="print the result, or the raw validation error body, as JSON")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    run.add_argument("--dry-run", action="store_true", help="check the workflow instead of running it (= comfyd check)")
    add_check_arguments(run, for_run=True)
    run.set_defaults(func=cmd_run)
    add_check_parser(sub, _settings)

    serve = sub.add_parser("serve", help="HTTP server: ComfyUI API, predictions, websocket")
    serve.add_argument("--host", help="bind address (also COMFYD_HOST; default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (also COMFYD_PORT; default 8188)")
    _add_folders(serve)
    serve.set_defaults(func=cmd_serve)

    worker = sub.add_parser("worker", help="consume the shared job queue (SQS) and run jobs")
    _add_folders(worker)
    worker.add_argument("--visibility-timeout", type=int, default=60, help="SQS visibility timeout per job lease (s)")
    worker.add_argument("--poll", type=int, default=20, help="SQS long-poll wait (s)")
    worker.add_argument("--max-jobs", type=int, default=None, help="exit after this many jobs")
    worker.set_defaults(func=cmd_worker)

    submit = sub.add_parser("submit", help="submit a workflow to a comfyd server and wait")
    submit.add_argument("workflow", help="API-format or graph-form JSON file ('-' reads stdin)")
    submit.add_argument("--server", default="http://127.0.0.1:8188", help="server URL (default http://127.0.0.1:8188)")
    submit.add_argument("--api-key", help="API key, when the server has COMFYD_API_KEYS set")
    submit.add_argument("--set", action="append", metavar="NODE.INPUT=VALUE", help='override an input, e.g. 3.seed=7')
    submit.add_argument("--output-dir", "--output", dest="output", help="download the images into this folder")
    submit.set_defaults(func=cmd_submit)

    models = sub.add_parser("models", help="model files").add_subparsers(dest="models_command", required=True)
    tiny = models.add_parser("make-tiny", help="write tiny random-weight checkpoints (tests, demo)")
    tiny.add_argument("dir", help="models folder (checkpoints/ is created inside)")
    # No choices= list: building it would import the families (and torch) for every command.
    tiny.add_argument("--family", default="sd1", help="model family: a module of comfyd/models/families/ (default sd1)")
    tiny.set_defaults(func=cmd_models_make_tiny)
    listing = models.add_parser("list", help="list model files")
    listing.add_argument("--models-dir", help=_HELP_MODELS)
    listing.set_defaults(func=cmd_models_list)
    add_pull_parser(models, _settings)
    publish = models.add_parser("publish", help="publish this host's models to the shared catalog (S3 storage)")
    publish.add_argument("--models-dir")
    publish.add_argument("--name", dest="manifest_name", help="manifest name (default: the host name)")
    publish.set_defaults(func=cmd_models_publish)
    sync = models.add_parser("sync", help="fill the models folder from s3://bucket/prefix, checksum-verified")
    sync.add_argument("--from", dest="source", required=True, metavar="S3_URL")
    sync.add_argument("--models-dir")
    sync.set_defaults(func=cmd_models_sync)

    aws = sub.add_parser("aws", help="AWS resources").add_subparsers(dest="aws_command", required=True)
    init = aws.add_parser("init", help="create the bucket, table, queues and topic the settings name")
    init.set_defaults(func=cmd_aws_init)
    local = aws.add_parser("local", help="start a local AWS endpoint (moto server) for development")
    local.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    local.add_argument("--port", type=int, default=5000, help="port (default 5000)")
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
