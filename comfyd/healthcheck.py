"""`python -m comfyd.healthcheck`: the container HEALTHCHECK of Dockerfile.gpu.

Asks the local server's GET /health-check (Cog's protocol: HTTP 200 with a `status` of STARTING,
READY, BUSY, SETUP_FAILED or DEFUNCT) and exits 0 when the server can take work (READY or BUSY),
1 otherwise. STARTING lasts while models load and the warm-up workflow runs, so a container is
not reported healthy before its first job can run at full speed.

Standard library only, so the check stays cheap (it runs every 30 s).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request

HEALTHY_STATUSES = frozenset({"READY", "BUSY"})


def default_url() -> str:
    port = os.environ.get("COMFYD_PORT", "8188")
    return f"http://127.0.0.1:{port}/health-check"


def first_plain_api_key() -> str | None:
    """A key to send if /health-check wants one: the first configured key that is not a hash."""
    for entry in os.environ.get("COMFYD_API_KEYS", "").split(","):
        entry = entry.strip()
        if entry and not entry.startswith("sha256:") and not entry.startswith("["):
            return entry
    return None


def check(url: str, timeout_s: float) -> tuple[bool, str]:
    """(healthy, what was seen)."""
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    key = first_plain_api_key()
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        return False, f"{url} answered HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return False, f"{url} unreachable: {exc}"
    try:
        status = json.loads(body).get("status")
    except (ValueError, AttributeError):
        return False, f"{url} answered something other than a JSON object: {body[:200]!r}"
    return status in HEALTHY_STATUSES, f"status {status}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m comfyd.healthcheck", description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=default_url(), help="health endpoint (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=4.0, help="seconds (default: %(default)s)")
    args = parser.parse_args(argv)
    healthy, seen = check(args.url, args.timeout)
    print(("healthy: " if healthy else "unhealthy: ") + seen)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
