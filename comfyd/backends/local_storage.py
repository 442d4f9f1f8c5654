"""OutputStore on local files: the output directory, served back by GET /view.

Keys are paths relative to the output directory ("sub/name.png"). SaveImage has usually
written the file there already; `put` then finds identical bytes in place and only returns the
reference, so a local job's outputs are never copied twice. Writes are atomic (temporary file,
then rename), so a reader never sees half an image, even if the process is killed mid-write.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from urllib.parse import urlencode

from comfyd.engine.interfaces import StoredOutput
from comfyd.safepath import safe_join


class LocalOutputStore:
    """comfyd.engine.interfaces.OutputStore on a directory."""

    def __init__(self, root: Path | str, view_path: str = "/view") -> None:
        self.root = Path(root)
        self.view_path = view_path

    def _path(self, key: str) -> Path:
        return safe_join(self.root, key)  # raises UnsafePathError for '..', absolute paths, ...

    def put(
        self, job_id: str, filename: str, data: bytes, content_type: str = "image/png",
        metadata: dict[str, str] | None = None,
    ) -> StoredOutput:
        path = self._path(filename)
        if not (path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data):
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        return StoredOutput(key=filename, url=self.url(filename), size=len(data), content_type=content_type)

    def get(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def url(self, key: str) -> str | None:
        subfolder, _, name = key.rpartition("/")
        return f"{self.view_path}?" + urlencode({"filename": name, "subfolder": subfolder, "type": "output"})
