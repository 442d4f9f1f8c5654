"""A Python client for a comfyd (or ComfyUI) server, and `comfyd submit`.

    client = Client("http://127.0.0.1:8188", api_key="...")
    prompt_id = client.submit(workflow)
    entry = client.wait(prompt_id, on_event=print)      # websocket, polling when it drops
    images = client.fetch_images(entry)                 # [(ref, bytes)]

Requests are retried 3 times with exponential backoff from 1 s (with jitter; a server's
Retry-After wins when longer) on 429, 502, 503, 504 and connection errors; never on other 4xx
(400, 401, 403, ...), which raise `ServerError` with the server's body. Submission is safe to
retry: the client chooses the prompt_id, and the server makes one job of one id.
"""

from __future__ import annotations

import json
import logging
import random
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlparse

import httpx

log = logging.getLogger("comfyd.client")

RETRY_STATUSES = frozenset({429, 502, 503, 504})
EventCallback = Callable[[str, dict[str, Any]], None]


class ServerError(Exception):
    """The server answered with an error (after retries, for retryable ones)."""

    def __init__(self, status: int, body: Any, method: str, path: str) -> None:
        message = body.get("error", {}).get("message") if isinstance(body, dict) and isinstance(
            body.get("error"), dict) else str(body)[:500]
        super().__init__(f"{method} {path}: HTTP {status}: {message}")
        self.status = status
        self.body = body


class JobFailed(Exception):
    """The job ended without success; `entry` is its history entry."""

    def __init__(self, prompt_id: str, entry: dict[str, Any]) -> None:
        status = entry.get("status", {})
        super().__init__(f"job {prompt_id} ended with {status.get('reason') or status.get('status_str')}")
        self.prompt_id = prompt_id
        self.entry = entry


def _retry_after(response: httpx.Response | None) -> float | None:
    if response is None:
        return None
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


