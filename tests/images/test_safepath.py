"""safe_join / safe_filename: every way out of the base directory is refused, legit names pass."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from comfyd.safepath import UnsafePathError, safe_filename, safe_join

ATTACKS = [
    ("..", "'..'"),
    ("../secret.png", "'..'"),
    ("sub/../../secret.png", "'..'"),
    ("/etc/passwd", "absolute"),
    ("//server/share", "absolute"),
    ("C:/Windows/win.ini", "drive letter"),
    ("%2e%2e/secret.png", "percent-encoded"),
    ("%2e%2e%2fsecret.png", "percent-encoded"),
    ("..%2fsecret.png", "percent-encoded"),
    ("sub%2f..%2f..%2fsecret", "percent-encoded"),
    ("%252e%252e%252fsecret", "percent-encoded"),
    ("..\\secret.png", "backslash"),
    ("sub\\..\\..\\secret.png", "backslash"),
    ("name\x00.png", "NUL"),
    ("%00name.png", "percent-encoded"),
    ("line\nbreak.png", "control"),
]


@pytest.mark.parametrize(("part", "reason"), ATTACKS)
def test_attack_is_refused_with_a_message_naming_the_part(tmp_path: Path, part: str, reason: str) -> None:
    with pytest.raises(UnsafePathError) as info:
        safe_join(tmp_path, part)
    message = str(info.value)
    assert repr(part) in message
    assert reason in message
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        (("a.png",), "a.png"),
        (("sub", "a.png"), "sub/a.png"),
        (("sub/deeper", "a.png"), "sub/deeper/a.png"),
        (("", "a.png"), "a.png"),
        (("./sub/", "a.png"), "sub/a.png"),
        (("a%20b.png",), "a%20b.png"),
        (("100%.png",), "100%.png"),
        (("..a.png",), "..a.png"),
        (("über café.png",), "über café.png"),
    ],
)
def test_legit_names_join_inside_base(tmp_path: Path, parts: tuple[str, ...], expected: str) -> None:
    joined = safe_join(tmp_path, *parts)
    assert joined == tmp_path / expected
    assert joined.resolve().is_relative_to(tmp_path.resolve())


def test_attack_in_a_later_part_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UnsafePathError, match="'..'"):
        safe_join(tmp_path, "sub", "../../x")


def test_symlink_escaping_base_is_refused(tmp_path: Path) -> None:
    base = tmp_path / "base"
    outside = tmp_path / "outside"
    base.mkdir()
    outside.mkdir()
    (outside / "secret.txt").write_text("no")
    os.symlink(outside, base / "link")
    with pytest.raises(UnsafePathError, match="symlink"):
        safe_join(base, "link/secret.txt")
    with pytest.raises(UnsafePathError, match="symlink"):
        safe_join(base, "link")


def test_symlink_staying_inside_base_is_allowed(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "alias")
    assert safe_join(tmp_path, "alias", "x.png") == tmp_path / "alias" / "x.png"


def test_base_that_is_itself_a_symlink_works(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "base")
    assert safe_join(tmp_path / "base", "sub/x.png") == tmp_path / "base" / "sub" / "x.png"


def test_non_string_part_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UnsafePathError, match="not a string"):
        safe_join(tmp_path, 5)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["photo.png", "my image (1).jpg", "a%20b.png", "..hidden.png"])
def test_safe_filename_accepts_plain_names(name: str) -> None:
    assert safe_filename(name) == name


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("..", "not a file name"),
        (".", "not a file name"),
        ("sub/x.png", "'/'"),
        ("../x.png", "'/'"),
        ("..\\x.png", "backslash"),
        ("x\x00.png", "NUL"),
        ("%2e%2e", "percent-encoded"),
        ("a%2fb.png", "percent-encoded"),
        ("C:x.png", "drive letter"),
        ("x" * 300, "longer than"),
    ],
)
def test_safe_filename_refuses(name: str, reason: str) -> None:
    with pytest.raises(UnsafePathError, match=reason):
        safe_filename(name)
