"""Downloading the model files a workflow needs (`comfyd models pull`, `comfyd check --pull`).

Nothing here runs unless the user asks. Files land in `<models_dir>/<folder>/<name>`:

- Hugging Face files (`owner/repo/path/in/repo`, or a `https://huggingface.co/.../resolve/...`
  URL such as ComfyUI's templates list) go through `huggingface_hub.hf_hub_download`, so its
  settings apply: HF_ENDPOINT, HF_TOKEN / the saved token, HF_HOME / HF_HUB_CACHE, and
  HF_HUB_OFFLINE. The cached file is then linked (or copied) into the models folder.
- Other URLs are fetched with httpx into `<name>.part`, resumed with a Range request when a
  partial file exists.

Either way the size (Content-Length, or the size the workflow lists) and the SHA-256 (when the
workflow lists one) are verified before the file is moved into place with a hard link that
fails rather than replace anything: an existing file is never overwritten.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from comfyd.safepath import safe_join

HF_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<revision>[^/]+)/(?P<file>.+)$")
CHUNK = 1 << 20


class PullError(RuntimeError):
    pass


@dataclass(frozen=True)
class PullRequest:
    name: str  # file name inside the folder (may hold subfolders)
    folder: str  # ComfyUI model folder: checkpoints, loras, vae, diffusion_models, ...
    url: str | None = None  # http(s) URL
    hf_repo: str | None = None  # or a Hugging Face repo id ...
    hf_file: str | None = None  # ... and the file's path in it
    revision: str | None = None
    sha256: str | None = None
    size: int | None = None


@dataclass(frozen=True)
class PullResult:
    request: PullRequest
    path: Path
    status: str  # "downloaded" | "exists"


def parse_target(target: str, folder: str | None, name: str | None = None) -> PullRequest:
    """A request from a command-line target: an http(s) URL or a Hugging Face `owner/repo/file`."""
    if target.startswith(("http://", "https://")):
        hf = _hf_from_url(target)
        file_name = name or Path(unquote(urlparse(target).path)).name
        if not folder:
            raise PullError(f"{target}: say which model folder it goes in (--folder checkpoints, loras, vae, ...)")
        if not file_name:
            raise PullError(f"{target}: the URL names no file; pass --name")
        if hf is not None:
            return PullRequest(file_name, folder, url=target, hf_repo=hf[0], hf_file=hf[2], revision=hf[1])
        return PullRequest(file_name, folder, url=target)
    parts = target.split("/")
    if len(parts) >= 3 and all(parts):
        if not folder:
            raise PullError(f"{target}: say which model folder it goes in (--folder checkpoints, loras, vae, ...)")
        file_path = "/".join(parts[2:])
        return PullRequest(name or Path(file_path).name, folder, hf_repo="/".join(parts[:2]), hf_file=file_path)
    raise PullError(f"{target!r} is neither a workflow file, an http(s) URL nor a Hugging Face owner/repo/file")


def _hf_from_url(url: str) -> tuple[str, str, str] | None:
    """(repo, revision, file) of a huggingface.co (or HF_ENDPOINT) resolve URL."""
    parsed = urlparse(url)
    endpoints = {"huggingface.co", "hf.co"}
    configured = os.environ.get("HF_ENDPOINT")
    if configured:
        endpoints.add(urlparse(configured).netloc)
    if parsed.netloc not in endpoints:
        return None
    match = HF_RESOLVE.match(unquote(parsed.path))
    if match is None:
        return None
    return match["repo"], match["revision"], match["file"]


def pull(request: PullRequest, models_dir: Path, *, progress: bool = True) -> PullResult:
    """Download one file into `models_dir/<folder>/<name>` unless it is there already."""
    dest = safe_join(Path(models_dir) / request.folder, request.name)
    if dest.exists():
        return PullResult(request, dest, "exists")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    if request.hf_repo and request.hf_file:
        _from_hub(request, part, progress)
    elif request.url:
        _from_url(request.url, part, progress)
    else:
        raise PullError(f"{request.name}: no URL or Hugging Face file to download it from")
    _verify(request, part)
    try:
        os.link(part, dest)  # fails instead of replacing a file that appeared meanwhile
    except FileExistsError:
        part.unlink()
        return PullResult(request, dest, "exists")
    except OSError:
        if dest.exists():
            part.unlink()
            return PullResult(request, dest, "exists")
        os.replace(part, dest)
        return PullResult(request, dest, "downloaded")
    part.unlink()
    return PullResult(request, dest, "downloaded")


def _from_hub(request: PullRequest, part: Path, progress: bool) -> None:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    previous = os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS")
    if not progress:
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    try:
        cached = hf_hub_download(repo_id=str(request.hf_repo), filename=str(request.hf_file),
                                 revision=request.revision)
    except LocalEntryNotFoundError as exc:
        raise PullError(f"{request.hf_repo}/{request.hf_file}: not in the Hugging Face cache and offline "
                        f"(HF_HUB_OFFLINE) or unreachable: {exc}") from exc
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise PullError(f"{request.hf_repo}/{request.hf_file}: {exc}") from exc
    finally:
        if not progress:
            if previous is None:
                os.environ.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)
            else:
                os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = previous
    source = Path(cached).resolve()
    part.unlink(missing_ok=True)
    try:
        os.link(source, part)  # the cache keeps its copy; same disk costs no space
    except OSError:
        shutil.copyfile(source, part)


def _from_url(url: str, part: Path, progress: bool) -> None:
    import httpx

    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        with httpx.stream("GET", url, headers=headers, follow_redirects=True, timeout=60.0) as response:
            if response.status_code == 416:  # the partial file is already complete
                return
            if response.status_code not in (200, 206):
                raise PullError(f"{url}: HTTP {response.status_code}")
            resumed = response.status_code == 206
            if not resumed:
                have = 0
            length = response.headers.get("Content-Length")
            total = have + int(length) if length and length.isdigit() else None
            bar = _bar(total, have, part.name) if progress else None
            with part.open("ab" if resumed else "wb") as out:
                for block in response.iter_bytes():  # as received: an interruption keeps what came
                    out.write(block)
                    if bar is not None:
                        bar.update(len(block))
            if bar is not None:
                bar.close()
    except httpx.HTTPError as exc:
        raise PullError(f"{url}: {exc} (run the command again to resume)") from exc
    if total is not None and part.stat().st_size != total:
        raise PullError(f"{url}: got {part.stat().st_size} bytes of {total} (run the command again to resume)")


def _bar(total: int | None, initial: int, name: str):  # type: ignore[no-untyped-def]
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, desc=name, file=sys.stderr)


def _verify(request: PullRequest, part: Path) -> None:
    size = part.stat().st_size
    if request.size is not None and size != request.size:
        part.unlink()
        raise PullError(f"{request.name}: downloaded {size} bytes, expected {request.size}; removed it")
    if request.sha256:
        digest = hashlib.sha256()
        with part.open("rb") as f:
            for block in iter(lambda: f.read(CHUNK), b""):
                digest.update(block)
        if digest.hexdigest().lower() != request.sha256.lower():
            part.unlink()
            raise PullError(f"{request.name}: SHA-256 {digest.hexdigest()} differs from the expected "
                            f"{request.sha256}; removed it")
