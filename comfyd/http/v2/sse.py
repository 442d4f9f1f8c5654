"""`GET /api/v2/jobs/{id}/events`: the live SSE stream of one job.

On connect: a `status` event with the current state, then the latest `progress` and `preview`;
then live events until the terminal `status`, after which the stream ends. Every event carries
an `id:` ("<process epoch>-<n>"); a client that reconnects with `Last-Event-ID` gets the events
it missed from the job's log in this process (or, when the log no longer reaches back or the
server restarted, the snapshot again plus the outputs so far). The store is polled every second,
so a status written elsewhere (another process, a cancel) is seen too; `: keepalive` comments
every 15 s keep proxies from closing an idle stream.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from comfyd.engine.interfaces import JobRecord
from comfyd.http.request_models import V2_RESPONSES
from comfyd.http.routes_comfy import require_key
from comfyd.http.state import get_state
from comfyd.http.v2.asset_files import output_assets
from comfyd.http.v2.errors import V2Error, not_found
from comfyd.http.v2.live import Event
from comfyd.http.v2.service import V2Service, base_url, get_v2
from comfyd.http.v2.views import TERMINAL, output_view, v2_status

router = APIRouter(prefix="/api/v2", responses=V2_RESPONSES)
EPOCH = uuid.uuid4().hex[:8]  # event ids of another process (before a restart) are not resumed
POLL_S = 1.0
KEEPALIVE_S = 15.0


def frame(seq: int, name: str, data: dict[str, Any]) -> str:
    return f"id: {EPOCH}-{seq}\nevent: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def parse_last_event_id(value: str | None) -> int | None:
    if not value:
        return None
    epoch, _, seq = value.strip().partition("-")
    if epoch != EPOCH or not seq.isdigit():
        return None
    return int(seq)


class _Stream:
    def __init__(self, v2: V2Service, job: JobRecord, base: str, last_event_id: str | None) -> None:
        self.v2 = v2
        self.job = job
        self.base = base
        self.resuming = bool(last_event_id)
        self.last_id = parse_last_event_id(last_event_id)
        self.queue: asyncio.Queue[Event] = asyncio.Queue()

    async def _render(self, event: Event) -> list[str]:
        seq, name, data = event
        if name != "output":
            return [frame(seq, name, data)]
        ui = {data["node_id"]: data["output"]}
        settings = self.v2.state.settings
        assets = await run_in_threadpool(output_assets, self.job, ui, self.v2.assets,
                                         self.v2.state.services.output_store, settings)
        return [frame(seq, "output", output_view(a, self.base)) for a in assets]

    async def _snapshot(self, seq: int, with_outputs: bool) -> tuple[list[str], bool]:
        store = self.v2.state.services.job_store
        job = await run_in_threadpool(store.get, self.job.id) or self.job
        self.job = job
        status = v2_status(job)
        position = await run_in_threadpool(self.v2.queue_position, job)
        frames = [frame(seq, "status", {"status": status, "queue_position": position})]
        live = self.v2.live.get(job.id)
        progress = await run_in_threadpool(self.v2.progress_of, job, status)
        if progress is not None:
            frames.append(frame(seq, "progress", progress))
        if live is not None and live.preview is not None and status not in TERMINAL:
            frames.append(frame(seq, "preview", live.preview))
        if with_outputs:
            for asset in await run_in_threadpool(self.v2.outputs_of, job):
                frames.append(frame(seq, "output", output_view(asset, self.base)))
        return frames, status in TERMINAL

    async def run(self, request: Request) -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        self.v2.live.bind_loop(loop)
        backlog, seq, unsubscribe = self.v2.live.subscribe(self.job, self.queue.put_nowait, self.last_id)
        try:
            if backlog is not None:
                for event in backlog:
                    for text in await self._render(event):
                        yield text
                    if event[1] == "status" and event[2].get("status") in TERMINAL:
                        return
                # Nothing missed said the job ended; the store may know better (ended elsewhere).
                job = await run_in_threadpool(self.v2.state.services.job_store.get, self.job.id)
                if job is not None:
                    self.v2.live.publish_status(job)
            else:
                frames, ended = await self._snapshot(seq, with_outputs=self.resuming)
                for text in frames:
                    yield text
                if ended:
                    return
            last_sent = loop.time()
            while True:
                try:
                    event = await asyncio.wait_for(self.queue.get(), POLL_S)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        return
                    job = await run_in_threadpool(self.v2.state.services.job_store.get, self.job.id)
                    if job is None:  # deleted or past its retention while we watched
                        yield frame(seq, "status", {"status": "expired"})
                        return
                    self.job = job
                    self.v2.live.publish_status(job)  # arrives through the queue if it changed
                    if loop.time() - last_sent >= KEEPALIVE_S:
                        last_sent = loop.time()
                        yield ": keepalive\n\n"
                    continue
                seq = event[0]
                for text in await self._render(event):
                    yield text
                last_sent = loop.time()
                if event[1] == "status" and event[2].get("status") in TERMINAL:
                    return
        finally:
            unsubscribe()


@router.get("/jobs/{job_id}/events")
async def job_events(request: Request, job_id: str, principal: str = Depends(require_key)) -> StreamingResponse:
    v2 = get_v2(request)
    job = await run_in_threadpool(get_state(request).services.job_store.get, job_id)
    if job is None:
        raise not_found(f"no job {job_id!r}")
    if not v2.open_stream(principal):
        raise V2Error(429, "too_many_streams", "too many event streams open; close one or poll the job",
                      headers={"Retry-After": "5"})
    stream = _Stream(v2, job, base_url(request), request.headers.get("last-event-id"))

    async def body() -> AsyncIterator[str]:
        try:
            async for text in stream.run(request):
                yield text
        finally:
            v2.close_stream(principal)

    return StreamingResponse(body(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
