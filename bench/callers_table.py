#!/usr/bin/env python3
"""The table of bench/callers.sh: what checking the caller adds to the time to first token.

For each run (streams × store), the open gateway's time to first token and what the API key's
and the end-user token's rows add to it (p50 and p99, ms), with each gateway's CPU.

    python3 bench/callers_table.py [bench/results/callers]
"""

import json
import sys
from pathlib import Path


def main() -> None:
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "bench/results/callers")
    print("| streams | store | open gateway TTFT p50 · p99 ms | with an API key: added p50 · p99 ms "
          "| with an end-user token: added p50 · p99 ms | CPU % open · key · token | errors |")
    print("| ---: | --- | --- | --- | --- | --- | ---: |")
    for streams in (1, 100):
        for store in ("memory", "sqlite"):
            path = folder / f"{streams}-{store}.json"
            if not path.exists():
                continue
            run = {g["name"]: g for g in json.loads(path.read_text())["gateways"]}
            open_, key, user = run["sluice"], run["sluice/api-key"], run["sluice/end-user"]

            def added(row: dict) -> str:
                p50 = (row["path"]["ttft"]["p50"] - open_["path"]["ttft"]["p50"]) / 1000
                p99 = (row["path"]["ttft"]["p99"] - open_["path"]["ttft"]["p99"]) / 1000
                return f"{p50:+.2f} · {p99:+.2f}"

            ttft = open_["path"]["ttft"]
            cpu = " · ".join(f"{g['cpu_percent']:.0f}" for g in (open_, key, user))
            errors = sum(g["path"]["errors"] for g in (open_, key, user))
            print(f"| {streams} | {store} | {ttft['p50'] / 1000:.2f} · {ttft['p99'] / 1000:.2f} "
                  f"| {added(key)} | {added(user)} | {cpu} | {errors} |")


if __name__ == "__main__":
    main()
