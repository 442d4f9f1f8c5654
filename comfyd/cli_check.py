"""`comfyd check` and `comfyd models pull` (the CLI side; the work is in comfyd.check and
comfyd.models.pull)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

EXIT_FAILED = 1
EXIT_INVALID = 2


def read_workflow_arg(path: str) -> tuple[dict[str, Any], str]:
    """(body, format) of a workflow file, PNG/WEBP or '-' (stdin); exits 2 with a message."""
    from comfyd.workflow_formats.source import load_workflow_source

    try:
        return load_workflow_source("/dev/stdin" if path == "-" else path)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_INVALID) from exc


def cmd_check(args: argparse.Namespace, settings: Any) -> int:
    from comfyd.check import check_workflow, device_memory_bytes

    body, fmt = read_workflow_arg(args.workflow)
    sets = getattr(args, "set", None) or []
    memory = int(args.device_memory * 2**30) if getattr(args, "device_memory", None) else device_memory_bytes(settings)
    report = check_workflow(body, settings, fmt=fmt, device_memory=memory, sets=sets)
    if getattr(args, "pull", False) and report.missing_models:
        pulled = _pull_missing(report, settings, quiet=bool(args.json))
        if pulled:
            report = check_workflow(body, settings, fmt=fmt, device_memory=memory, sets=sets)
    if args.json:
        print(json.dumps(report.as_json(), indent=2))
    else:
        for line in report.summary_lines():
            print(line)
    return report.exit_code


def _pull_missing(report: Any, settings: Any, quiet: bool) -> int:
    from comfyd.models.pull import PullError, PullRequest, parse_target, pull

    done = 0
    for missing in report.missing_models:
        if not missing.url:
            print(f"cannot pull {missing.folder}/{missing.name}: the workflow lists no URL for it", file=sys.stderr)
            continue
        sha = missing.hash if (missing.hash_type or "sha256").lower().replace("-", "") == "sha256" else None
        try:
            base = parse_target(missing.url, missing.folder, missing.name)
            request = PullRequest(base.name, base.folder, base.url, base.hf_repo, base.hf_file, base.revision, sha)
            result = pull(request, Path(settings.models_dir), progress=not quiet)
        except PullError as exc:
            print(f"error: {exc}", file=sys.stderr)
            continue
        print(f"{result.status}: {result.path}", file=sys.stderr)
        done += 1
    return done


def cmd_models_pull(args: argparse.Namespace, settings: Any) -> int:
    from comfyd.check import check_workflow
    from comfyd.models.pull import PullError, parse_target, pull

    target = args.target
    if Path(target).is_file():
        body, fmt = read_workflow_arg(target)
        report = check_workflow(body, settings, fmt=fmt)
        if not report.missing_models:
            print("nothing to pull: every model the workflow names is present", file=sys.stderr)
            return 0
        _pull_missing(report, settings, quiet=args.quiet)
        after = check_workflow(body, settings, fmt=fmt)
        for missing in after.missing_models:
            print(f"still missing: {missing.folder}/{missing.name}", file=sys.stderr)
        return EXIT_FAILED if after.missing_models else 0
    try:
        request = parse_target(target, args.folder, args.name)
        if args.sha256:
            from dataclasses import replace

            request = replace(request, sha256=args.sha256)
        result = pull(request, Path(settings.models_dir), progress=not args.quiet)
    except PullError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"{result.status}: {result.path}")
    return 0


def add_check_parser(sub: Any, settings_of: Any) -> None:
    check = sub.add_parser("check", help="validate a workflow without running it; list missing models and nodes")
    add_check_arguments(check)
    check.set_defaults(func=lambda args: cmd_check(args, settings_of(args)))


def add_check_arguments(parser: argparse.ArgumentParser, *, for_run: bool = False) -> None:
    if not for_run:
        parser.add_argument("workflow", help="API, graph-form or UI JSON, or a PNG/WEBP ComfyUI wrote")
        parser.add_argument("--models-dir", help="ComfyUI-layout models folder (also COMFYD_MODELS_DIR)")
        parser.add_argument("--json", action="store_true", help="print one JSON object")
        parser.add_argument("--set", action="append", metavar="NODE.INPUT=VALUE")
    parser.add_argument("--pull", action="store_true", help="download missing models that the workflow gives URLs for")
    parser.add_argument("--device-memory", type=float, metavar="GIB",
                        help="device memory to hold the estimate to (default: the CUDA device's, if any)")


def add_pull_parser(models_sub: Any, settings_of: Any) -> None:
    pull = models_sub.add_parser("pull", help="download model files: a workflow's missing ones, a HF repo/file or a URL")
    pull.add_argument("target", help="workflow file (JSON/PNG), Hugging Face owner/repo/path/file, or http(s) URL")
    pull.add_argument("--folder", help="model folder for a URL or HF file (checkpoints, loras, vae, ...)")
    pull.add_argument("--name", help="file name to save as (default: the URL's)")
    pull.add_argument("--sha256", help="expected SHA-256 of the file")
    pull.add_argument("--models-dir")
    pull.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    pull.set_defaults(func=lambda args: cmd_models_pull(args, settings_of(args)))
