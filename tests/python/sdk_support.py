"""What the official-client tests share: the scripted provider's texts and knobs, and reading
counters from /metrics.

The scripted provider answers `SLUICE_SCRIPTED_TEXT` with `{prompt}` replaced by the last user
message, in word-sized tokens (a run of non-space characters with the spaces before it), at
`SLUICE_SCRIPTED_TOKENS_PER_SECOND` (0: at once). A paced server whose text is `{prompt}` lets
each test choose how long its answer runs by the prompt it sends.
"""

from __future__ import annotations

import time

# Chinese, emoji (with ZWJ sequences and a flag), markdown, a tab, CRLF and LF, a trailing
# newline, and the prompt echoed back in the middle.
TEXT = (
    "# 你好，Sluice 👋\n\n"
    "Here is **bold**, _italic_ and `code`; 中文：流式传输测试。\n"
    "- emoji: 🚀🎉 👨\u200d👩\u200d👧\u200d👦 🇫🇷\n"
    "- a tab\there,  two spaces\r\n"
    '```python\nprint("hi")\n```\n'
    "You said: {prompt} — done.\n"
)
PROMPT = "Ça va? 日本語 🙂"
EXPECTED = TEXT.replace("{prompt}", PROMPT)
INSTRUCTIONS = "Answer briefly."

# The text above, as fast as the provider can.
FAST = {
    "SLUICE_SCRIPTED_TEXT": TEXT,
    "SLUICE_SCRIPTED_TOKENS_PER_SECOND": "0",
    "SLUICE_SCRIPTED_TTFT_MS": "0",
}

# The prompt echoed back at 20 tokens a second.
PACED = {
    "SLUICE_SCRIPTED_TEXT": "{prompt}",
    "SLUICE_SCRIPTED_TOKENS_PER_SECOND": "20",
    "SLUICE_SCRIPTED_TTFT_MS": "0",
}

# A tool call for the scripted provider's `SLUICE_SCRIPTED_TOOL_CALLS` (a JSON list of calls,
# each a function `name` and its `arguments` as a JSON string): it sends its text, then the
# calls, and finishes with `tool_calls`.
TOOL_CALL = {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'}


def words(n: int, tag: str = "w") -> str:
    """A prompt of `n` distinct word tokens: a paced answer of n/20 seconds."""
    return " ".join(f"{tag}{i}" for i in range(n))


def scripted(sluice_servers, env=None, args=()):
    """A server with the scripted model only, on the memory store."""
    return sluice_servers(
        ["--store", "memory", "--provider", "scripted", *args], {**FAST, **(env or {})}
    )


def counter(metrics: str, name: str) -> float:
    """An unlabelled counter in Prometheus' text format (0 when absent)."""
    for line in metrics.splitlines():
        if line.startswith((f"{name} ", f"{name}{{")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def cancelled(server) -> float:
    """The server's `sluice_upstream_cancelled_total`."""
    return counter(server.get("/metrics"), "sluice_upstream_cancelled_total")


def wait_cancelled(server, at_least: float, timeout: float = 30.0) -> float:
    """Waits until `sluice_upstream_cancelled_total` reaches `at_least`; returns it."""
    deadline = time.monotonic() + timeout
    while (seen := cancelled(server)) < at_least:
        assert time.monotonic() < deadline, f"sluice_upstream_cancelled_total {seen} < {at_least}"
        time.sleep(0.05)
    return seen


def wait_until(check, what: str, timeout: float = 30.0):
    """Polls `check()` until it returns something truthy, which is returned."""
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


def word_tokens(text: str) -> list[str]:
    """The scripted provider's tokens: each a run of non-space characters with the spaces
    before it (crates/llm's `word_tokens`)."""
    tokens: list[str] = []
    current = ""
    in_word = False
    for ch in text:
        space = ch.isspace()
        if in_word and space:
            tokens.append(current)
            current = ""
        in_word = not space
        current += ch
    if current:
        tokens.append(current)
    return tokens
