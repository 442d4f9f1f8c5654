"""OutputStore contract: local files and S3."""

from __future__ import annotations

import pytest

from comfyd.engine.interfaces import OutputStore

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(200))


def test_is_an_output_store(output_store) -> None:
    assert isinstance(output_store, OutputStore)


def test_put_get_url(output_store) -> None:
    stored = output_store.put("job-1", "ComfyUI_00001_.png", PNG, "image/png", metadata={"seed": "3"})
    assert stored.size == len(PNG) and stored.content_type == "image/png"
    assert output_store.get(stored.key) == PNG
    assert stored.url and stored.url == output_store.url(stored.key) or "X-Amz-Signature" in stored.url
    assert "ComfyUI_00001_.png" in stored.key


def test_subfolder(output_store) -> None:
    stored = output_store.put("job-1", "sub/dir/a.png", PNG)
    assert stored.key.endswith("sub/dir/a.png")
    assert output_store.get(stored.key) == PNG


def test_overwrite_same_name(output_store) -> None:
    output_store.put("job-1", "a.png", PNG)
    stored = output_store.put("job-1", "a.png", PNG + b"2")
    assert output_store.get(stored.key) == PNG + b"2"


@pytest.mark.parametrize("name", ["../escape.png", "a/../../b.png", "/etc/passwd"])
def test_traversal_is_refused(output_store, name: str) -> None:
    with pytest.raises(ValueError):
        output_store.put("job-1", name, PNG)


def test_missing_key(output_store) -> None:
    with pytest.raises((KeyError, FileNotFoundError)):
        output_store.get("nothing/here.png")