class Client:
    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        retries: int = 3,
        backoff_s: float = 1.0,
        max_backoff_s: float = 60.0,
        client_id: str | None = None,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.client_id = client_id or uuid.uuid4().hex
        self._sleep = sleep
        self._http = httpx.Client(base_url=self.url, timeout=timeout, headers=self._auth_headers(),
                                  transport=transport)

    def _auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- HTTP with retries -----------------------------------------------------------------

    def backoff(self, attempt: int, retry_after: float | None) -> float:
        """Seconds before retry number `attempt` (1-based)."""
        delay = min(self.max_backoff_s, self.backoff_s * (2 ** (attempt - 1)))
        delay *= 1.0 + random.random() * 0.25  # jitter: clients that failed together retry apart
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_backoff_s))
        return delay

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        attempt = 0
        while True:
            response: httpx.Response | None = None
            try:
                response = self._http.request(method, path, **kwargs)
                if response.status_code < 400:
                    return response
                retryable = response.status_code in RETRY_STATUSES
                failure: Exception = ServerError(response.status_code, _body(response), method, path)
            except (httpx.TransportError, httpx.TimeoutException) as exc:
                retryable = True
                failure = exc
            if not retryable or attempt >= self.retries:
                raise failure
            attempt += 1
            delay = self.backoff(attempt, _retry_after(response))
            log.info("%s %s failed (%s); retry %d/%d in %.1fs", method, path, failure, attempt, self.retries, delay)
            self._sleep(delay)

    def get_json(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params or None).json()

    # ---- ComfyUI API -----------------------------------------------------------------------

    def submit(
        self,
        workflow: dict[str, Any],
        *,
        prompt_id: str | None = None,
        priority: int | None = None,
        extra_data: dict[str, Any] | None = None,
    ) -> str:
        """POST /prompt (bare API-format workflow, or a body that already has 'prompt'); the prompt id."""
        body: dict[str, Any] = dict(workflow) if "prompt" in workflow and isinstance(workflow["prompt"], dict) \
            else {"prompt": workflow}
        body["client_id"] = self.client_id
        body["prompt_id"] = prompt_id or body.get("prompt_id") or str(uuid.uuid4())
        if priority is not None:
            body["priority"] = priority
        if extra_data is not None:
            body["extra_data"] = extra_data
        answer = self.request("POST", "/prompt", json=body).json()
        return str(answer["prompt_id"])

    def history(self, prompt_id: str) -> dict[str, Any] | None:
        """The job's history entry once it has finished, else None."""
        answer = self.get_json(f"/history/{prompt_id}")
        return answer.get(prompt_id) if isinstance(answer, dict) else None

    def interrupt(self, prompt_id: str | None = None) -> None:
        self.request("POST", "/interrupt", json={"prompt_id": prompt_id} if prompt_id else {})

    def wait(
        self,
        prompt_id: str,
        *,
        timeout: float | None = None,
        on_event: EventCallback | None = None,
        poll_interval: float = 1.0,
        use_websocket: bool = True,
    ) -> dict[str, Any]:
        """Wait for the job; its history entry. Follows the websocket (events to `on_event`),
        and polls /history when the socket cannot connect or drops."""
        deadline = None if timeout is None else time.monotonic() + timeout
        ws = self._connect_websocket() if use_websocket else None
        return self._wait(prompt_id, ws, deadline, on_event, poll_interval)

    def submit_and_wait(
        self,
        workflow: dict[str, Any],
        *,
        timeout: float | None = None,
        on_event: EventCallback | None = None,
        poll_interval: float = 1.0,
        use_websocket: bool = True,
        **submit_kwargs: Any,
    ) -> tuple[str, dict[str, Any]]:
        """Submit and wait; (prompt_id, history entry). The socket opens before the submission,
        so not even the first event of a fast job is missed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        ws = self._connect_websocket() if use_websocket else None
        try:
            prompt_id = self.submit(workflow, **submit_kwargs)
        except BaseException:
            _close_quietly(ws)
            raise
        return prompt_id, self._wait(prompt_id, ws, deadline, on_event, poll_interval)

    def _wait(
        self, prompt_id: str, ws: Any, deadline: float | None, on_event: EventCallback | None, poll_interval: float
    ) -> dict[str, Any]:
        if ws is not None:
            entry = self._wait_websocket(ws, prompt_id, deadline, on_event)
            if entry is not None:
                return entry
        return self._wait_polling(prompt_id, deadline, poll_interval)

    def _remaining(self, deadline: float | None) -> float | None:
        if deadline is None:
            return None
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("timed out waiting for the job")
        return remaining

    def _ws_url(self) -> str:
        parsed = urlparse(self.url)
        scheme = "wss" if parsed.scheme == "https" else "ws"
        return f"{scheme}://{parsed.netloc}{parsed.path}/ws?" + urlencode({"clientId": self.client_id})

    def _connect_websocket(self) -> Any:
        """A websocket-client connection to /ws, or None (then the wait polls)."""
        import websocket  # websocket-client

        try:
            ws = websocket.create_connection(self._ws_url(), timeout=10, header=self._auth_headers())
            ws.settimeout(2.0)
            return ws
        except Exception as exc:
            log.info("websocket unavailable (%s); polling instead", exc)
            return None

    def _wait_websocket(
        self, ws: Any, prompt_id: str, deadline: float | None, on_event: EventCallback | None
    ) -> dict[str, Any] | None:
        import websocket  # websocket-client

        try:
            entry = self.history(prompt_id)  # it may have ended before the socket opened
            if entry is not None:
                return entry
            last_check = time.monotonic()
            while True:
                self._remaining(deadline)
                try:
                    message = ws.recv()
                except websocket.WebSocketTimeoutException:
                    message = None
                if isinstance(message, str):
                    event = json.loads(message)
                    kind, data = event.get("type", ""), event.get("data") or {}
                    if data.get("prompt_id") == prompt_id and on_event is not None:
                        on_event(kind, data)
                    if kind == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id:
                        return self.history(prompt_id)
                elif isinstance(message, bytes) and on_event is not None:
                    on_event("binary", {"bytes": message, "prompt_id": prompt_id})
                if time.monotonic() - last_check > 10.0:  # belt and braces: a missed event
                    last_check = time.monotonic()
                    entry = self.history(prompt_id)
                    if entry is not None:
                        return entry
        except (websocket.WebSocketException, OSError) as exc:
            log.info("websocket dropped (%s); polling instead", exc)
            return None
        finally:
            _close_quietly(ws)

    def _wait_polling(self, prompt_id: str, deadline: float | None, poll_interval: float) -> dict[str, Any]:
        while True:
            entry = self.history(prompt_id)
            if entry is not None:
                return entry
            remaining = self._remaining(deadline)
            self._sleep(poll_interval if remaining is None else min(poll_interval, remaining))

    # ---- images ------------------------------------------------------------------------------

    @staticmethod
    def image_refs(entry: dict[str, Any], include_temp: bool = False) -> list[dict[str, Any]]:
        refs = []
        for ui in (entry.get("outputs") or {}).values():
            # Pictures and ComfyUI's videos ("images"), VideoHelperSuite's videos ("gifs"), audio.
            for image in (f for key in ("images", "gifs", "audio") for f in (ui or {}).get(key) or []):
                if include_temp or image.get("type", "output") == "output":
                    refs.append(image)
        return refs

    def fetch_image(self, ref: dict[str, Any]) -> bytes:
        params = {"filename": ref["filename"], "subfolder": ref.get("subfolder", ""), "type": ref.get("type", "output")}
        return self.request("GET", "/view", params=params).content

    def fetch_images(self, entry: dict[str, Any]) -> list[tuple[dict[str, Any], bytes]]:
        return [(ref, self.fetch_image(ref)) for ref in self.image_refs(entry)]

    def download(self, entry: dict[str, Any], directory: Path | str) -> list[Path]:
        """Save the job's output images into `directory` (flat; their own file names)."""
        target = Path(directory)
        target.mkdir(parents=True, exist_ok=True)
        written = []
        for ref, data in self.fetch_images(entry):
            path = target / Path(str(ref["filename"])).name
            path.write_bytes(data)
            written.append(path)
        return written

    def run(self, workflow: dict[str, Any], **wait_kwargs: Any) -> dict[str, Any]:
        """Submit and wait; the history entry. Raises JobFailed unless the job succeeded."""
        prompt_id, entry = self.submit_and_wait(workflow, **wait_kwargs)
        if not entry.get("status", {}).get("completed"):
            raise JobFailed(prompt_id, entry)
        return entry

    # ---- predictions -------------------------------------------------------------------------

    def predict(self, workflow: dict[str, Any], *, prediction_id: str | None = None,
                respond_async: bool = False, **inputs: Any) -> dict[str, Any]:
        """PUT /predictions/{id} (idempotent, so retries are safe); the prediction object."""
        prediction_id = prediction_id or uuid.uuid4().hex
        headers = {"Prefer": "respond-async"} if respond_async else None
        body = {"input": {"workflow_json": workflow, **inputs}}
        return self.request("PUT", f"/predictions/{prediction_id}", json=body, headers=headers).json()

    def prediction(self, prediction_id: str) -> dict[str, Any]:
        return self.get_json(f"/predictions/{prediction_id}")


