"""The OpenAI Responses API (`/v1/responses`) seen by the official OpenAI SDK for Python.

Against a real `sluice serve --provider scripted`: a streamed response reassembles the scripted
text exactly, its events numbered in strictly increasing order and ended by one terminal event;
a background response read part-way, left, and resumed with `starting_after` gives the text
once, with no gap and no repeat; `responses.cancel` and a streaming client that leaves both stop
the upstream (`sluice_upstream_cancelled_total`); `max_output_tokens` ends a response
`incomplete`; a scripted tool call arrives as function-call events; errors surface as the SDK's
typed exceptions; and where API keys are configured every route needs one.
"""

from __future__ import annotations

import asyncio
import json

import openai
import pytest
from openai import AsyncOpenAI, OpenAI

from sdk_support import (
    EXPECTED,
    INSTRUCTIONS,
    PROMPT,
    TOOL_CALL,
    cancelled,
    scripted,
    wait_cancelled,
    wait_until,
    word_tokens,
    words,
)

DELTA = "response.output_text.delta"
TERMINAL = {"response.completed", "response.incomplete", "response.failed"}


def client(server, **options) -> OpenAI:
    options.setdefault("timeout", 60)
    return OpenAI(base_url=f"{server.origin}/v1", api_key=options.pop("api_key", "unused"), **options)


def text_of(events) -> str:
    return "".join(e.delta for e in events if e.type == DELTA)


def deltas(events) -> int:
    return sum(e.type == DELTA for e in events)


def check_order(events) -> None:
    numbers = [e.sequence_number for e in events]
    assert all(a < b for a, b in zip(numbers, numbers[1:])), f"not strictly increasing: {numbers}"


def check_usage(usage) -> None:
    assert usage is not None
    assert usage.input_tokens > 0
    assert usage.output_tokens > 0
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens


def check_id(response_id: str) -> None:
    # `resp_` and at least 128 random bits: 32 hex digits (or 22 in base64url).
    assert response_id.startswith("resp_"), response_id
    assert len(response_id) - len("resp_") >= 22, response_id


def read(stream, until_deltas: int) -> list:
    """Events of `stream` until `until_deltas` text deltas have come; then the stream is closed
    (the client leaves)."""
    events = []
    with stream:
        for event in stream:
            events.append(event)
            if deltas(events) >= until_deltas:
                break
    return events


