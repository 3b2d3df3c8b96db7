#!/usr/bin/env python3
"""Charts the SSE decoder benchmark from criterion's JSON output. Python standard library only.

Run `cargo bench -p sluice-sse --bench decode` first, then:

    python3 bench/plot_decoder.py [--criterion target/criterion] [--svg bench/decoder.svg]

It reads target/criterion/<scenario>/<implementation>[/<size>]/new/{benchmark,estimates}.json
for the scenarios of crates/sse/benches/decode.rs, writes an SVG bar chart of throughput, and
prints one Markdown table per scenario (MB/s, events/s, ratio to sluice's `Decoder::feed`).
MB is 10^6 bytes. Throughput is the input size over the mean time of one pass.
"""

import argparse
import json
import os
import sys
from html import escape

# Events in one pass of each scenario's input: benches/decode.rs builds the inputs with these
# counts and asserts, before timing, that every implementation decodes exactly this many.
EVENTS = {"llm": 10_000, "multiline": 64, "long_line": 1}
SCENARIOS = list(EVENTS)
IMPLEMENTATIONS = ["sluice_feed", "sluice_stream", "eventsource_stream", "sse_stream"]
COLOURS = {
    "sluice_feed": "#1f6feb",
    "sluice_stream": "#58a6ff",
    "eventsource_stream": "#d29922",
    "sse_stream": "#8957e5",
}
SIZE_ORDER = {"64KiB": 0, "256KiB": 1, "1MiB": 2}


def load(criterion_dir):
    """Returns {scenario: [row]} with one row per benchmark found."""
    results = {scenario: [] for scenario in SCENARIOS}
    for scenario in SCENARIOS:
        root = os.path.join(criterion_dir, scenario)
        for dirpath, _dirs, files in os.walk(root):
            if os.path.basename(dirpath) != "new" or "benchmark.json" not in files:
                continue
            with open(os.path.join(dirpath, "benchmark.json")) as f:
                bench = json.load(f)
            with open(os.path.join(dirpath, "estimates.json")) as f:
                estimates = json.load(f)
            implementation = bench["function_id"] or bench["value_str"]
            size = bench["value_str"] if bench["function_id"] else None
            nanos = estimates["mean"]["point_estimate"]
            low = estimates["mean"]["confidence_interval"]["lower_bound"]
            high = estimates["mean"]["confidence_interval"]["upper_bound"]
            nbytes = bench["throughput"]["Bytes"]
            results[scenario].append(
                {
                    "implementation": implementation,
                    "size": size,
                    "bytes": nbytes,
                    "seconds": nanos / 1e9,
                    "mb_s": nbytes / nanos * 1e3,
                    # A longer time is a lower throughput: the bounds swap.
                    "mb_s_low": nbytes / high * 1e3,
                    "mb_s_high": nbytes / low * 1e3,
                    "events_s": EVENTS[scenario] / (nanos / 1e9),
                }
            )
    for rows in results.values():
        rows.sort(
            key=lambda r: (
                SIZE_ORDER.get(r["size"], 99) if r["size"] else 0,
                IMPLEMENTATIONS.index(r["implementation"])
                if r["implementation"] in IMPLEMENTATIONS
                else 99,
            )
        )
    return results


def number(value):
    """Thousands separators for large values, three significant digits for small ones."""
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def ratio_text(ratio):
    """`0.58x`, or `1/11,400x` for ratios too small to read as decimals."""
    if ratio >= 0.01:
        return f"{ratio:.2f}x"
    return f"1/{1 / ratio:,.0f}x"


def markdown(results):
    out = []
    for scenario, rows in results.items():
        if not rows:
            continue
        out.append(f"#### {scenario}\n")
        out.append("| implementation | input | MB/s (95% CI) | events/s | vs sluice_feed |")
        out.append("| --- | --- | ---: | ---: | ---: |")
        for row in rows:
            base = next(
                (
                    r
                    for r in rows
                    if r["implementation"] == "sluice_feed" and r["size"] == row["size"]
                ),
                None,
            )
            ratio = ratio_text(row["mb_s"] / base["mb_s"]) if base else "n/a"
            size = row["size"] or f"{row['bytes'] / 1e6:.2f} MB"
            out.append(
                f"| {row['implementation']} | {size} "
                f"| {number(row['mb_s'])} ({number(row['mb_s_low'])}–{number(row['mb_s_high'])}) "
                f"| {number(row['events_s'])} | {ratio} |"
            )
        out.append("")
    return "\n".join(out)


def svg(results):
    """One panel per scenario; one horizontal bar per benchmark, each panel on its own scale."""
    width, label_w, bar_h, gap, panel_gap, title_h = 760, 230, 18, 4, 26, 22
    plot_w = width - label_w - 110
    parts = []
    y = 40
    for scenario, rows in results.items():
        if not rows:
            continue
        top = max(r["mb_s"] for r in rows)
        parts.append(
            f'<text x="10" y="{y}" font-weight="bold">{escape(scenario)}'
            f' <tspan font-weight="normal" fill="#555">(MB/s, higher is better)</tspan></text>'
        )
        y += title_h - 12
        for row in rows:
            w = max(1.0, plot_w * row["mb_s"] / top)
            label = row["implementation"] + (f" {row['size']}" if row["size"] else "")
            colour = COLOURS.get(row["implementation"], "#888")
            parts.append(
                f'<text x="{label_w - 8}" y="{y + bar_h - 5}" text-anchor="end">'
                f"{escape(label)}</text>"
            )
            parts.append(
                f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{colour}"/>'
            )
            parts.append(
                f'<text x="{label_w + w + 6:.1f}" y="{y + bar_h - 5}">{number(row["mb_s"])}</text>'
            )
            y += bar_h + gap
        missing = [
            f"{implementation} {size}"
            for size in sorted({r["size"] for r in rows if r["size"]}, key=SIZE_ORDER.get)
            for implementation in sorted({r["implementation"] for r in rows})
            if not any(r["implementation"] == implementation and r["size"] == size for r in rows)
        ]
        if missing:
            parts.append(
                f'<text x="{label_w}" y="{y + 12}" fill="#555">not measured: '
                f"{escape(', '.join(missing))} (see BENCHMARKS.md)</text>"
            )
            y += title_h
        y += panel_gap
    height = y
    header = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">\n'
        f'<rect width="100%" height="100%" fill="white"/>\n'
        f'<text x="10" y="20" font-size="14" font-weight="bold">'
        f"SSE decoding throughput: sluice-sse vs eventsource-stream vs sse-stream</text>\n"
    )
    return header + "\n".join(parts) + "\n</svg>\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--criterion", default="target/criterion")
    parser.add_argument("--svg", default="bench/decoder.svg")
    args = parser.parse_args()
    results = load(args.criterion)
    if not any(results.values()):
        sys.exit(f"no results under {args.criterion}: run the benchmark first")
    os.makedirs(os.path.dirname(args.svg) or ".", exist_ok=True)
    with open(args.svg, "w") as f:
        f.write(svg(results))
    print(markdown(results))
    print(f"wrote {args.svg}", file=sys.stderr)


if __name__ == "__main__":
    main()
