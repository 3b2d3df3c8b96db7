"""The gateway seen by the official OpenAI SDK for Python (the `openai` package).

`sluice serve --provider scripted` answers with a known text, which the SDK must hand back
exactly, streamed (sync and async) or whole; the server's errors must surface as the SDK's
typed exceptions; and a reader that closes its stream mid-answer must cancel the upstream.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import openai
import pytest
from openai import AsyncOpenAI, OpenAI

from sdk_support import EXPECTED, PROMPT, TEXT, counter, scripted

MESSAGES = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": PROMPT},
]

def client(server, **options) -> OpenAI:
    return OpenAI(base_url=f"{server.origin}/v1", api_key=options.pop("api_key", "unused"), **options)


def text_of(chunks) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def check_usage(usage) -> None:
    assert usage is not None
    assert usage.prompt_tokens > 0
    assert usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


@pytest.fixture(scope="module")
def server(sluice_servers):
    return scripted(sluice_servers)


def test_streamed_completion_with_usage_reassembles_the_exact_text(server):
    stream = client(server).chat.completions.create(
        model="scripted",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)

    assert text_of(chunks) == EXPECTED
    assert chunks[0].id.startswith("chatcmpl-")
    assert chunks[0].choices[0].delta.role == "assistant"
    for chunk in chunks:
        assert chunk.object == "chat.completion.chunk"
        assert chunk.id == chunks[0].id
        assert chunk.model == "scripted"

    with_choices = [c for c in chunks if c.choices]
    assert with_choices[-1].choices[0].finish_reason == "stop"
    for chunk in with_choices[:-1]:
        assert chunk.choices[0].finish_reason is None
        assert chunk.usage is None

    usage_chunk = chunks[-1]
    assert usage_chunk.choices == []
    assert sum(1 for c in chunks if not c.choices) == 1
    check_usage(usage_chunk.usage)

    whole = client(server).chat.completions.create(model="scripted", messages=MESSAGES)
    assert whole.usage == usage_chunk.usage, "the same usage streamed or not"


def test_stream_helper_accumulates_the_same_completion(server):
    with client(server).chat.completions.stream(model="scripted", messages=MESSAGES) as stream:
        deltas = "".join(e.delta for e in stream if e.type == "content.delta")
        completion = stream.get_final_completion()
    assert deltas == EXPECTED
    assert completion.choices[0].message.content == EXPECTED
    assert completion.choices[0].finish_reason == "stop"


def test_non_streamed_completion_has_the_exact_text_and_usage(server):
    completion = client(server).chat.completions.create(model="scripted", messages=MESSAGES)
    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-")
    assert completion.model == "scripted"
    assert len(completion.choices) == 1
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content == EXPECTED
    assert completion.choices[0].finish_reason == "stop"
    check_usage(completion.usage)


def test_max_tokens_cuts_the_answer_with_finish_reason_length(server):
    completion = client(server).chat.completions.create(
        model="scripted", messages=MESSAGES, max_tokens=3
    )
    text = completion.choices[0].message.content
    assert text and EXPECTED.startswith(text) and text != EXPECTED
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 3


def test_models_list_names_the_scripted_model(server):
    ids = [model.id for model in client(server).models.list()]
    assert "scripted" in ids


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_unknown_model_is_not_found(server, stream):
    with pytest.raises(openai.NotFoundError) as caught:
        client(server).chat.completions.create(model="no-such-model", messages=MESSAGES, stream=stream)
    err = caught.value
    assert err.status_code == 404
    assert err.code == "model_not_found"
    assert err.param == "model"
    assert err.body["message"].startswith("The model `no-such-model` does not exist")


def test_async_client_streams_the_exact_text(server):
    async def run():
        async with AsyncOpenAI(base_url=f"{server.origin}/v1", api_key="unused") as aclient:
            stream = await aclient.chat.completions.create(
                model="scripted",
                messages=MESSAGES,
                stream=True,
                stream_options={"include_usage": True},
            )
            chunks = [chunk async for chunk in stream]
            models = [m.id async for m in aclient.models.list()]
            return chunks, models

    chunks, models = asyncio.run(run())
    assert text_of(chunks) == EXPECTED
    assert [c for c in chunks if c.choices][-1].choices[0].finish_reason == "stop"
    check_usage(chunks[-1].usage)
    assert "scripted" in models


def test_wrong_api_key_is_an_authentication_error_and_the_right_one_works(sluice_servers):
    keyed = scripted(sluice_servers, args=["--api-key", "sk-good"])

    with pytest.raises(openai.AuthenticationError) as caught:
        client(keyed, api_key="sk-wrong").chat.completions.create(model="scripted", messages=MESSAGES)
    assert caught.value.status_code == 401
    assert caught.value.code == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        client(keyed, api_key="sk-wrong").models.list()

    right = client(keyed, api_key="sk-good")
    chunks = list(right.chat.completions.create(model="scripted", messages=MESSAGES, stream=True))
    assert text_of(chunks) == EXPECTED
    assert "scripted" in [m.id for m in right.models.list()]


def test_mid_stream_failure_raises_api_error_after_some_text(sluice_servers):
    failing = scripted(sluice_servers, env={"SLUICE_SCRIPTED_FAIL_AFTER": "3"})
    stream = client(failing).chat.completions.create(model="scripted", messages=MESSAGES, stream=True)
    text = ""
    with pytest.raises(openai.APIError) as caught:
        for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
    assert "scripted failure after 3 tokens" in caught.value.message
    assert text, "some text came before the failure"
    assert EXPECTED.startswith(text) and text != EXPECTED

    # Not streamed, the same failure is a 5xx before any answer.
    with pytest.raises(openai.InternalServerError) as caught:
        client(failing, max_retries=0).chat.completions.create(model="scripted", messages=MESSAGES)
    assert caught.value.status_code >= 500


def test_closing_a_stream_mid_answer_cancels_the_upstream(sluice_servers):
    slow = scripted(
        sluice_servers,
        env={"SLUICE_SCRIPTED_TEXT": "word " * 400, "SLUICE_SCRIPTED_TOKENS_PER_SECOND": "20"},
    )

    def cancelled() -> float:
        return counter(slow.get("/metrics"), "sluice_upstream_cancelled_total")

    def wait_cancelled(n: float) -> None:
        deadline = time.monotonic() + 60
        while (seen := cancelled()) < n:
            assert time.monotonic() < deadline, f"sluice_upstream_cancelled_total {seen} < {n}"
            time.sleep(0.1)

    assert cancelled() == 0
    text = ""
    with client(slow).chat.completions.create(model="scripted", messages=MESSAGES, stream=True) as stream:
        for chunk in stream:
            text += chunk.choices[0].delta.content or ""
            if text:
                break
    assert text.startswith("word")
    wait_cancelled(1)

    async def run_async():
        async with AsyncOpenAI(base_url=f"{slow.origin}/v1", api_key="unused") as aclient:
            stream = await aclient.chat.completions.create(model="scripted", messages=MESSAGES, stream=True)
            async for chunk in stream:
                if chunk.choices[0].delta.content:
                    break
            await stream.close()

    asyncio.run(run_async())
    wait_cancelled(2)


MODEL = Path(__file__).resolve().parents[2] / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_the_local_model_streams_the_same_greedy_answer_twice(sluice_servers):
    server = sluice_servers(["--store", "memory", "--provider", "local", "--model", str(MODEL)])
    openai_client = client(server)

    def ask() -> str:
        stream = openai_client.chat.completions.create(
            model="smollm2-135m",
            messages=[{"role": "user", "content": "Name one colour."}],
            stream=True,
            stream_options={"include_usage": True},
            max_tokens=16,
            temperature=0,
        )
        chunks = list(stream)
        check_usage(chunks[-1].usage)
        return text_of(chunks)

    first = ask()
    assert first.strip(), "the model said something"
    assert ask() == first, "greedy decoding is deterministic"