def test_streamed_response_reassembles_the_exact_text(fast):
    openai_client = client(fast)
    with openai_client.responses.create(
        model="scripted", instructions=INSTRUCTIONS, input=PROMPT, stream=True
    ) as stream:
        events = list(stream)

    types = [e.type for e in events]
    check_order(events)
    assert text_of(events) == EXPECTED
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert types[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert set(types[4:-4]) == {DELTA}
    assert sum(t in TERMINAL for t in types) == 1

    created, completed = events[0].response, events[-1].response
    check_id(created.id)
    assert completed.id == created.id
    assert events[1].response.id == created.id
    assert created.object == "response"
    assert created.model == "scripted"
    assert created.instructions == INSTRUCTIONS
    assert created.status == "in_progress"
    assert created.output == []
    assert created.usage is None

    item = events[2].item
    assert item.type == "message" and item.role == "assistant" and item.status == "in_progress"
    for event in events[2:-1]:
        assert event.output_index == 0
        if hasattr(event, "item_id"):
            assert event.item_id == item.id
    assert events[-4].text == EXPECTED
    assert events[-3].part.text == EXPECTED
    done = events[-2].item
    assert done.id == item.id and done.status == "completed"
    assert done.content[0].type == "output_text" and done.content[0].text == EXPECTED

    assert completed.status == "completed"
    assert completed.output_text == EXPECTED
    assert completed.error is None and completed.incomplete_details is None
    check_usage(completed.usage)

    # Stored by default: retrievable whole after its end.
    stored = openai_client.responses.retrieve(created.id)
    assert stored.id == created.id
    assert stored.status == "completed"
    assert stored.output_text == EXPECTED
    assert stored.usage == completed.usage


def test_stream_helper_accumulates_the_final_response(fast):
    with client(fast).responses.stream(
        model="scripted",
        instructions=INSTRUCTIONS,
        input=[{"role": "user", "content": [{"type": "input_text", "text": PROMPT}]}],
    ) as stream:
        text = "".join(e.delta for e in stream if e.type == DELTA)
        final = stream.get_final_response()
    assert text == EXPECTED
    assert final.status == "completed"
    assert final.output_text == EXPECTED
    check_usage(final.usage)


def test_whole_response_has_the_exact_text_and_usage(fast):
    openai_client = client(fast)
    # A conversation: the scripted model echoes the last user message.
    response = openai_client.responses.create(
        model="scripted",
        instructions=INSTRUCTIONS,
        input=[
            {"role": "user", "content": "An earlier question."},
            {"role": "assistant", "content": "An earlier answer."},
            {"type": "message", "role": "user", "content": PROMPT},
        ],
        metadata={"purpose": "test"},
    )
    check_id(response.id)
    assert response.object == "response"
    assert response.model == "scripted"
    assert response.status == "completed"
    assert response.metadata == {"purpose": "test"}
    assert response.output_text == EXPECTED
    assert len(response.output) == 1
    message = response.output[0]
    assert message.type == "message" and message.role == "assistant"
    assert message.status == "completed"
    assert [part.type for part in message.content] == ["output_text"]
    check_usage(response.usage)

    again = openai_client.responses.create(model="scripted", input=PROMPT, instructions=INSTRUCTIONS)
    assert again.id != response.id
    assert again.output_text == EXPECTED
    assert openai_client.responses.retrieve(response.id).output_text == EXPECTED


def test_a_response_with_store_false_is_answered_but_not_kept(fast):
    openai_client = client(fast)
    response = openai_client.responses.create(
        model="scripted", input=PROMPT, instructions=INSTRUCTIONS, store=False
    )
    assert response.status == "completed"
    assert response.output_text == EXPECTED
    assert response.store is False
    with openai_client.responses.create(
        model="scripted", input=PROMPT, instructions=INSTRUCTIONS, store=False, stream=True
    ) as stream:
        events = list(stream)
    check_order(events)
    assert text_of(events) == EXPECTED
    assert events[-1].type == "response.completed"
    for response_id in (response.id, events[-1].response.id):
        with pytest.raises(openai.NotFoundError):
            openai_client.responses.retrieve(response_id)


def test_async_client_streams_the_exact_text(fast):
    async def run():
        async with AsyncOpenAI(base_url=f"{fast.origin}/v1", api_key="unused") as aclient:
            stream = await aclient.responses.create(
                model="scripted", instructions=INSTRUCTIONS, input=PROMPT, stream=True
            )
            return [event async for event in stream]

    events = asyncio.run(run())
    check_order(events)
    assert text_of(events) == EXPECTED
    assert events[-1].type == "response.completed"


def test_background_response_read_part_way_left_and_resumed_gives_the_text_once(paced):
    openai_client = client(paced)
    prompt = words(60)  # 3 s of answer
    before = cancelled(paced)

    created = openai_client.responses.create(model="scripted", input=prompt, background=True)
    check_id(created.id)
    assert created.background is True
    assert created.status in ("queued", "in_progress")

    # A first reader, from the start, leaves after 5 deltas; a second resumes after the last
    # event it saw and leaves after 5 more; a third resumes to the end.
    first = read(openai_client.responses.retrieve(created.id, stream=True), until_deltas=5)
    assert first[0].type == "response.created"
    assert first[0].response.id == created.id
    running = openai_client.responses.retrieve(created.id)
    assert running.status == "in_progress"
    assert prompt.startswith(running.output_text)

    second = read(
        openai_client.responses.retrieve(
            created.id, stream=True, starting_after=first[-1].sequence_number
        ),
        until_deltas=5,
    )
    assert second[0].sequence_number > first[-1].sequence_number
    third = list(
        openai_client.responses.retrieve(
            created.id, stream=True, starting_after=second[-1].sequence_number
        )
    )

    pieces = first + second + third
    check_order(pieces)
    assert text_of(pieces) == prompt, "each token exactly once"
    assert pieces[-1].type == "response.completed"
    assert pieces[-1].response.output_text == prompt

    # The same events as one full replay: nothing skipped, nothing repeated.
    whole = list(openai_client.responses.retrieve(created.id, stream=True))
    assert [(e.type, e.sequence_number) for e in pieces] == [(e.type, e.sequence_number) for e in whole]
    # After the last event there is nothing more, and the stream ends.
    assert list(
        openai_client.responses.retrieve(
            created.id, stream=True, starting_after=whole[-1].sequence_number
        )
    ) == []

    # The SDK's own helper replays it from the start to the final response.
    with openai_client.responses.stream(response_id=created.id) as stream:
        final = stream.get_final_response()
    assert final.output_text == prompt

    stored = openai_client.responses.retrieve(created.id)
    assert stored.status == "completed" and stored.output_text == prompt
    assert cancelled(paced) == before, "readers leaving a background response do not stop it"


def test_background_response_streamed_by_its_creator_runs_on_after_it_leaves(paced):
    openai_client = client(paced)
    prompt = words(40)
    before = cancelled(paced)

    first = read(
        openai_client.responses.create(model="scripted", input=prompt, background=True, stream=True),
        until_deltas=3,
    )
    check_order(first)
    response_id = first[0].response.id
    assert first[0].response.background is True

    rest = list(
        openai_client.responses.retrieve(
            response_id, stream=True, starting_after=first[-1].sequence_number
        )
    )
    assert text_of(first + rest) == prompt
    check_order(first + rest)
    assert rest[-1].type == "response.completed"
    assert openai_client.responses.retrieve(response_id).status == "completed"
    assert cancelled(paced) == before


def test_cancel_stops_a_running_background_response(paced):
    openai_client = client(paced)
    prompt = words(2000)  # 100 s: it can only end by being cancelled
    before = cancelled(paced)

    created = openai_client.responses.create(model="scripted", input=prompt, background=True)
    # A reader that stays while the response is cancelled: its stream ends.
    stream = openai_client.responses.retrieve(created.id, stream=True)
    events = []
    for event in stream:
        events.append(event)
        if deltas(events) >= 3:
            break

    response = openai_client.responses.cancel(created.id)
    assert response.id == created.id
    assert response.status == "cancelled"
    wait_cancelled(paced, before + 1)

    events += list(stream)  # ends instead of waiting for the rest of the answer
    check_order(events)
    text = text_of(events)
    assert text and prompt.startswith(text) and text != prompt
    assert events[-1].type in TERMINAL - {"response.completed"}
    assert events[-1].response.status == "cancelled"
    assert sum(e.type in TERMINAL for e in events) == 1

    stored = openai_client.responses.retrieve(created.id)
    assert stored.status == "cancelled"
    assert stored.output_text == text
    # Cancelling again changes nothing and answers the same response.
    assert openai_client.responses.cancel(created.id).status == "cancelled"
    assert cancelled(paced) == before + 1


def test_closing_a_stream_mid_answer_cancels_the_upstream(paced):
    openai_client = client(paced)
    before = cancelled(paced)

    events = read(
        openai_client.responses.create(model="scripted", input=words(2000), stream=True),
        until_deltas=2,
    )
    response_id = events[0].response.id
    wait_cancelled(paced, before + 1)
    stored = wait_until(
        lambda: (r := openai_client.responses.retrieve(response_id)).status != "in_progress" and r,
        "the left response to end",
    )
    assert stored.status == "cancelled"

    async def run_async():
        async with AsyncOpenAI(base_url=f"{paced.origin}/v1", api_key="unused") as aclient:
            stream = await aclient.responses.create(model="scripted", input=words(2000), stream=True)
            async for event in stream:
                if event.type == DELTA:
                    break
            await stream.close()

    asyncio.run(run_async())
    wait_cancelled(paced, before + 2)


def test_a_whole_response_whose_client_gives_up_cancels_the_upstream(paced):
    before = cancelled(paced)
    impatient = client(paced, timeout=1.0, max_retries=0)
    with pytest.raises(openai.APITimeoutError):
        impatient.responses.create(model="scripted", input=words(2000))
    wait_cancelled(paced, before + 1)


def test_max_output_tokens_ends_the_response_incomplete(fast):
    openai_client = client(fast)
    cut = "".join(word_tokens(EXPECTED)[:3])

    response = openai_client.responses.create(
        model="scripted", input=PROMPT, instructions=INSTRUCTIONS, max_output_tokens=3
    )
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.max_output_tokens == 3
    assert response.output_text == cut
    assert response.usage.output_tokens == 3

    with openai_client.responses.create(
        model="scripted", input=PROMPT, instructions=INSTRUCTIONS, max_output_tokens=3, stream=True
    ) as stream:
        events = list(stream)
    check_order(events)
    assert text_of(events) == cut
    types = [e.type for e in events]
    assert types[-1] == "response.incomplete"
    assert sum(t in TERMINAL for t in types) == 1
    last = events[-1].response
    assert last.status == "incomplete"
    assert last.incomplete_details.reason == "max_output_tokens"
    assert last.output_text == cut
    assert openai_client.responses.retrieve(last.id).status == "incomplete"


WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
        "required": ["city"],
    },
    "strict": False,
}


