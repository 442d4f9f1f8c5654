"""Load real ComfyUI node packs through comfyd's compatibility layer and smoke-run their nodes.

    PYTHONPATH=. python bench/custom_node_packs.py /tmp/packs [--pack NAME ...] [--json out.json]

For each pack (an entry of PACKS_DIR, loaded exactly as `COMFYD_CUSTOM_NODES_DIRS` loads it):
classes found, registered as runnable, unavailable (with reasons), and how many of the runnable
ones ran on a smoke input: inputs built from the declaration (IMAGE [1,64,64,3] random, MASK
[1,64,64], LATENT {"samples": [1,4,8,8]}, "*" inputs get the IMAGE, widgets at their defaults, combos at their default
or first choice); optional link inputs are left out, a node needing another link type is
counted as not smoke-testable. "Ran" means the node returned its declared outputs without an
exception within the time limit; it says nothing about whether the values are right.
Prints `RESULT <pack>.<what>=<n>` lines, and `RESULT total.<what>=<n>`.

Run it from a scratch directory: some pack nodes write to paths relative to the working
directory (WAS writes `./ComfyUI/output/...`), whatever comfyd's folders say.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import torch

SMOKE_TIMEOUT_S = 30


class _Timeout(BaseException):  # not swallowed by a pack's `except Exception`
    pass


def _on_alarm(signum: int, frame: Any) -> None:
    raise _Timeout(f"no result within {SMOKE_TIMEOUT_S} s")


def smoke_inputs(schema: Any, env: Any) -> dict[str, Any] | str:
    """Inputs for one run, or the reason none can be built."""
    values: dict[str, Any] = {}
    for spec in schema.inputs:
        kind = spec.type
        if kind in ("IMAGE", "*"):
            value: Any = torch.rand(1, 64, 64, 3)
        elif kind == "MASK":
            value = torch.rand(1, 64, 64)
        elif kind == "LATENT":
            value = {"samples": torch.randn(1, 4, 8, 8)}
        elif kind in ("INT", "FLOAT"):
            value = spec.default if spec.default is not None else (spec.min if spec.min is not None else 0)
            try:
                value = int(value) if kind == "INT" else float(value)
            except (TypeError, ValueError):
                return f"{spec.name} has a default {value!r} that is no number"
        elif kind == "STRING":
            value = spec.default if isinstance(spec.default, str) else "a photo of a cat"
        elif kind == "BOOLEAN":
            value = bool(spec.default) if spec.default is not None else False
        elif kind == "COMBO":
            choices = spec.resolve_choices(env)
            if spec.default in choices:
                value = spec.default
            elif choices:
                value = choices[0]
            elif spec.optional:
                continue
            else:
                return "a combo input with no choices (no files present)"
        elif spec.optional:
            continue
        else:
            return f"needs a {kind} input"
        values[spec.name] = value
    return values


def run_pack(report: Any, registry: Any, env: Any) -> dict[str, Any]:
    from comfyd.engine.context import NodeContext

    ran: list[str] = []
    failed: dict[str, str] = {}
    untestable: dict[str, str] = {}
    for class_type in report.nodes:
        node_cls = registry.get(class_type)
        try:
            inputs = smoke_inputs(node_cls.schema, env)
        except Exception as exc:  # a declaration the generic runner cannot read
            inputs = f"no smoke input: {type(exc).__name__}: {exc}"
        if isinstance(inputs, str):
            untestable[class_type] = inputs
            continue
        ctx = NodeContext(env=env, job_id="bench", node_id="1", class_type=class_type, prompt={})
        print(f"  {class_type}", file=sys.stderr, flush=True)
        signal.alarm(SMOKE_TIMEOUT_S)
        try:
            out = node_cls().run(ctx, **inputs)
            if len(out.values) != len(node_cls.schema.outputs):
                raise TypeError("wrong number of outputs")
            ran.append(class_type)
        except BaseException as exc:  # noqa: BLE001 - a smoke run reports every failure
            if isinstance(exc, KeyboardInterrupt):
                raise
            failed[class_type] = f"{type(exc).__name__}: {str(exc)[:200]}"
        finally:
            signal.alarm(0)
    return {"ran": ran, "failed": failed, "untestable": untestable}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("packs_dir", type=Path)
    parser.add_argument("--pack", action="append", default=[], help="only these packs (folder names)")
    parser.add_argument("--json", type=Path, help="write per-node details here")
    parser.add_argument("--models-dir", type=Path, default=None)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # packs that fetch weights must find them locally
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    import comfyd.nodes  # noqa: F401
    from comfyd.compat.loader import load_custom_nodes
    from comfyd.engine.context import NodeEnvironment
    from comfyd.engine.schema import REGISTRY
    from comfyd.settings import Settings

    work = Path(tempfile.mkdtemp(prefix="comfyd-packs-"))
    packs_dir = args.packs_dir
    if args.pack:  # load only the named packs: a folder of links to them
        packs_dir = work / "custom_nodes"
        packs_dir.mkdir()
        for name in args.pack:
            (packs_dir / name).symlink_to((args.packs_dir / name).resolve())
    settings = Settings(
        custom_nodes_dirs=[packs_dir],
        models_dir=args.models_dir or work / "models",
        output_dir=work / "output",
        input_dir=work / "input",
        temp_dir=work / "temp",
        load_plugins=False,
    )
    for d in (settings.output_dir, settings.input_dir, settings.temp_dir):
        Path(d).mkdir(parents=True, exist_ok=True)
    env = NodeEnvironment(settings)
    reports = load_custom_nodes(settings, REGISTRY, env)
    signal.signal(signal.SIGALRM, _on_alarm)
    totals: Counter[str] = Counter()
    details: dict[str, Any] = {}
    for report in reports:
        run = (
            run_pack(report, REGISTRY, env) if report.loaded else {"ran": [], "failed": {}, "untestable": {}}
        )
        counts = {
            "classes": report.classes_found,
            "loaded": len(report.nodes),
            "unavailable": len(report.unavailable) + len(report.skipped),
            "ran": len(run["ran"]),
            "run_failed": len(run["failed"]),
            "not_smoke_testable": len(run["untestable"]),
        }
        totals.update(counts)
        print(f"# {report.name}: {'loaded' if report.loaded else 'NOT loaded: ' + str(report.error)}")
        if report.missing_requirements:
            print(f"#   missing requirements: {', '.join(report.missing_requirements)}")
        for what, n in counts.items():
            print(f"RESULT {report.name}.{what}={n}")
        sys.stdout.flush()
        details[report.name] = {
            "error": report.error,
            "missing_requirements": report.missing_requirements,
            "unavailable_reasons": {**report.unavailable, **report.skipped},
            **run,
            "counts": counts,
        }
    for what, n in totals.items():
        print(f"RESULT total.{what}={n}")
    if args.json:
        args.json.write_text(json.dumps(details, indent=2, sort_keys=True))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