def _close_quietly(ws: Any) -> None:
    if ws is None:
        return
    try:
        ws.close()
    except Exception:
        log.debug("closing the websocket failed", exc_info=True)


def _body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text


# ---- comfyd submit ---------------------------------------------------------------------------


class _Progress:
    """tqdm bar over the followed node's sampler steps."""

    def __init__(self) -> None:
        self.bar: Any = None
        self.node: str | None = None

    def __call__(self, event: str, data: dict[str, Any]) -> None:
        if event == "executing" and data.get("node") is not None and self.bar is None:
            print(f"running node {data['node']}", file=sys.stderr)
        if event != "progress":
            return
        from tqdm import tqdm

        if self.bar is None or self.node != data.get("node") or data["value"] < self.bar.n:
            self.close()
            self.node = data.get("node")
            self.bar = tqdm(total=data.get("max"), desc=f"node {self.node}", unit="step", file=sys.stderr)
        self.bar.update(data["value"] - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def submit_cli(args: Any) -> int:
    """`comfyd submit WORKFLOW.json --server URL [--api-key K] [--set N.I=V] [--output DIR]`.

    Exit codes: 0 succeeded, 1 the job failed (or the server could not be reached), 2 the
    server refused the request (invalid workflow, credentials).
    """
    import os

    from comfyd.runner import apply_sets
    from comfyd.workflow_formats.source import load_workflow_source

    try:  # JSON in any form, or a PNG/WEBP carrying a workflow; the server converts UI graphs
        workflow, _format = load_workflow_source("/dev/stdin" if args.workflow == "-" else Path(args.workflow))
    except ValueError as exc:
        print(f"error: cannot read workflow {args.workflow}: {exc}", file=sys.stderr)
        return 2
    try:
        sets = getattr(args, "set", None) or []
        if sets:  # --set names API-prompt nodes: convert a UI graph here first
            from comfyd.engine.errors import WorkflowParseError
            from comfyd.workflow_formats import ensure_api_format, is_ui_workflow

            if is_ui_workflow(workflow) or is_ui_workflow(workflow.get("prompt")):
                import comfyd.nodes  # noqa: F401  (node schemas give the widget layout)

                try:
                    workflow = ensure_api_format(workflow)
                except WorkflowParseError as exc:
                    raise ValueError(f"{exc.message} ({exc.details})") from None
        apply_sets(workflow, sets)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    api_key = getattr(args, "api_key", None) or os.environ.get("COMFYD_API_KEY")
    progress = _Progress()
    started = time.monotonic()
    with Client(args.server, api_key) as client:
        try:
            prompt_id, entry = client.submit_and_wait(workflow, on_event=progress)
        except ServerError as exc:
            if isinstance(exc.body, dict) and "node_errors" in exc.body:
                from comfyd.cli import print_invalid

                print_invalid(exc.body)
            else:
                print(f"error: {exc}", file=sys.stderr)
                if isinstance(exc.body, dict):
                    print(json.dumps(exc.body, indent=2), file=sys.stderr)
            return 2 if 400 <= exc.status < 500 else 1
        except (httpx.HTTPError, TimeoutError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        finally:
            progress.close()
        status = entry.get("status", {})
        elapsed = time.monotonic() - started
        if not status.get("completed"):
            print(f"job {prompt_id} ended after {elapsed:.1f} s: {status.get('reason') or status.get('status_str')}",
                  file=sys.stderr)
            for event, data in status.get("messages", []):
                if event == "execution_error":
                    print(f"  node {data.get('node_id')} ({data.get('node_type')}): {data.get('exception_type')}: "
                          f"{data.get('exception_message')}", file=sys.stderr)
            return 1
        print(f"job {prompt_id} succeeded in {elapsed:.1f} s", file=sys.stderr)
        output = getattr(args, "output", None)
        if output:
            for written in client.download(entry, output):
                print(f"wrote {written}")
        else:
            for ref in client.image_refs(entry):
                print(f"{client.url}/view?" + urlencode(
                    {"filename": ref["filename"], "subfolder": ref.get("subfolder", ""), "type": "output"}))
    return 0
