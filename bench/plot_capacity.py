#!/usr/bin/env python3
"""Table and chart of the gateways' capacity (`sluice bench gateway --rates`, bench/peers.sh's
capacity part).

    python3 bench/plot_capacity.py [--json bench/results/peers/capacity.json] [--svg bench/capacity.svg]

Reads the JSON list of runs (one per kind of answer: whole, streamed), prints per run a
Markdown table with a row per rate: the p99 straight to the upstream and what each gateway
added to it at p99 (with its CPU), then each gateway's capacity (the highest rate at which it
added under the bound); and writes an SVG with a panel per run: p99 against the request rate,
straight and through each gateway, on a log scale. Python standard library only.
"""

import argparse
import json

from plot_hub import BLUE, GREY, ORANGE, RED, PANEL_W, Panel, write_svg

COLOURS = {"direct": GREY, "sluice": BLUE, "relay": ORANGE, "litellm": RED}
LABELS = {"direct": "straight", "sluice": "Sluice", "relay": "nginx relay", "litellm": "LiteLLM"}


def kind(run):
    return "streamed" if run["streamed"] else "whole"


def table(run):
    bound = run["bound_micros"] / 1000
    names = [g["name"] for g in run["gateways"]]
    head = ["requests/s", "straight p99 ms"] + [f"{LABELS.get(n, n)}: added p99 ms (CPU %)" for n in names]
    out = [f"{kind(run).capitalize()} answers of {run['tokens']} tokens (bound: +{bound:g} ms at p99):",
           "", "| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    direct = {s["rate"]: s for s in run["direct"]}
    rates = sorted({s["rate"] for g in run["gateways"] for s in g["steps"]} | set(direct))
    for rate in rates:
        d = direct.get(rate)
        cells = [f"{rate:,}", f"{d['latency']['p99'] / 1000:.2f}" if d else "–"]
        for g in run["gateways"]:
            s = next((s for s in g["steps"] if s["rate"] == rate), None)
            if s is None or d is None:
                cells.append("")
                continue
            added = (s["latency"]["p99"] - d["latency"]["p99"]) / 1000
            late = "" if s["errors"] == 0 and s["sent_rate"] >= rate * 0.98 else \
                f", {s['errors']} errors, sent at {s['sent_rate']:,.0f}/s"
            cells.append(f"{added:+.2f} ({s['cpu_percent']:.0f}%{late})")
        out.append("| " + " | ".join(cells) + " |")
    out.append("")
    floor = max((s["rate"] for s in run["direct"] if s["latency"]["p99"] <= run["bound_micros"]), default=None)
    out.append(f"Straight to the upstream, p99 within {bound:g} ms up to {floor:,}/s." if floor else
               "Straight to the upstream, p99 never within the bound.")
    for g in run["gateways"]:
        cap = g["capacity"]
        out.append(f"{LABELS.get(g['name'], g['name'])}: "
                   + (f"{cap:,} requests/s within the bound." if cap else "not within the bound at any rate."))
    return "\n".join(out)


def panel(run, index):
    # Straight to the upstream only where it was a baseline (p99 within the bound): past that
    # its saturated core's seconds would flatten the chart.
    direct = [s for s in run["direct"] if s["latency"]["p99"] <= run["bound_micros"]]
    paths = [("direct", direct)] + [(g["name"], g["steps"]) for g in run["gateways"]]
    xs = [s["rate"] for _, steps in paths for s in steps]
    ys = [max(s["latency"]["p99"] / 1000, 0.1) for _, steps in paths for s in steps]
    p = Panel(PANEL_W * index, f"p99, {kind(run)} answers", "requests/s", "ms (log scale)",
              [0] + xs, ys, log_y=True)
    p.frame()
    for name, steps in paths:
        if steps:
            p.line([s["rate"] for s in steps], [max(s["latency"]["p99"] / 1000, 0.1) for s in steps],
                   COLOURS.get(name, GREY), LABELS.get(name, name), dashed=name == "direct",
                   below=name in ("direct", "relay"))
    return p


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default="bench/results/peers/capacity.json")
    ap.add_argument("--svg", default="bench/capacity.svg")
    args = ap.parse_args()
    with open(args.json) as f:
        runs = json.load(f)
    print("\n\n".join(table(run) for run in runs))
    write_svg(args.svg, [panel(run, i) for i, run in enumerate(runs)])


if __name__ == "__main__":
    main()