def test_a_scripted_tool_call_arrives_as_function_call_events(sluice_servers):
    server = scripted(
        sluice_servers,
        env={
            "SLUICE_SCRIPTED_TEXT": "Let me check.",
            "SLUICE_SCRIPTED_TOOL_CALLS": json.dumps([TOOL_CALL]),
        },
    )
    openai_client = client(server)
    # The scripted provider's tool calls, seen through Chat Completions first, so that a
    # Responses bug cannot pass for a knob that does nothing.
    probe = openai_client.chat.completions.create(
        model="scripted", messages=[{"role": "user", "content": "Weather?"}]
    )
    assert probe.choices[0].message.tool_calls, "SLUICE_SCRIPTED_TOOL_CALLS made no tool call"

    with openai_client.responses.create(
        model="scripted", input="Weather in Paris?", tools=[WEATHER_TOOL], stream=True
    ) as stream:
        events = list(stream)
    check_order(events)
    types = [e.type for e in events]
    assert text_of(events) == "Let me check."
    assert types[-1] == "response.completed"

    added = [e for e in events if e.type == "response.output_item.added"]
    assert [e.item.type for e in added] == ["message", "function_call"]
    call = added[1].item
    assert call.name == TOOL_CALL["name"] and call.call_id and call.status == "in_progress"
    index = added[1].output_index
    arguments = [e for e in events if e.type == "response.function_call_arguments.delta"]
    assert arguments and all(e.item_id == call.id and e.output_index == index for e in arguments)
    assert "".join(e.delta for e in arguments) == TOOL_CALL["arguments"]
    (args_done,) = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert args_done.arguments == TOOL_CALL["arguments"] and args_done.item_id == call.id
    item_done = [e for e in events if e.type == "response.output_item.done"][-1]
    assert item_done.output_index == index
    assert item_done.item.type == "function_call" and item_done.item.status == "completed"
    assert item_done.item.arguments == TOOL_CALL["arguments"]
    # The message is done before the call begins; the call's events come in this order.
    call_events = [
        t for t in types[types.index("response.output_item.done") + 1 :] if t.startswith("response.")
    ]
    assert call_events == [
        "response.output_item.added",
        *["response.function_call_arguments.delta"] * len(arguments),
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]

    final = events[-1].response
    assert [item.type for item in final.output] == ["message", "function_call"]
    assert final.output[1].call_id == call.call_id
    assert json.loads(final.output[1].arguments) == json.loads(TOOL_CALL["arguments"])

    # Whole, the same call; and its result can be sent back as input.
    whole = openai_client.responses.create(
        model="scripted", input="Weather in Paris?", tools=[WEATHER_TOOL]
    )
    (function_call,) = [item for item in whole.output if item.type == "function_call"]
    assert function_call.name == TOOL_CALL["name"]
    assert function_call.arguments == TOOL_CALL["arguments"]
    follow_up = openai_client.responses.create(
        model="scripted",
        tools=[WEATHER_TOOL],
        input=[
            {"role": "user", "content": "Weather in Paris?"},
            {
                "type": "function_call",
                "call_id": function_call.call_id,
                "name": function_call.name,
                "arguments": function_call.arguments,
            },
            {"type": "function_call_output", "call_id": function_call.call_id, "output": "18 °C"},
        ],
    )
    assert follow_up.status == "completed"


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_unknown_model_is_not_found(fast, stream):
    with pytest.raises(openai.NotFoundError) as caught:
        client(fast).responses.create(model="no-such-model", input=PROMPT, stream=stream)
    assert caught.value.status_code == 404
    assert caught.value.code == "model_not_found"


