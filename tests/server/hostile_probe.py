"""Reproduction of the hostile-input probe against a running comfyd server.

    python tests/server/hostile_probe.py http://127.0.0.1:8188 [--key KEY]

Sends every attack of the hostile-input issue that can be made over HTTP (lone surrogates, NaN /
Infinity / 1e999 anywhere, malformed extra_data, deep nesting, cross-site bodies and origins,
DNS-rebinding Host names, decompression bombs, oversized text and extra_data, reused ids,
405s), then reads every read route and checks each answers 2xx with strict JSON. Prints
`RESULT http_5xx=N`, `RESULT poisoned_routes=N` and `RESULT attacks=N`; exit status 1 if any
5xx or poisoned route was seen. test_hostile_input.py runs it against a test server.
The server needs no API keys for the cross-site checks (they apply to key-less servers only).
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
import zlib
from dataclasses import dataclass, field
from typing import Any

import httpx

# The workflow the attacks mutate: comfyd's test nodes (the test server), or with --checkpoint
# ComfyUI's default graph on that checkpoint (a real `comfyd serve`): TEXT_INPUT is a STRING
# input and FLOAT_INPUT a FLOAT input of it.
DEFAULT_WORKFLOW: dict[str, Any] = {
    "3": {"class_type": "TestSleep", "inputs": {"seconds": 0.0, "steps": 1, "tag": ""}},
    "9": {"class_type": "TestSave", "inputs": {"value": ["3", 0], "filename_prefix": "probe", "folder": "output"}},
}
TEXT_INPUT = ("3", "tag")
FLOAT_INPUT = ("3", "seconds")
READ_ROUTES = ("/history", "/queue", "/v1/status", "/prompt", "/system_stats", "/health-check")


@dataclass
class Report:
    attacks: int = 0
    server_errors: list[str] = field(default_factory=list)
    poisoned: list[str] = field(default_factory=list)
    job_ids: list[str] = field(default_factory=list)


def _strict(text: str) -> Any:
    def refuse(name: str) -> Any:
        raise ValueError(name)

    value = json.loads(text, parse_constant=refuse)
    text.encode("utf-8")
    return value


def _workflow(text: Any = None, number: Any = None) -> dict[str, Any]:
    workflow = json.loads(json.dumps(DEFAULT_WORKFLOW))
    if text is not None:
        workflow[TEXT_INPUT[0]]["inputs"][TEXT_INPUT[1]] = text
    if number is not None:
        workflow[FLOAT_INPUT[0]]["inputs"][FLOAT_INPUT[1]] = number
    return workflow


def _gif_bomb() -> bytes:
    out = bytearray(b"GIF89a" + struct.pack("<HH", 4096, 4096) + bytes([0x80, 0, 0]) + b"\x00\x00\x00\xff\xff\xff")
    for _ in range(200):
        out += b"\x21\xf9\x04\x00\x01\x00\x00\x00\x2c" + struct.pack("<HHHH", 0, 0, 1, 1) + b"\x00\x02\x02\x44\x01\x00"
    return bytes(out + b"\x3b")


def _png_header(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


def _attacks() -> list[tuple[str, str, dict[str, Any]]]:
    """(method, path, httpx request kwargs) for every attack."""
    nested = "[" * 900 + "]" * 900
    prompt_raw = lambda body: json.dumps(body)  # noqa: E731 - json.dumps writes NaN and escapes surrogates
    json_header = {"content-type": "application/json"}
    attacks: list[tuple[str, str, dict[str, Any]]] = []
    for text in ("\ud800", "x\udfff"):
        attacks.append(("POST", "/prompt", {"content": prompt_raw({"prompt": _workflow(text=text)}),
                                            "headers": json_header}))
    for constant in ("NaN", "Infinity", "-Infinity", "1e999"):
        workflow = prompt_raw(_workflow(number=12345.5)).replace("12345.5", constant)
        attacks += [
            ("POST", "/prompt", {"content": '{"prompt": ' + workflow + "}", "headers": json_header}),
            ("POST", "/predictions", {"content": '{"input": {"workflow_json": ' + workflow + "}}",
                                      "headers": json_header}),
            ("POST", "/v1/generate", {"content": '{"prompt": "x", "node_id": "3", "workflow": ' + workflow + "}",
                                      "headers": json_header}),
            ("POST", "/v1/generate", {"content": '{"prompt": "x", "cfg": ' + constant + "}", "headers": json_header}),
        ]
    for extra in ({"preview_method": ["auto"]}, {"preview_method": {"a": 1}}, {"webhook_events_filter": {"a": 1}},
                  {"webhook_events_filter": [["x"]]}, {"x": "\ud800"}, {"blob": "x" * (5 * 1024 * 1024)}):
        attacks.append(("POST", "/prompt", {"content": prompt_raw({"prompt": _workflow(), "extra_data": extra}),
                                            "headers": json_header}))
    attacks += [
        ("POST", "/prompt", {"content": '{"prompt": {}, "extra_data": ' + nested + "}", "headers": json_header}),
        ("POST", "/predictions", {"content": '{"input": ' + nested + "}", "headers": json_header}),
        ("POST", "/prompt", {"content": prompt_raw({"prompt": _workflow()}), "headers": {"content-type": "text/plain"}}),
        ("POST", "/prompt", {"data": {"prompt": "x"}}),
        ("POST", "/interrupt", {"json": {}, "headers": {"origin": "https://evil.example"}}),
        ("POST", "/queue", {"json": {"clear": True}, "headers": {"origin": "https://evil.example"}}),
        ("GET", "/history", {"headers": {"host": "rebind.evil.example"}}),
        ("POST", "/upload/image", {"files": {"image": ("bomb.gif", _gif_bomb(), "image/gif")}}),
        ("POST", "/upload/image", {"files": {"image": ("huge.png", _png_header(30000, 30000), "image/png")}}),
        ("POST", "/prompt", {"json": {"prompt": _workflow(text="x" * 200_001)}}),
        ("POST", "/prompt", {"json": {"prompt": _workflow(text="a"), "prompt_id": "probe-same"}}),
        ("POST", "/prompt", {"json": {"prompt": _workflow(text="b"), "prompt_id": "probe-same"}}),
        ("DELETE", "/prompt", {}),
        ("GET", "/interrupt", {}),
        ("POST", "/free", {"json": {"unload_models": "yes"}}),
    ]
    return attacks


def use_default_graph(checkpoint: str) -> None:
    """Mutate ComfyUI's default text-to-image graph instead of the test nodes' workflow."""
    global TEXT_INPUT, FLOAT_INPUT
    from importlib import resources

    graph = json.loads(resources.files("comfyd.workflows").joinpath("default_api.json").read_text())
    graph["4"]["inputs"]["ckpt_name"] = checkpoint
    graph["3"]["inputs"]["steps"] = 1
    graph["5"]["inputs"].update(width=64, height=64)
    DEFAULT_WORKFLOW.clear()
    DEFAULT_WORKFLOW.update(graph)
    TEXT_INPUT, FLOAT_INPUT = ("6", "text"), ("3", "cfg")


def probe(base_url: str, key: str | None = None) -> Report:
    report = Report()
    headers = {"x-api-key": key} if key else {}
    with httpx.Client(base_url=base_url, timeout=60.0, headers=headers) as http:
        for method, path, kwargs in _attacks():
            report.attacks += 1
            try:
                answer = http.request(method, path, **kwargs)
            except httpx.HTTPError as exc:  # the server dropped the connection: as bad as a 500
                report.server_errors.append(f"{method} {path}: no answer ({exc})")
                continue
            if answer.status_code >= 500:
                report.server_errors.append(f"{method} {path}: {answer.status_code} {answer.text[:200]}")
            elif answer.status_code == 200 and path == "/prompt":
                report.job_ids.append(answer.json().get("prompt_id", ""))
        ids = [j for j in report.job_ids if j]
        routes = [*READ_ROUTES, *(f"/history/{j}" for j in ids), *(f"/predictions/{j}" for j in ids)]
        for path in routes:
            try:
                answer = http.get(path)
            except httpx.HTTPError as exc:
                report.poisoned.append(f"GET {path}: no answer ({exc})")
                continue
            try:
                ok = answer.status_code < 300 and (path == "/prompt" or _strict(answer.text) is not None)
            except ValueError:
                ok = False
            if not ok:
                report.poisoned.append(f"GET {path}: {answer.status_code} {answer.text[:200]}")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("--key")
    parser.add_argument("--checkpoint", help="attack ComfyUI's default graph on this checkpoint (a real server)")
    args = parser.parse_args(argv)
    if args.checkpoint:
        use_default_graph(args.checkpoint)
    report = probe(args.url, args.key)
    for line in report.server_errors + report.poisoned:
        print(line)
    print(f"RESULT attacks={report.attacks}")
    print(f"RESULT http_5xx={len(report.server_errors)}")
    print(f"RESULT poisoned_routes={len(report.poisoned)}")
    return 1 if report.server_errors or report.poisoned else 0


if __name__ == "__main__":
    sys.exit(main())
