"""Durable Streams through the official Python client (PyPI `durable-streams`): a stream
written and read across a restart of a SQLite-backed server, and across two nodes of one Redis,
with a live SSE reader on the node that did not take the writes. Every message arrives exactly
once, in order, and an offset given by one server resumes on another."""

import tempfile
import threading

from durable_streams import DurableStream, stream


def numbers(first: int, last: int) -> list[dict]:
    return [{"n": n} for n in range(first, last + 1)]


def append_all(handle: DurableStream, items: list[dict]) -> None:
    for item in items:
        handle.append(item)


def test_offsets_resume_across_a_restart(sluice_servers):
    with tempfile.TemporaryDirectory(prefix="sluice-py-durable-") as data:
        args = ["--store", f"sqlite:{data}/sluice.db", "--open-streams"]
        first = sluice_servers(args)
        url = f"{first.origin}/v1/stream/py/restart"
        handle = DurableStream.create(url, content_type="application/json")
        append_all(handle, numbers(1, 20))
        with stream(url, live=False) as res:
            assert res.read_json() == numbers(1, 20)
            offset = res.offset
        handle.close()
        first.stop()

        second = sluice_servers(args)
        url = f"{second.origin}/v1/stream/py/restart"
        handle = DurableStream.connect(url)
        assert handle.head().offset == offset, "the tail survived the restart"
        append_all(handle, numbers(21, 30))
        with stream(url, offset=offset, live=False) as res:
            assert res.read_json() == numbers(21, 30), "resumed from the offset, nothing doubled"
        with stream(url, live=False) as res:
            assert res.read_json() == numbers(1, 30)
        handle.close()


def test_written_on_one_node_read_live_on_another(sluice_servers, redis_url):
    args = ["--store", redis_url, "--open-streams"]
    a, b = sluice_servers(args), sluice_servers(args)
    path = "/v1/stream/py/two-nodes"
    handle = DurableStream.create(f"{a.origin}{path}", content_type="application/json")

    received: list[dict] = []
    done = threading.Event()

    def read_live_on_b() -> None:
        # The offset given: the protocol has live reads name one (the server answers 400
        # otherwise), and the client leaves it out when none is passed.
        with stream(f"{b.origin}{path}", offset="-1", live="sse", timeout=30) as res:
            for item in res.iter_json():
                received.append(item)
                if len(received) == 25:
                    done.set()
                    return

    reader = threading.Thread(target=read_live_on_b, daemon=True)
    reader.start()
    append_all(handle, numbers(1, 25))
    assert done.wait(30), f"node B's live reader got {len(received)} of 25"
    assert received == numbers(1, 25)

    with stream(f"{b.origin}{path}", live=False) as res:
        res.read_json()
        offset = res.offset
    append_all(handle, numbers(26, 30))
    with stream(f"{a.origin}{path}", offset=offset, live=False) as res:
        assert res.read_json() == numbers(26, 30), "node B's offset resumes on node A"
    handle.close()