def test_unknown_response_id_is_not_found(fast):
    openai_client = client(fast)
    for unknown in ["resp_" + "0" * 32, "resp_nope", "nothing-like-an-id"]:
        with pytest.raises(openai.NotFoundError):
            openai_client.responses.retrieve(unknown)
        with pytest.raises(openai.NotFoundError):
            openai_client.responses.retrieve(unknown, stream=True)
        with pytest.raises(openai.NotFoundError):
            openai_client.responses.cancel(unknown)


def test_malformed_requests_are_bad_requests(fast):
    openai_client = client(fast)
    cases = [
        ({"input": 42}, "input"),
        ({"input": []}, "input"),
        ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}, "input"),
        ({"input": PROMPT, "temperature": 7}, "temperature"),
        ({"input": PROMPT, "top_p": 2}, "top_p"),
        ({"input": PROMPT, "max_output_tokens": 0}, None),
        ({"input": PROMPT, "background": True, "store": False}, "background"),
        ({"input": PROMPT, "tools": [{"type": "web_search"}]}, "tools"),
    ]
    for fields, param in cases:
        with pytest.raises(openai.BadRequestError) as caught:
            openai_client.responses.create(model="scripted", **fields)
        assert caught.value.status_code == 400, fields
        if param:
            assert caught.value.param == param, (fields, caught.value.body)
    with pytest.raises(openai.BadRequestError):
        openai_client.responses.create(model="scripted", input=PROMPT, extra_body={"stream": "yes"})
    with pytest.raises(openai.BadRequestError):
        openai_client.post(
            "/responses",
            cast_to=object,
            content=b'{"model": "scripted", "input": ',
            options={"headers": {"Content-Type": "application/json"}},
        )

    created = openai_client.responses.create(model="scripted", input=PROMPT)
    with pytest.raises(openai.BadRequestError):
        openai_client.responses.retrieve(
            created.id, stream=True, extra_query={"starting_after": "soon"}
        )


