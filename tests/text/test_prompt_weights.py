"""ComfyUI's prompt weight syntax: parentheses, explicit weights, escapes, malformed input."""

from __future__ import annotations

import pytest

from comfyd.models.prompt_weights import WeightedSegment, parse_prompt_weights, split_top_level_groups


def segments(prompt: str) -> list[tuple[str, float]]:
    return [(s.text, s.weight) for s in parse_prompt_weights(prompt)]


def test_plain_text_is_one_segment_of_weight_one() -> None:
    assert parse_prompt_weights("a photo of a cat") == [WeightedSegment("a photo of a cat", 1.0)]


def test_empty_prompt_has_no_segments() -> None:
    assert segments("") == []


def test_parentheses_multiply_by_1_1_per_level() -> None:
    assert segments("a (b) c") == [("a ", 1.0), ("b", 1.1), (" c", 1.0)]
    assert segments("((b))") == [("b", 1.1 * 1.1)]
    assert segments("(((b)))") == [("b", 1.1 * 1.1 * 1.1)]


def test_explicit_weight_sets_the_weight() -> None:
    assert segments("(red:1.5) cat") == [("red", 1.5), (" cat", 1.0)]
    assert segments("(red:0)") == [("red", 0.0)]
    assert segments("(red:-0.5)") == [("red", -0.5)]


def test_explicit_inner_weight_replaces_instead_of_multiplying() -> None:
    assert segments("(a (b:0.5) c:1.2)") == [("a ", 1.2), ("b", 0.5), (" c", 1.2)]
    # an implicit inner group multiplies the explicit outer weight
    assert segments("((b):2)") == [("b", 2.0 * 1.1)]


def test_last_colon_is_the_weight_separator() -> None:
    assert segments("(time: 12:30:0.8)") == [("time: 12:30", 0.8)]


def test_colon_without_number_is_text_and_group_gets_1_1() -> None:
    assert segments("(style: oil)") == [("style: oil", 1.1)]
    # a ':' in first position is never a separator
    assert segments("(:2)") == [(":2", 1.1)]


def test_escaped_parentheses_are_literal() -> None:
    assert segments(r"\(literal\) text") == [("(literal) text", 1.0)]
    assert segments(r"(a \(b\):1.3)") == [("a (b)", 1.3)]


def test_square_brackets_have_no_meaning() -> None:
    assert segments("[x] (y)") == [("[x] ", 1.0), ("y", 1.1)]


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("a (b", [("a ", 1.0), ("(b", 1.0)]),  # unclosed group stays literal
        ("a ) b", [("a ) b", 1.0)]),  # stray ')' makes the rest literal
        ("a) (b)", [("a) (b)", 1.0)]),
        ("((a)", [("(a", 1.1)]),  # ComfyUI strips the outer pair, the inner '(' stays text
        ("(", [("(", 1.0)]),
        (")", [(")", 1.0)]),
        ("()", []),
        ("(:)", [(":", 1.1)]),
    ],
)
def test_unbalanced_parentheses_follow_comfyui_and_never_fail(prompt: str, expected: list) -> None:
    assert segments(prompt) == expected


def test_deep_nesting_does_not_overflow() -> None:
    depth = 5000
    result = segments("(" * depth + "x" + ")" * depth)
    assert len(result) == 1 and result[0][0] == "x"
    assert result[0][1] == pytest.approx(1.1**depth, rel=1e-9)


def test_scanner_splits_top_level_groups_only() -> None:
    assert split_top_level_groups("a (b (c)) d") == ["a ", "(b (c))", " d"]
