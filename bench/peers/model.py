#!/usr/bin/env python3
"""The local model against llama.cpp: the same GGUF file, the same chat, greedy, the same
number of threads, both asked through their OpenAI-compatible `/v1/chat/completions` with
`stream: true`, by the same client.

For each thread count, `sluice serve` (the built-in model, CANDLE_NUM_THREADS=N) and
`llama-server` (-t N -tb N) are started in turn, pinned to the first N cores, warmed with one
answer, then asked the same question RUNS times. Per answer: time to first token (request sent
to the first chunk with text), decode speed (completion tokens after the first over the time
after the first chunk with text), prompt speed (prompt tokens over the time to first token
less one decode step), and the server's RSS after the answers (VmRSS) and at its peak (VmHWM).
Medians go to the table; every run goes to the JSON.

    bench/peers/model.py --sluice target/release/sluice \\
        --llama-server bench/peers/.llama/build/bin/llama-server --threads 1,2 --runs 5 \\
        --json bench/results/peers/model.json
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import http.client

# Both servers see the same messages: an explicit system prompt, so neither adds its own.
MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Explain in a few paragraphs how a bicycle works, for a child."},
]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(port, path, process, deadline_s=120):
    started = time.monotonic()
    while time.monotonic() - started < deadline_s:
        if process.poll() is not None:
            sys.exit(f"the server exited at start with {process.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", path)
            if conn.getresponse().status < 500:
                return time.monotonic() - started
        except OSError:
            pass
        time.sleep(0.1)
    sys.exit(f"not ready on port {port} after {deadline_s} s")


def proc_kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    return None


def ask(port, model, max_tokens):
    """One streamed answer: (ttft_s, decode_s, completion_tokens, prompt_tokens, text)."""
    body = json.dumps({
        "model": model, "stream": True, "messages": MESSAGES, "max_tokens": max_tokens,
        "temperature": 0, "top_k": 1, "stream_options": {"include_usage": True},
    })
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    sent = time.monotonic()
    conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    if response.status != 200:
        sys.exit(f"HTTP {response.status}: {response.read()[:300]!r}")
    first = last = None
    usage = {}
    text = []
    for raw in response:
        line = raw.decode().strip()
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            break
        chunk = json.loads(data)
        usage = chunk.get("usage") or usage
        for choice in chunk.get("choices", []):
            content = (choice.get("delta") or {}).get("content")
            if content:
                now = time.monotonic()
                first = first or now
                last = now
                text.append(content)
    if first is None:
        sys.exit("an answer without text")
    return (first - sent, last - first, usage.get("completion_tokens"),
            usage.get("prompt_tokens"), "".join(text))


def measure(name, command, env, port, ready_path, model, runs, max_tokens):
    process = subprocess.Popen(command, env={**os.environ, **env},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        ready_s = wait_ready(port, ready_path, process)
        ask(port, model, max_tokens)  # warm-up: first-use allocations, caches
        answers = []
        for run in range(runs):
            ttft, decode, completion, prompt, text = ask(port, model, max_tokens)
            decode_tps = (completion - 1) / decode if completion and decode > 0 else None
            step = decode / (completion - 1) if completion and completion > 1 else 0
            prompt_tps = prompt / max(ttft - step, 1e-9) if prompt else None
            answers.append({"ttft_ms": ttft * 1e3, "decode_tokens_per_s": decode_tps,
                            "prompt_tokens_per_s": prompt_tps, "completion_tokens": completion,
                            "prompt_tokens": prompt, "text": text})
            print(f"  {name} run {run + 1}/{runs}: first token {ttft * 1e3:.0f} ms, "
                  f"decode {decode_tps or 0:.1f} tokens/s, {completion} tokens",
                  file=sys.stderr, flush=True)
        rss, peak = proc_kib(process.pid, "VmRSS:"), proc_kib(process.pid, "VmHWM:")
    finally:
        process.terminate()
        process.wait(timeout=30)

    def median(key):
        values = [a[key] for a in answers if a[key] is not None]
        return statistics.median(values) if values else None

    return {"name": name, "ready_s": ready_s, "rss_kib": rss, "peak_rss_kib": peak,
            "ttft_ms": median("ttft_ms"), "decode_tokens_per_s": median("decode_tokens_per_s"),
            "prompt_tokens_per_s": median("prompt_tokens_per_s"),
            "prompt_tokens": answers[0]["prompt_tokens"], "answers": answers}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sluice", default="target/release/sluice")
    parser.add_argument("--llama-server", default="bench/peers/.llama/build/bin/llama-server")
    parser.add_argument("--model", default="models/SmolLM2-135M-Instruct.Q4_1.gguf")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=100)
    parser.add_argument("--json")
    args = parser.parse_args()

    results = {"model": args.model, "max_tokens": args.max_tokens, "runs": args.runs,
               "loadavg_start": open("/proc/loadavg").read().split()[:3], "threads": {}}
    for threads in [int(t) for t in args.threads.split(",")]:
        cpus = ",".join(str(c) for c in range(threads))
        pin = ["taskset", "-c", cpus]
        port = free_port()
        sluice = measure(
            "sluice", pin + [args.sluice, "serve", "--store", "memory", "--model", args.model,
                             "--listen", f"127.0.0.1:{port}"],
            {"CANDLE_NUM_THREADS": str(threads)}, port, "/readyz", "smollm2-135m",
            args.runs, args.max_tokens)
        port = free_port()
        llama = measure(
            "llama.cpp", pin + [args.llama_server, "-m", args.model, "--host", "127.0.0.1",
                                "--port", str(port), "-t", str(threads), "-tb", str(threads),
                                "-c", "2048", "-np", "1", "--no-cache-prompt", "--temp", "0",
                                "--top-k", "1", "--no-webui"],
            {}, port, "/health", "smollm2", args.runs, args.max_tokens)
        results["threads"][threads] = {"sluice": sluice, "llama.cpp": llama}
    results["loadavg_end"] = open("/proc/loadavg").read().split()[:3]

    print(f"| threads | server | prompt tokens | first token ms | prompt tokens/s | "
          f"decode tokens/s | RSS MiB (peak) |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    for threads, pair in results["threads"].items():
        for name in ("sluice", "llama.cpp"):
            r = pair[name]
            print(f"| {threads} | {name} | {r['prompt_tokens']} | {r['ttft_ms']:.0f} | "
                  f"{r['prompt_tokens_per_s']:.0f} | {r['decode_tokens_per_s']:.1f} | "
                  f"{r['rss_kib'] / 1024:.0f} ({r['peak_rss_kib'] / 1024:.0f}) |")
        s, l = pair["sluice"], pair["llama.cpp"]
        print(f"| {threads} | **sluice ÷ llama.cpp** | | "
              f"{s['ttft_ms'] / l['ttft_ms']:.2f}× | "
              f"{s['prompt_tokens_per_s'] / l['prompt_tokens_per_s']:.2f}× | "
              f"{s['decode_tokens_per_s'] / l['decode_tokens_per_s']:.2f}× | "
              f"{s['rss_kib'] / l['rss_kib']:.2f}× |")
    if args.json:
        os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
