"""The API against its own OpenAPI document, fuzzed by schemathesis.

A real `sluice serve` (scripted model, memory store, a JWT key) and the schemathesis CLI with
a fixed seed: every response must match the document (status, content type, headers, body
schema, event-stream events), no request may get a 5xx, requests the document calls valid
must be accepted and requests it calls invalid refused. `make test` runs a bounded number of
examples per operation; `make fuzz` runs many more (SLUICE_API_FUZZ_EXAMPLES).

The admin API is fuzzed in a run of its own, by a client holding the admin key.

The hub's subscribe operation is left out: a valid subscription is an event stream that
never ends, which a request/response fuzzer cannot wait for (its refusals are covered by the
Rust bad-input tests).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from conftest import SLUICE_BIN

SECRET = "schemathesis-secret"
ADMIN_KEY = "schemathesis-admin-key"
CONFIG = Path(__file__).with_name("schemathesis.toml")
SCHEMATHESIS = Path(os.environ.get("VIRTUAL_ENV", Path(__file__).resolve().parents[2] / ".venv")) / "bin" / "schemathesis"


def schemathesis(origin: str, bearer: str, *selection: str) -> str:
    """Runs schemathesis over the operations `selection` picks, with `bearer`; its summary."""
    examples = os.environ.get("SLUICE_API_FUZZ_EXAMPLES", "25")
    command = [
        str(SCHEMATHESIS),
        "--config-file",
        str(CONFIG),
        "run",
        f"{origin}/openapi.json",
        "--seed",
        "1",
        "--max-examples",
        examples,
        "--request-timeout",
        "10",
        "--header",
        f"Authorization: Bearer {bearer}",
        *selection,
        "--workers",
        "1",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    report = result.stdout[-20_000:] + result.stderr[-5_000:]
    assert result.returncode == 0, f"schemathesis found failures:\n{report}"
    assert "passed" in result.stdout, report
    return result.stdout[-1500:]


def test_every_response_matches_the_document(sluice_servers):
    server = sluice_servers(
        ["--store", "memory", "--provider", "scripted", "--jwt-secret", SECRET, "--anonymous"],
        {"SLUICE_SCRIPTED_TOKENS_PER_SECOND": "0"},
    )
    token = subprocess.run(
        [str(SLUICE_BIN), "token", "--secret", SECRET, "--publish", "*", "--subscribe", "*"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    try:
        summary = schemathesis(server.origin, token, "--exclude-operation-id", "subscribe")
    except AssertionError as failure:
        raise AssertionError(f"{failure}\n\nserver log:\n{server.log()}") from None
    # The run's summary (operations, cases, checks), for RELIABILITY.md: pytest -s shows it.
    print(summary)


def test_the_admin_api_matches_the_document(sluice_servers):
    """The admin API with its key: keys made, listed and revoked, usage, refusals."""
    server = sluice_servers(
        ["--store", "memory", "--provider", "scripted", "--admin-key", ADMIN_KEY],
        {"SLUICE_SCRIPTED_TOKENS_PER_SECOND": "0"},
    )
    try:
        print(schemathesis(server.origin, ADMIN_KEY, "--include-path-regex", "^/admin/"))
    except AssertionError as failure:
        raise AssertionError(f"{failure}\n\nserver log:\n{server.log()}") from None
