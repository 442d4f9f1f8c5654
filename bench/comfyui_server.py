"""Start ComfyUI's own HTTP server (its main.py) from a checkout, for side-by-side benchmarks.

    /work/cvenv/bin/python bench/comfyui_server.py COMFYUI_ROOT [ComfyUI's main.py arguments ...]

ComfyUI runs as it runs for its users (its main.py, its aiohttp server, its queue), with two
preparations made first, before main.py is executed in this process:

- torchvision / torchaudio: where they cannot be imported (a wheel built for another torch), the
  empty stand-ins of bench/comfyui_render.py are put in their place, as that script does;
- the working directory is the checkout, as `python main.py` from inside it would have it.

Nothing of ComfyUI is copied here: this only starts it. The callers pass `--cpu`,
`--front-end-root EMPTY_DIR` (the web frontend is a separate package that need not be installed),
`--base-directory`, `--database-url sqlite:///:memory:` so nothing is written into the checkout.
"""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path


def comfyui_argv(port: int, base_dir: Path, web_root: Path, *, cpu: bool = True) -> list[str]:
    """main.py arguments for a quiet, self-contained ComfyUI server on 127.0.0.1:`port`."""
    argv = [
        "--listen", "127.0.0.1", "--port", str(port), "--disable-all-custom-nodes",
        "--base-directory", str(base_dir), "--front-end-root", str(web_root),
        "--database-url", "sqlite:///:memory:", "--disable-auto-launch",
    ]
    return (["--cpu"] if cpu else []) + argv


def main(argv: list[str]) -> None:
    if not argv:
        raise SystemExit("usage: comfyui_server.py COMFYUI_ROOT [main.py arguments ...]")
    root = Path(argv[0]).resolve()
    if not (root / "main.py").is_file():
        raise SystemExit(f"{root} is not a ComfyUI checkout (no main.py)")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from comfyui_render import _stand_in_for

    for name in ("torchvision", "torchaudio"):
        _stand_in_for(name)
    sys.path.insert(0, str(root))
    sys.argv = [str(root / "main.py"), *argv[1:]]
    os.chdir(root)
    runpy.run_path(str(root / "main.py"), run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
