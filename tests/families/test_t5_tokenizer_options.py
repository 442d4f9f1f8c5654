"""T5TokenizerOptions: the T5 tokenizers' min_padding / min_length, held to ComfyUI.

`data/t5_tokenizer_options_comfyui_reference.safetensors` holds the token ids and conditioning
tensors ComfyUI's own tokenizers and encoders produced on comfyd's tiny T5 / UMT5 files with the
options set (bench/t5_tokenizer_options_comfyui_parity.py --save-reference): Flux's and Chroma's
T5-XXL (pads encoded, unmasked) and Wan's UMT5 (pads masked out and zeroed), plain and weighted
prompts; and the ids of HiDream's first 128-token T5 chunk. AuraFlow's Pile-T5 cases are in the
reference too, compared by the bench only (its tiny checkpoint takes seconds to write).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

import bench.t5_tokenizer_options_comfyui_parity as parity
from comfyd.check import check_workflow
from comfyd.models import t5_first_chunk, tokenizer_options
from comfyd.models.families import hidream
from comfyd.settings import Settings

HERE = Path(__file__).resolve().parent
REFERENCE = HERE / "data" / "t5_tokenizer_options_comfyui_reference.safetensors"
PAIR = HERE.parent / "workflow_formats" / "pairs" / "fennec_girl_hug.json"


@pytest.fixture(scope="module")
def text_encoders(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("t5opts") / "models"
    parity.write_files(root)
    return root


def test_ids_and_conditioning_equal_comfyuis(text_encoders: Path) -> None:
    theirs = load_file(str(REFERENCE))
    ours = parity.comfyd_side(text_encoders)
    compared = parity.compare(ours, theirs)
    assert set(compared) == {*parity.CASES, *parity.HIDREAM_CASES}
    for case, (same, diff) in compared.items():
        assert same, (case, ours[f"{case}_ids"].tolist(), theirs[f"{case}_ids"].tolist())
        assert case in parity.HIDREAM_CASES or diff < 1e-4, (case, diff)
    # The cases exercise the options: pads after the end token, the minimum length replaced.
    assert theirs["flux_pad3_ids"][-4:].tolist() == [1, 0, 0, 0] and len(theirs["flux_len40_pad2_ids"]) == 40
    wan = theirs["wan_len48_pad1_cond"][0]
    assert wan.shape[0] == 48 and float(wan[-1].abs().max()) == 0.0  # Wan's padding is zeroed
    assert len(theirs["hidream_len130_pad1_ids"]) == 130 and len(theirs["hidream_long_pad2_ids"]) == 128
    flux = theirs["flux_pad3_cond"][0]
    assert float(flux[-1].abs().max()) > 0  # Flux encodes its pads


def test_options_by_embedding_key_and_merged_like_comfyuis_clone() -> None:
    settings = tokenizer_options.t5_option_settings(2, 9)
    assert (
        settings["umt5xxl_min_padding"] == 2 and settings["pile_t5xl_min_length"] == 9 and len(settings) == 10
    )
    spec = hidream.T5XXL
    options = tuple(sorted({"t5xxl_min_padding": 2, "umt5xxl_min_length": 700}.items()))
    assert tokenizer_options.padding(options, spec, 128) == tokenizer_options.Padding(2, 128)
    assert tokenizer_options.padding((), hidream.CLIP_L, 77) == tokenizer_options.Padding(0, 77)
    # HiDream keeps the first 128-token chunk; a prompt that fits takes the padding.
    tokens = t5_first_chunk.first_chunk("a red fox", 128, 0, 3)
    assert [t for t, _ in tokens[-4:]] == [1, 0, 0, 0]


def test_the_node_sets_options_on_a_copy(text_encoders: Path) -> None:
    from comfyd.models.manager import ModelManager
    from comfyd.models.text_encoding import tokenize_text
    from comfyd.nodes.conditioning.t5_tokenizer_options import T5TokenizerOptions

    manager = ModelManager(
        Settings(models_dir=text_encoders, device="cpu", home=text_encoders / "home", dtype="fp32")
    )
    clip = manager.load_clip([Path(parity.FILES["clip_l"]).name, Path(parity.FILES["t5xxl"]).name], "flux")
    (changed,) = T5TokenizerOptions().run(None, clip, 1, 0)  # type: ignore[arg-type]
    (again,) = T5TokenizerOptions().run(None, changed, 0, 5)  # type: ignore[arg-type]
    assert clip.tokenizer_options == () and dict(again.tokenizer_options)["t5xxl_min_length"] == 5
    before, after = tokenize_text(clip, "a fox"), tokenize_text(changed, "a fox")
    ids, padded = [t for t, _ in after["t5xxl"][0]], [t for t, _ in before["t5xxl"][0]]
    assert len(padded) == 256 and ids[-2:] == [1, 0] and ids == padded[: len(ids)]  # end, one pad
    assert before["l"] == after["l"]  # CLIP-L reads only its own (clip_l_...) options


def test_fennec_girl_hug_checks_with_only_models_missing(tmp_path: Path) -> None:
    workflow = json.loads(PAIR.read_text())["workflow"]
    report = check_workflow(workflow, Settings(models_dir=tmp_path, home=tmp_path / "home"), fmt="ui")
    assert report.unknown_nodes == []
    assert {e.kind for e in report.errors} == {"missing_model"}, report.errors
    assert "T5TokenizerOptions" not in json.dumps(report.as_json()["errors"])
