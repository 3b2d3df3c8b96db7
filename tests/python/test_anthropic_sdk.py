"""The Anthropic Messages API (`/v1/messages`) seen by the official Anthropic SDK for Python.

Against a real `sluice serve --provider scripted`: `messages.stream` gives the scripted text
exactly (`text_stream`) and a final message with usage and `stop_reason: end_turn`; the raw
events come in Anthropic's order and shapes (`message_start`, `content_block_start`,
`content_block_delta`, `content_block_stop`, `message_delta`, `message_stop`, `ping` while the
first token is awaited); `messages.create` answers the whole message; a client that leaves
mid-stream stops the upstream (`sluice_upstream_cancelled_total`); `count_tokens` counts with
the local model; errors come in Anthropic's shape as the SDK's typed exceptions; keys are
accepted as `x-api-key` and as `Authorization: Bearer`.

Note: this SDK sends `api_key=` as `Authorization: Bearer`; `x-api-key` (what Claude Code and
older SDKs send) is given as a header here.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import anthropic
import openai
import pytest
from anthropic import Anthropic, AsyncAnthropic

from sdk_support import (
    EXPECTED,
    INSTRUCTIONS,
    PROMPT,
    TOOL_CALL,
    cancelled,
    scripted,
    wait_cancelled,
    word_tokens,
    words,
)

MESSAGES = [{"role": "user", "content": PROMPT}]
MAX_TOKENS = 1024  # more than the scripted text's tokens: the answer ends by itself


@pytest.fixture(autouse=True)
def no_ambient_credentials(monkeypatch, tmp_path):
    """The SDK looks for credentials in ANTHROPIC_* variables and in profiles under the home
    directory: none of a developer's may reach these tests."""
    for name in list(os.environ):
        if name.startswith("ANTHROPIC_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path))


def client(server, **options) -> Anthropic:
    """A client of `server`; `api_key` is sent as `Authorization: Bearer` by this SDK."""
    options.setdefault("timeout", 60)
    if "auth_token" not in options:
        options.setdefault("api_key", "unused")
    return Anthropic(base_url=server.origin, **options)


def x_api_key_client(server, key: str, **options) -> Anthropic:
    """A client that sends its key as `x-api-key` (and no Authorization header)."""
    return Anthropic(base_url=server.origin, default_headers={"x-api-key": key}, timeout=60, **options)


def no_key_client(server) -> Anthropic:
    """A client that sends no key at all."""
    return Anthropic(base_url=server.origin, default_headers={"Authorization": anthropic.Omit()}, timeout=60)


def check_usage(usage) -> None:
    assert usage is not None
    assert usage.input_tokens > 0
    assert usage.output_tokens > 0


def check_error(error: anthropic.APIStatusError, status: int, kind: str) -> None:
    """An error response in Anthropic's shape: `{"type": "error", "error": {"type", "message"}}`."""
    assert error.status_code == status, error
    body = error.body
    assert isinstance(body, dict) and body.get("type") == "error", body
    assert body["error"]["type"] == kind, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"], body


def test_stream_gives_the_exact_text_and_the_final_message(fast):
    with client(fast).messages.stream(
        model="scripted", max_tokens=MAX_TOKENS, system=INSTRUCTIONS, messages=MESSAGES
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()

    assert text == EXPECTED
    assert final.id.startswith("msg_")
    assert final.type == "message"
    assert final.role == "assistant"
    assert final.model == "scripted"
    assert [block.type for block in final.content] == ["text"]
    assert final.content[0].text == EXPECTED
    assert final.stop_reason == "end_turn"
    assert final.stop_sequence is None
    check_usage(final.usage)
    assert final.usage.output_tokens == len(word_tokens(EXPECTED))


def test_raw_stream_events_come_in_anthropics_order_and_shapes(fast):
    stream = client(fast).messages.create(
        model="scripted", max_tokens=MAX_TOKENS, system=INSTRUCTIONS, messages=MESSAGES, stream=True
    )
    with stream:
        events = list(stream)  # the SDK drops `ping`

    types = [e.type for e in events]
    deltas = len(types) - 5
    assert types == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * deltas,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ], types
    assert deltas >= 1

    start = events[0].message
    assert start.id.startswith("msg_") and start.role == "assistant" and start.type == "message"
    assert start.model == "scripted"
    assert start.content == []
    assert start.stop_reason is None

    block = events[1]
    assert block.index == 0
    assert block.content_block.type == "text" and block.content_block.text == ""
    for event in events[2:-3]:
        assert event.index == 0 and event.delta.type == "text_delta"
    assert "".join(e.delta.text for e in events[2:-3]) == EXPECTED
    assert events[-3].index == 0

    message_delta = events[-2]
    assert message_delta.delta.stop_reason == "end_turn"
    assert message_delta.delta.stop_sequence is None
    assert message_delta.usage.output_tokens == len(word_tokens(EXPECTED))
    # The input's count, known by the end (message_start goes out before the upstream answers).
    assert message_delta.usage.input_tokens > 0


def test_create_answers_the_whole_message(fast):
    anthropic_client = client(fast)
    # A conversation, the system prompt as blocks, the last user turn as content blocks: the
    # scripted model echoes the last user message.
    message = anthropic_client.messages.create(
        model="scripted",
        max_tokens=MAX_TOKENS,
        system=[{"type": "text", "text": INSTRUCTIONS}],
        messages=[
            {"role": "user", "content": "An earlier question."},
            {"role": "assistant", "content": "An earlier answer."},
            {"role": "user", "content": [{"type": "text", "text": PROMPT}]},
        ],
        metadata={"user_id": "test-user"},
        # This SDK has no temperature or top_p arguments any more; the API still takes them.
        extra_body={"temperature": 0.5, "top_p": 0.9},
    )
    assert message.id.startswith("msg_")
    assert message.type == "message" and message.role == "assistant"
    assert message.model == "scripted"
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == EXPECTED
    assert message.stop_reason == "end_turn"
    assert message.stop_sequence is None
    check_usage(message.usage)

    with anthropic_client.messages.stream(
        model="scripted", max_tokens=MAX_TOKENS, system=INSTRUCTIONS, messages=MESSAGES
    ) as stream:
        streamed = stream.get_final_message()
    again = anthropic_client.messages.create(
        model="scripted", max_tokens=MAX_TOKENS, system=INSTRUCTIONS, messages=MESSAGES
    )
    assert again.id != message.id
    assert again.content[0].text == EXPECTED
    assert again.usage.input_tokens == streamed.usage.input_tokens
    assert again.usage.output_tokens == streamed.usage.output_tokens


def test_anthropic_version_and_beta_headers_are_accepted(fast):
    message = client(fast).messages.create(
        model="scripted",
        max_tokens=MAX_TOKENS,
        system=INSTRUCTIONS,
        messages=MESSAGES,
        extra_headers={"anthropic-version": "2023-06-01", "anthropic-beta": "prompt-caching-2024-07-31"},
    )
    assert message.content[0].text == EXPECTED


def test_max_tokens_stops_the_answer_with_stop_reason_max_tokens(fast):
    cut = "".join(word_tokens(EXPECTED)[:3])
    anthropic_client = client(fast)
    message = anthropic_client.messages.create(
        model="scripted", max_tokens=3, system=INSTRUCTIONS, messages=MESSAGES
    )
    assert message.content[0].text == cut
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 3

    with anthropic_client.messages.stream(
        model="scripted", max_tokens=3, system=INSTRUCTIONS, messages=MESSAGES
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == cut
    assert final.stop_reason == "max_tokens"
    assert final.usage.output_tokens == 3


def test_async_client_streams_the_exact_text(fast):
    async def run():
        async with AsyncAnthropic(base_url=fast.origin, api_key="unused") as aclient:
            async with aclient.messages.stream(
                model="scripted", max_tokens=MAX_TOKENS, system=INSTRUCTIONS, messages=MESSAGES
            ) as stream:
                text = "".join([t async for t in stream.text_stream])
                return text, await stream.get_final_message()

    text, final = asyncio.run(run())
    assert text == EXPECTED
    assert final.stop_reason == "end_turn"


def test_ping_while_the_first_token_is_awaited(sluice_servers):
    # The first token after 3 s, keep-alives every second: pings come before it.
    slow_start = scripted(
        sluice_servers, env={"SLUICE_SCRIPTED_TTFT_MS": "3000"}, args=["--keep-alive", "1"]
    )
    with client(slow_start).messages.with_streaming_response.create(
        model="scripted", max_tokens=MAX_TOKENS, system=INSTRUCTIONS, messages=MESSAGES, stream=True
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        names = [line[len("event:") :].strip() for line in response.iter_lines() if line.startswith("event:")]
    # Pings may come anywhere (Anthropic's stream), the rest in order.
    assert [n for n in names if n != "ping"][0] == "message_start", names
    first_delta = names.index("content_block_delta")
    assert "ping" in names[:first_delta], names
    assert names[-1] == "message_stop", names


def test_leaving_mid_stream_cancels_the_upstream(paced):
    anthropic_client = client(paced)
    before = cancelled(paced)
    long_prompt = [{"role": "user", "content": words(2000)}]  # 100 s of answer

    with anthropic_client.messages.stream(
        model="scripted", max_tokens=4096, messages=long_prompt
    ) as stream:
        for text in stream.text_stream:
            if text.strip():
                break
    wait_cancelled(paced, before + 1)

    raw = anthropic_client.messages.create(
        model="scripted", max_tokens=4096, messages=long_prompt, stream=True
    )
    for event in raw:
        if event.type == "content_block_delta":
            break
    raw.close()
    wait_cancelled(paced, before + 2)

    async def run_async():
        async with AsyncAnthropic(base_url=paced.origin, api_key="unused") as aclient:
            async with aclient.messages.stream(
                model="scripted", max_tokens=4096, messages=long_prompt
            ) as stream:
                async for text in stream.text_stream:
                    if text.strip():
                        break

    asyncio.run(run_async())
    wait_cancelled(paced, before + 3)


def test_a_whole_message_whose_client_gives_up_cancels_the_upstream(paced):
    before = cancelled(paced)
    impatient = client(paced, timeout=1.0, max_retries=0)
    with pytest.raises(anthropic.APITimeoutError):
        impatient.messages.create(
            model="scripted", max_tokens=4096, messages=[{"role": "user", "content": words(2000)}]
        )
    wait_cancelled(paced, before + 1)


MODEL = Path(__file__).resolve().parents[2] / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_count_tokens_with_the_local_model(sluice_servers):
    if not MODEL.is_file():
        pytest.skip(f"{MODEL} is missing: scripts/fetch-model.sh fetches it")
    server = sluice_servers(["--store", "memory", "--provider", "local", "--model", str(MODEL)])
    anthropic_client = client(server)

    short = anthropic_client.messages.count_tokens(
        model="smollm2-135m", messages=[{"role": "user", "content": "Name one colour."}]
    )
    assert short.input_tokens > 0
    longer = anthropic_client.messages.count_tokens(
        model="smollm2-135m",
        messages=[{"role": "user", "content": "Name one colour, and say in a sentence why."}],
    )
    assert longer.input_tokens > short.input_tokens
    # (Without a system prompt the model's chat template puts in its own, longer than most.)
    brief, verbose = (
        anthropic_client.messages.count_tokens(
            model="smollm2-135m",
            system=system,
            messages=[{"role": "user", "content": "Name one colour."}],
        ).input_tokens
        for system in ("Be brief.", "Be brief. Answer in one word, in lower case, and nothing else.")
    )
    assert 0 < brief < verbose
    # The count is the prompt the model is given: what a message reports as its input.
    message = anthropic_client.messages.create(
        model="smollm2-135m",
        max_tokens=4,
        extra_body={"temperature": 0},
        messages=[{"role": "user", "content": "Name one colour."}],
    )
    assert message.usage.input_tokens == short.input_tokens


def test_count_tokens_where_the_provider_cannot_count_is_an_error_in_anthropics_shape(fast):
    # The scripted provider has no tokenizer: the server says so (501) rather than guess.
    with pytest.raises(anthropic.APIStatusError) as caught:
        client(fast, max_retries=0).messages.count_tokens(model="scripted", messages=MESSAGES)
    check_error(caught.value, 501, "api_error")


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_unknown_model_is_not_found(fast, stream):
    with pytest.raises(anthropic.NotFoundError) as caught:
        client(fast).messages.create(
            model="no-such-model", max_tokens=MAX_TOKENS, messages=MESSAGES, stream=stream
        )
    check_error(caught.value, 404, "not_found_error")
    with pytest.raises(anthropic.NotFoundError):
        client(fast).messages.count_tokens(model="no-such-model", messages=MESSAGES)


def test_malformed_requests_are_bad_requests(fast):
    anthropic_client = client(fast)
    cases = [
        {"messages": []},
        {"messages": [{"role": "robot", "content": PROMPT}]},
        {"messages": MESSAGES, "max_tokens": 0},
        {"messages": MESSAGES, "extra_body": {"temperature": 7}},
        {"messages": MESSAGES, "extra_body": {"top_p": -1}},
        {"messages": MESSAGES, "extra_body": {"max_tokens": None}},
        {"messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]},
    ]
    for fields in cases:
        with pytest.raises(anthropic.BadRequestError) as caught:
            anthropic_client.messages.create(model="scripted", **{"max_tokens": MAX_TOKENS, **fields})
        check_error(caught.value, 400, "invalid_request_error")
    with pytest.raises(anthropic.BadRequestError) as caught:
        anthropic_client.post(
            "/v1/messages",
            cast_to=object,
            content=b'{"model": "scripted", "messages": ',
            options={"headers": {"Content-Type": "application/json"}},
        )
    check_error(caught.value, 400, "invalid_request_error")


def test_an_upstream_failure_is_an_error_in_anthropics_shape(sluice_servers):
    failing = scripted(sluice_servers, env={"SLUICE_SCRIPTED_FAIL_AFTER": "3"})
    anthropic_client = client(failing, max_retries=0)

    text = ""
    with pytest.raises(anthropic.APIStatusError) as caught:
        with anthropic_client.messages.stream(
            model="scripted", max_tokens=MAX_TOKENS, system=INSTRUCTIONS, messages=MESSAGES
        ) as stream:
            for piece in stream.text_stream:
                text += piece
    body = caught.value.body
    assert isinstance(body, dict) and body["type"] == "error", body
    assert body["error"]["type"] in ("api_error", "overloaded_error"), body
    assert "scripted failure after 3 tokens" in body["error"]["message"], body
    assert text and EXPECTED.startswith(text) and text != EXPECTED

    with pytest.raises(anthropic.APIStatusError) as caught:
        anthropic_client.messages.create(
            model="scripted", max_tokens=MAX_TOKENS, system=INSTRUCTIONS, messages=MESSAGES
        )
    assert caught.value.status_code >= 500
    assert caught.value.body["type"] == "error"


def test_keys_as_x_api_key_or_bearer(sluice_servers):
    keyed = scripted(sluice_servers, args=["--api-key", "sk-good"])

    for accepted in (
        x_api_key_client(keyed, "sk-good"),
        client(keyed, api_key="sk-good"),  # Authorization: Bearer
        client(keyed, auth_token="sk-good"),  # Authorization: Bearer
    ):
        message = accepted.messages.create(
            model="scripted", max_tokens=MAX_TOKENS, system=INSTRUCTIONS, messages=MESSAGES
        )
        assert message.content[0].text == EXPECTED
        with accepted.messages.stream(
            model="scripted", max_tokens=MAX_TOKENS, system=INSTRUCTIONS, messages=MESSAGES
        ) as stream:
            assert "".join(stream.text_stream) == EXPECTED

    for refused in (
        x_api_key_client(keyed, "sk-wrong"),
        client(keyed, api_key="sk-wrong"),
        no_key_client(keyed),
    ):
        for stream in (False, True):
            with pytest.raises(anthropic.AuthenticationError) as caught:
                refused.messages.create(
                    model="scripted", max_tokens=MAX_TOKENS, messages=MESSAGES, stream=stream
                )
            check_error(caught.value, 401, "authentication_error")
        with pytest.raises(anthropic.AuthenticationError):
            refused.messages.count_tokens(model="scripted", messages=MESSAGES)


WEATHER_TOOL = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
        "required": ["city"],
    },
}


def test_a_scripted_tool_call_arrives_as_tool_use(sluice_servers):
    server = scripted(
        sluice_servers,
        env={
            "SLUICE_SCRIPTED_TEXT": "Let me check.",
            "SLUICE_SCRIPTED_TOOL_CALLS": json.dumps([TOOL_CALL]),
        },
    )
    # The scripted provider's tool calls, seen through Chat Completions first, so that a
    # Messages bug cannot pass for a knob that does nothing.
    probe = openai.OpenAI(base_url=f"{server.origin}/v1", api_key="unused").chat.completions.create(
        model="scripted", messages=[{"role": "user", "content": "Weather?"}]
    )
    assert probe.choices[0].message.tool_calls, "SLUICE_SCRIPTED_TOOL_CALLS made no tool call"
    anthropic_client = client(server)
    ask = {"role": "user", "content": "Weather in Paris?"}

    raw = anthropic_client.messages.create(
        model="scripted", max_tokens=MAX_TOKENS, messages=[ask], tools=[WEATHER_TOOL], stream=True
    )
    with raw:
        events = list(raw)
    types = [e.type for e in events]
    starts = [e for e in events if e.type == "content_block_start"]
    assert [(e.index, e.content_block.type) for e in starts] == [(0, "text"), (1, "tool_use")], types
    tool = starts[1].content_block
    assert tool.name == TOOL_CALL["name"] and tool.id and tool.input == {}
    json_deltas = [
        e for e in events if e.type == "content_block_delta" and e.delta.type == "input_json_delta"
    ]
    assert json_deltas and all(e.index == 1 for e in json_deltas)
    assert json.loads("".join(e.delta.partial_json for e in json_deltas)) == json.loads(
        TOOL_CALL["arguments"]
    )
    assert [e.index for e in events if e.type == "content_block_stop"] == [0, 1]
    message_delta = [e for e in events if e.type == "message_delta"][0]
    assert message_delta.delta.stop_reason == "tool_use"

    with anthropic_client.messages.stream(
        model="scripted", max_tokens=MAX_TOKENS, messages=[ask], tools=[WEATHER_TOOL]
    ) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    assert [block.type for block in final.content] == ["text", "tool_use"]
    assert final.content[0].text == "Let me check."
    use = final.content[1]
    assert use.name == TOOL_CALL["name"]
    assert use.input == json.loads(TOOL_CALL["arguments"])

    whole = anthropic_client.messages.create(
        model="scripted", max_tokens=MAX_TOKENS, messages=[ask], tools=[WEATHER_TOOL]
    )
    assert whole.stop_reason == "tool_use"
    (use,) = [block for block in whole.content if block.type == "tool_use"]
    assert use.input == json.loads(TOOL_CALL["arguments"])

    # The result goes back as a tool_result block.
    follow_up = anthropic_client.messages.create(
        model="scripted",
        max_tokens=MAX_TOKENS,
        tools=[WEATHER_TOOL],
        messages=[
            ask,
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": whole.content[0].text},
                    {"type": "tool_use", "id": use.id, "name": use.name, "input": use.input},
                ],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "18 °C"}],
            },
        ],
    )
    assert follow_up.stop_reason in ("end_turn", "tool_use")
