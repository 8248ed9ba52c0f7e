"""A tiny OpenAI-compatible server on loopback that misbehaves on request.

Each POST takes the next mode from a script (the last one repeats): `ok` answers with a valid
verdict, `5xx` with HTTP 503, `invalid-json` with a body that is not JSON, `bad-answer` with an
answer that is JSON but not the schema, `truncated` with finish_reason length, `hang` sleeps
past any sane client timeout, `trickle` sends a byte every 0.2 s forever (a per-read timeout
alone would never fire), `429` rate-limits.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

VALID = {"decision": "approve", "risk": 0.1, "reasons": ["concrete, licensed activity"]}


class FakeServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, script: list[str], answer: dict[str, Any] | str | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.script = list(script)
        self.answer = VALID if answer is None else answer
        self.requests: list[dict[str, Any]] = []
        self.headers_seen: list[dict[str, str]] = []
        self.stop = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def next_mode(self) -> str:
        return self.script.pop(0) if len(self.script) > 1 else self.script[0]


class _Handler(BaseHTTPRequestHandler):
    server: FakeServer

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.server.requests.append(json.loads(body))
        self.server.headers_seen.append(dict(self.headers))
        mode = self.server.next_mode()
        if mode == "hang":
            self.server.stop.wait(30)
            return
        if mode == "trickle":
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            while not self.server.stop.wait(0.2):
                try:
                    self.wfile.write(b" ")
                    self.wfile.flush()
                except OSError:
                    return
            return
        if mode in ("5xx", "429"):
            self._send(503 if mode == "5xx" else 429, b'{"error": "busy"}')
            return
        if mode == "invalid-json":
            self._send(200, b"<html>proxy error</html>")
            return
        if mode.startswith("yes=") or mode == "no-logprobs":
            self._logprobs(mode)
            return
        answer = self.server.answer
        content = answer if isinstance(answer, str) else json.dumps(answer)
        if mode == "bad-answer":
            content = json.dumps({"decision": "approve", "risk": 0.1, "reasons": [],
                                  "extra": 1})
        finish = "length" if mode == "truncated" else "stop"
        doc = {"id": "x", "object": "chat.completion", "model": "fake",
               "choices": [{"index": 0, "finish_reason": finish,
                            "message": {"role": "assistant", "content": content}}]}
        self._send(200, json.dumps(doc).encode())

    def _logprobs(self, mode: str) -> None:
        """`yes=P`: a one-token answer whose top logprobs give "Yes" probability P and " no"
        the rest (plus an unrelated token); `no-logprobs`: an answer without them."""
        import math

        choice: dict[str, Any] = {"index": 0, "finish_reason": "length",
                                  "message": {"role": "assistant", "content": "Yes"}}
        if mode.startswith("yes="):
            p = float(mode[4:])
            top = [{"token": "Yes", "logprob": math.log(max(p, 1e-9)) + math.log(0.9)},
                   {"token": " no", "logprob": math.log(max(1 - p, 1e-9)) + math.log(0.9)},
                   {"token": "The", "logprob": math.log(0.1)}]
            choice["logprobs"] = {"content": [{"token": "Yes", "logprob": -0.1,
                                               "top_logprobs": top}]}
        self._send(200, json.dumps({"choices": [choice]}).encode())

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@contextmanager
def fake_server(script: list[str],
                answer: dict[str, Any] | str | None = None) -> Iterator[FakeServer]:
    server = FakeServer(script, answer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stop.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def fhir_visit(patient: str = "P-1", note: str | None = None,
               extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """An ordinary FHIR R4 patient payload: an encounter with a heart rate, the patient's
    gender and birth date, optionally a note (and extra fields on the Observation)."""
    obs: dict[str, Any] = {
        "resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": f"Patient/{patient}"},
        "effectiveDateTime": "2026-02-28",
        "valueQuantity": {"value": 70, "unit": "/min", "system": "http://unitsofmeasure.org",
                          "code": "/min"}}
    if note is not None:
        obs["note"] = [{"text": note}]
    obs.update(extra or {})
    return {"resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": {"resourceType": "Patient", "id": patient, "gender": "female",
                      "birthDate": "1986-04-02"}},
        {"resource": {"resourceType": "Encounter", "status": "finished",
                      "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                                "code": "AMB"},
                      "subject": {"reference": f"Patient/{patient}"},
                      "period": {"start": "2026-02-28"}}},
        {"resource": obs}]}
