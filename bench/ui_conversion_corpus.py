"""UI -> API conversion over a corpus: ComfyUI's example pictures and its UI templates.

    python bench/ui_conversion_corpus.py --pictures DIR   # PNG/WEBP with both chunks, e.g. a
                                                          # ComfyUI_examples checkout
    python bench/ui_conversion_corpus.py --templates DIR  # UI-format JSON files, e.g. the
                                                          # comfyui-workflow-templates package

For pictures, the `workflow` chunk is converted and compared with the `prompt` chunk the
frontend produced (class_type and inputs of every node; the old upload-button keys ignored).
For templates, it counts the files that convert and those naming classes no layout knows.
Prints `RESULT name=value` lines.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

IGNORED_KEYS = {"upload", "choose file to upload"}


def comparable(prompt: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.get("class_type"), {n: x for n, x in v.get("inputs", {}).items() if n not in IGNORED_KEYS})
            for k, v in prompt.items()}


def pictures(root: Path, verbose: bool) -> None:
    from comfyd.workflow_formats import ui_to_api
    from comfyd.workflow_formats.embedded import EmbeddedWorkflowError, read_embedded

    pairs = same = 0
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in (".png", ".webp")):
        try:
            chunks = read_embedded(path)
        except (EmbeddedWorkflowError, OSError):
            continue
        if "prompt" not in chunks or "workflow" not in chunks:
            continue
        pairs += 1
        try:
            got = comparable(ui_to_api(chunks["workflow"]).prompt)
        except ValueError as exc:
            print(f"error {path}: {exc}", file=sys.stderr)
            continue
        if got == comparable(chunks["prompt"]):
            same += 1
        elif verbose:
            print(f"differs: {path}", file=sys.stderr)
    print(f"RESULT picture_pairs={pairs}")
    print(f"RESULT identical_conversions={same}")


def templates(root: Path) -> None:
    from comfyd.workflow_formats import is_ui_workflow, ui_to_api

    total = converted = with_unknown = 0
    for path in sorted(root.glob("*.json")):
        try:
            body = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if not is_ui_workflow(body):
            continue
        total += 1
        try:
            conversion = ui_to_api(body)
        except ValueError as exc:
            print(f"error {path}: {exc}", file=sys.stderr)
            continue
        converted += 1
        with_unknown += bool(conversion.unknown_nodes)
    print(f"RESULT ui_templates={total}")
    print(f"RESULT converted={converted}")
    print(f"RESULT with_classes_no_layout_knows={with_unknown}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pictures", type=Path)
    parser.add_argument("--templates", type=Path)
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    import comfyd.nodes  # noqa: F401  (comfyd's schemas first, as the server uses them)

    if args.pictures:
        pictures(args.pictures, args.verbose)
    if args.templates:
        templates(args.templates)
    return 0


if __name__ == "__main__":
    sys.exit(main())