def test_every_route_needs_a_key_where_keys_are_configured(sluice_servers):
    keyed = scripted(sluice_servers, env={"SLUICE_API_KEYS": "sk-one,sk-two"})
    right = client(keyed, api_key="sk-two")
    # A wrong key, and no key at all (the SDK told to send no Authorization header).
    refused = [
        (client(keyed, api_key="sk-wrong"), {}),
        (right, {"extra_headers": {"Authorization": openai.Omit()}}),
    ]

    for anonymous, no_key in refused:
        with pytest.raises(openai.AuthenticationError) as caught:
            anonymous.responses.create(model="scripted", input=PROMPT, **no_key)
        assert caught.value.status_code == 401
        with pytest.raises(openai.AuthenticationError):
            anonymous.responses.create(model="scripted", input=PROMPT, stream=True, **no_key)

    response = right.responses.create(model="scripted", input=PROMPT, instructions=INSTRUCTIONS)
    assert response.output_text == EXPECTED
    background = client(keyed, api_key="sk-one").responses.create(
        model="scripted", input=PROMPT, instructions=INSTRUCTIONS, background=True
    )
    for anonymous, no_key in refused:
        # Knowing the id is not enough.
        with pytest.raises(openai.AuthenticationError):
            anonymous.responses.retrieve(response.id, **no_key)
        with pytest.raises(openai.AuthenticationError):
            anonymous.responses.retrieve(background.id, stream=True, **no_key)
        with pytest.raises(openai.AuthenticationError):
            anonymous.responses.cancel(background.id, **no_key)
    assert right.responses.retrieve(response.id).output_text == EXPECTED
    events = list(right.responses.retrieve(background.id, stream=True))
    assert text_of(events) == EXPECTED
    assert right.responses.retrieve(background.id).status == "completed"
