"""Traces over OpenTelemetry: `sluice serve --otlp-endpoint` sends one span per answer to an
OTLP/HTTP receiver. The receiver here decodes every request with OpenTelemetry's own protocol
definitions (the `opentelemetry-proto` package, protobuf's JSON parser: an unknown field or a
wrong type is an error), and the test reads the GenAI attributes back: model, provider, tokens,
finish reason, time to the first token, and whether the answer was stopped.
"""

from __future__ import annotations

import http.server
import json
import re
import threading
import time

import pytest
from google.protobuf import json_format
from openai import OpenAI
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from sdk_support import words


class Receiver(http.server.ThreadingHTTPServer):
    """An OTLP/HTTP traces receiver on a port of its own: each POST to /v1/traces decoded."""

    def __init__(self):
        self.requests: list[tuple[dict, ExportTraceServiceRequest]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status = 200
                if self.path != "/v1/traces" or self.headers["Content-Type"] != "application/json":
                    status = 404
                else:
                    raw = json.loads(body)
                    decoded = json_format.Parse(body, ExportTraceServiceRequest())
                    with receiver.lock:
                        receiver.requests.append((raw, decoded))
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def spans(self, count: int) -> list[tuple[dict, Span, dict]]:
        """Waits for `count` spans: each as sent (JSON), as decoded, and its resource's
        attributes."""
        deadline = time.monotonic() + 60
        while True:
            with self.lock:
                found = [
                    (raw_span, span, attributes(resource.resource))
                    for raw, request in self.requests
                    for raw_resource, resource in zip(raw["resourceSpans"], request.resource_spans)
                    for raw_scope, scope in zip(raw_resource["scopeSpans"], resource.scope_spans)
                    for raw_span, span in zip(raw_scope["spans"], scope.spans)
                ]
            if len(found) >= count:
                return found
            assert time.monotonic() < deadline, f"{len(found)} of {count} spans after 60 s"
            time.sleep(0.05)


def attributes(item) -> dict:
    """Attributes as a dict of Python values."""
    def value(v):
        kind = v.WhichOneof("value")
        if kind == "array_value":
            return [value(x) for x in v.array_value.values]
        return getattr(v, kind)
    return {a.key: value(a.value) for a in item.attributes}


@pytest.fixture(scope="module")
def receiver():
    server = Receiver()
    yield server
    server.shutdown()


def test_every_answer_is_one_span_with_the_genai_attributes(sluice_servers, receiver):
    server = sluice_servers(
        ["--store", "memory", "--provider", "scripted", "--generation-grace", "0",
         "--otlp-endpoint", f"http://127.0.0.1:{receiver.server_port}"],
        {"OTEL_SERVICE_NAME": "sluice-under-test", "SLUICE_SCRIPTED_TEXT": "{prompt}",
         "SLUICE_SCRIPTED_TOKENS_PER_SECOND": "20", "SLUICE_SCRIPTED_TTFT_MS": "0"},
    )
    client = OpenAI(base_url=f"{server.origin}/v1", api_key="unused")

    # One answer read to its end, with usage.
    chunks = list(client.chat.completions.create(
        model="scripted", messages=[{"role": "user", "content": words(6)}], stream=True,
        max_tokens=100, stream_options={"include_usage": True}))
    usage = next(c.usage for c in chunks if c.usage)
    # One stopped after its first words: the reader leaves, the answer is cancelled.
    with client.chat.completions.create(
            model="scripted", messages=[{"role": "user", "content": words(400)}],
            stream=True) as stream:
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                break

    spans = receiver.spans(2)
    assert len(spans) == 2, spans
    (done_raw, done, resource), (stopped_raw, stopped, _) = spans
    assert resource["service.name"] == "sluice-under-test"
    for raw in (done_raw, stopped_raw):
        # OTLP/JSON writes ids in hex (protobuf's own JSON would use base64).
        assert re.fullmatch(r"[0-9a-f]{32}", raw["traceId"]), raw
        assert re.fullmatch(r"[0-9a-f]{16}", raw["spanId"]), raw
    assert done_raw["traceId"] != stopped_raw["traceId"]

    assert done.name == "chat scripted"
    assert done.kind == Span.SPAN_KIND_CLIENT
    assert done.end_time_unix_nano > done.start_time_unix_nano > 0
    a = attributes(done)
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.provider.name"] == "sluice.scripted"
    assert a["gen_ai.request.model"] == "scripted"
    assert a["gen_ai.request.max_tokens"] == 100
    assert a["gen_ai.usage.input_tokens"] == usage.prompt_tokens
    assert a["gen_ai.usage.output_tokens"] == usage.completion_tokens == 6
    assert a["gen_ai.response.finish_reasons"] == ["stop"]
    assert 0 < a["sluice.time_to_first_token"] < (done.end_time_unix_nano - done.start_time_unix_nano) / 1e9
    assert a["sluice.cancelled"] is False
    assert a["sluice.deltas"] == 6
    assert done.status.code == 0

    b = attributes(stopped)
    assert b["sluice.cancelled"] is True
    assert "gen_ai.response.finish_reasons" not in b
    assert 1 <= b["sluice.deltas"] < 400
