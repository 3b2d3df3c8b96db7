"""The OpenAI Responses API across two `sluice serve` nodes on one real Redis, seen by the
official OpenAI SDK for Python: a background response started on one node is read part-way
there, resumed on the other with `starting_after` to the exact text once (numbered the same on
both), and a running one is cancelled from the node that does not run it, which stops the
upstream on the node that does.
"""

from __future__ import annotations

import pytest
from openai import OpenAI

from sdk_support import PACED, cancelled, wait_cancelled, wait_until, words

DELTA = "response.output_text.delta"


def client(server) -> OpenAI:
    return OpenAI(base_url=f"{server.origin}/v1", api_key="unused", timeout=60)


def text_of(events) -> str:
    return "".join(e.delta for e in events if e.type == DELTA)


def read(stream, until_deltas: int) -> list:
    events = []
    with stream:
        for event in stream:
            events.append(event)
            if sum(e.type == DELTA for e in events) >= until_deltas:
                break
    return events


@pytest.fixture(scope="module")
def nodes(redis_url, sluice_servers):
    # Redis first, so that it is stopped after the nodes.
    args = ["--store", redis_url, "--provider", "scripted"]
    return sluice_servers(args, PACED), sluice_servers(args, PACED)


def test_a_background_response_started_on_one_node_resumes_on_the_other(nodes):
    a, b = nodes
    prompt = words(60)  # 3 s of answer
    before = cancelled(a) + cancelled(b)

    created = client(a).responses.create(model="scripted", input=prompt, background=True)
    first = read(client(a).responses.retrieve(created.id, stream=True), until_deltas=5)
    assert first[0].type == "response.created"
    assert client(b).responses.retrieve(created.id).status == "in_progress"

    rest = list(
        client(b).responses.retrieve(created.id, stream=True, starting_after=first[-1].sequence_number)
    )
    pieces = first + rest
    numbers = [e.sequence_number for e in pieces]
    assert all(x < y for x, y in zip(numbers, numbers[1:])), numbers
    assert text_of(pieces) == prompt, "each token exactly once"
    assert pieces[-1].type == "response.completed"

    # Both nodes number the events alike: a full replay on either is the same.
    on_a = list(client(a).responses.retrieve(created.id, stream=True))
    on_b = list(client(b).responses.retrieve(created.id, stream=True))
    key = [(e.type, e.sequence_number) for e in pieces]
    assert [(e.type, e.sequence_number) for e in on_a] == key
    assert [(e.type, e.sequence_number) for e in on_b] == key
    for node in (a, b):
        stored = client(node).responses.retrieve(created.id)
        assert stored.status == "completed" and stored.output_text == prompt
    assert cancelled(a) + cancelled(b) == before


def test_a_response_cancelled_on_the_other_node_stops_its_upstream(nodes):
    a, b = nodes
    prompt = words(2000)  # 100 s: it can only end by being cancelled
    before_a = cancelled(a)

    created = client(a).responses.create(model="scripted", input=prompt, background=True)
    wait_until(lambda: client(b).responses.retrieve(created.id).output_text, "text seen from b")
    # A reader on a stays while b cancels: its stream ends.
    stream = client(a).responses.retrieve(created.id, stream=True)
    events = []
    for event in stream:
        events.append(event)
        if event.type == DELTA:
            break

    response = client(b).responses.cancel(created.id)
    assert response.status == "cancelled"
    wait_cancelled(a, before_a + 1)  # the upstream runs on a, and a stopped it

    events += list(stream)
    assert events[-1].response.status == "cancelled"
    text = text_of(events)
    assert text and prompt.startswith(text) and text != prompt
    for node in (a, b):
        stored = client(node).responses.retrieve(created.id)
        assert stored.status == "cancelled" and stored.output_text == text
