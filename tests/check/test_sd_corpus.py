"""Issue 12's done-when on bench/corpus/sd: `comfyd check` refuses no in-scope SD-family workflow
except for a class still missing, a configured service limit or an API prompt ComfyUI refuses too
(bench/sd_corpus.py classifies; bench/corpus/README.md lists the sources)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import sd_corpus  # noqa: E402

# Graphs that use only nodes comfyd has run since before issue 12: they must stay accepted.
ALWAYS_ACCEPTED = [
    "comfyui_examples/img2img__img2img_workflow.api.json",
    "comfyui_examples/img2img__img2img_workflow.ui.json",
    "comfyui_examples/inpaint__inpaint_example.ui.json",
    "comfyui_examples/inpaint__yosemite_outpaint_example.api.json",
    "comfyui_examples/lora__lora_multiple.ui.json",
    "comfyui_examples/sdxl__sdxl_refiner_prompt_example.ui.json",
    "comfyui_examples/textual_inversion_embeddings__embedding_example.api.json",
    "comfyui_examples/upscale_models__esrgan_example.ui.json",
    "cog_comfyui/sd15_txt2img.api.json",
    "cog_comfyui/sd15_text2img_not_api_version.ui.json",
    "cog_comfyui/sdxl_lightning_lora.ui.json",
]


@pytest.fixture(scope="module")
def verdicts() -> dict[str, sd_corpus.Verdict]:
    return {str(v.path.relative_to(sd_corpus.DEFAULT_CORPUS)): v for v in sd_corpus.run([sd_corpus.DEFAULT_CORPUS])}


def test_the_corpus_is_there_in_both_formats(verdicts: dict[str, sd_corpus.Verdict]) -> None:
    assert len(verdicts) >= 140
    assert sum(name.endswith(".ui.json") for name in verdicts) >= 50
    assert sum(name.endswith(".api.json") for name in verdicts) >= 70


def test_no_in_scope_workflow_is_refused_by_a_validator_error(verdicts: dict[str, sd_corpus.Verdict]) -> None:
    bad = {name: v.reasons for name, v in verdicts.items() if v.kind in ("validator", "unreadable")}
    assert bad == {}


def test_plain_sd_graphs_are_accepted(verdicts: dict[str, sd_corpus.Verdict]) -> None:
    assert {name: verdicts[name].kind for name in ALWAYS_ACCEPTED} == {name: "accepted" for name in ALWAYS_ACCEPTED}


def test_refusals_name_classes_of_the_right_kind(verdicts: dict[str, sd_corpus.Verdict]) -> None:
    for name, v in verdicts.items():
        if v.kind == "missing_listed":
            assert v.reasons and set(v.reasons) <= sd_corpus.ISSUE_12_CLASSES, name
        elif v.kind == "outside_issue":
            assert any(c not in sd_corpus.ISSUE_12_CLASSES for c in v.reasons), name
        elif v.kind in ("service_limit", "stale_api"):
            assert v.reasons, name


def test_a_pictures_ui_graph_and_api_prompt_get_the_same_verdict(verdicts: dict[str, sd_corpus.Verdict]) -> None:
    """Both chunks of one example picture describe one graph: converting the UI graph must not
    change what check says, except that an old API prompt can lack an input the UI converter fills."""
    pairs = 0
    for name, api in verdicts.items():
        if not (name.startswith("comfyui_examples/") and name.endswith(".api.json")):
            continue
        ui = verdicts.get(name.replace(".api.json", ".ui.json"))
        if ui is None:
            continue
        pairs += 1
        if api.kind == "stale_api":
            # The UI twin converts with the default; a service limit may still refuse both.
            assert ui.kind in ("accepted", "service_limit"), name
        else:
            assert (ui.kind, sorted(ui.reasons) if ui.kind != "service_limit" else None) == (
                api.kind, sorted(api.reasons) if api.kind != "service_limit" else None
            ), name
    assert pairs >= 40


def test_the_bench_prints_its_result_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plain = json.loads((sd_corpus.DEFAULT_CORPUS / ALWAYS_ACCEPTED[-3]).read_text())
    (tmp_path / "plain.api.json").write_text(json.dumps(plain))
    custom = dict(plain, **{"99": {"class_type": "SomeCustomNode", "inputs": {}}})
    (tmp_path / "custom.api.json").write_text(json.dumps(custom))
    assert sd_corpus.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "RESULT sd_corpus_accepted=1/2" in out
    assert "outside_issue: " in out and "SomeCustomNode" in out
