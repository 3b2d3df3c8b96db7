#!/usr/bin/env python3
"""Tables and chart of Sluice's Durable Streams beside the reference server (bench/durable.sh).

    python3 bench/plot_durable.py [--dir bench/results/durable] [--svg bench/durable.svg]

Reads DIR/<part>-<server>.json (`sluice bench durable --json`, part appends, live or idle;
server sluice-memory, sluice-sqlite, node-memory or node-file), prints the Markdown tables of
BENCHMARKS.md's "Durable Streams: Sluice beside the reference server" (each figure of the four
servers, and Sluice's over the reference server's: memory over memory, SQLite over file), and
writes an SVG of three panels: appends/s, append → receipt p99 against the append rate, and
memory per idle reader. Python standard library only.
"""

import argparse
import glob
import json
import os
import re
import sys
from html import escape

from plot_hub import BLUE, MARGIN_B, MARGIN_L, MARGIN_T, ORANGE, PANEL_H, PANEL_W, Panel, write_svg

SERVERS = ("sluice-memory", "sluice-sqlite", "node-memory", "node-file")
LABELS = {"sluice-memory": "Sluice, memory", "sluice-sqlite": "Sluice, SQLite",
          "node-memory": "reference, memory", "node-file": "reference, file"}
COLOURS = {"sluice-memory": BLUE, "sluice-sqlite": "#0a3069", "node-memory": ORANGE,
           "node-file": "#9a6700"}
# Sluice's store beside the reference server's that keeps streams the same way.
PAIRS = (("sluice-memory", "node-memory"), ("sluice-sqlite", "node-file"))


def load(path):
    with open(path) as f:
        return json.load(f)


def ratio(a, b):
    return f"{a / b:.2f}×" if a is not None and b else "–"


def num(v, digits=0):
    return "–" if v is None else f"{v:,.{digits}f}"


def appends_table(runs):
    head = ["writers", "producers"] + [f"{LABELS[s]} appends/s" for s in SERVERS if s in runs]
    head += [f"{LABELS[a]} ÷ {LABELS[b]}" for a, b in PAIRS if a in runs and b in runs]
    out = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    keys = [(a["writers"], a["producers"]) for a in next(iter(runs.values()))["appends"]]
    for writers, producers in keys:
        row = {s: next((a for a in runs[s]["appends"]
                        if (a["writers"], a["producers"]) == (writers, producers)), None)
               for s in runs}
        rate = {s: r["appends_per_second"] if r else None for s, r in row.items()}
        cells = [str(writers), "yes" if producers else "no"]
        cells += [f"{num(rate[s])} ({row[s]['p99_ms']:.1f} ms p99, {row[s]['server_cpu_percent']:.0f}% CPU)"
                  if row[s] else "–" for s in SERVERS if s in runs]
        cells += [f"**{ratio(rate[a], rate[b])}**" for a, b in PAIRS if a in runs and b in runs]
        out.append("| " + " | ".join(cells) + " |")
    errors = {s: sum(a["errors"] + a["duplicates"] for a in runs[s]["appends"]) for s in runs}
    out.append("")
    out.append("Errors and duplicates: " + ", ".join(f"{LABELS[s]} {errors[s]}" for s in runs))
    return "\n".join(out)


def live_table(runs):
    # The writer is paced but waits for each answer: a server that cannot keep up appends
    # fewer than asked (the ticks it missed are counted, not queued), so "appended/s" is what
    # it took and "delivered" the share of that which reached every reader.
    out = ["| messages/s | server | appended/s | p50 ms | p99 ms | max ms | delivered "
           "| server CPU | p99 ÷ reference's |",
           "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    rates = sorted({s["rate"] for r in runs.values() for s in r["steps"]})
    for rate in rates:
        step = {s: next((x for x in runs[s]["steps"] if x["rate"] == rate), None) for s in runs}
        for server in SERVERS:
            s = step.get(server)
            if s is None:
                continue
            peer = dict((a, b) for a, b in PAIRS).get(server)
            vs = ratio(s["p99_ms"], step[peer]["p99_ms"]) if step.get(peer) else ""
            share = s["delivered"] / s["expected"] if s["expected"] else 0
            appended = s["published"] / runs[server]["step_seconds"]
            out.append(f"| {rate:g} | {LABELS[server]} | {appended:,.1f} "
                       f"| {s['p50_ms']:.1f} | {s['p99_ms']:.1f} "
                       f"| {s['max_ms']:.1f} | {share:.2%} | {s['server_cpu_percent']:.0f}% "
                       f"| {vs} |")
    resumed = {s: r.get("resumed", 0) for s, r in runs.items()}
    out.append("")
    out.append(f"Readers: {next(iter(runs.values()))['connect']['connected']:,}; reads the server "
               "ended and the reader resumed from its offset: "
               + ", ".join(f"{LABELS[s]} {n}" for s, n in resumed.items()))
    return "\n".join(out)


def idle_table(runs):
    counts = sorted({r["idle"]["subscribers"] for rs in runs.values() for r in rs})
    head = ["idle readers"] + [f"{LABELS[s]} KiB each" for s in SERVERS if s in runs]
    head += [f"{LABELS[a]} ÷ {LABELS[b]}" for a, b in PAIRS if a in runs and b in runs]
    out = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for n in counts:
        kib = {s: next((r["idle"]["bytes_per_subscriber"] / 1024 for r in rs
                        if r["idle"]["subscribers"] == n and r["idle"]["bytes_per_subscriber"]),
                       None) for s, rs in runs.items()}
        cells = [f"{n:,}"] + [num(kib[s], 1) for s in SERVERS if s in runs]
        cells += [f"**{ratio(kib[a], kib[b])}**" for a, b in PAIRS if a in runs and b in runs]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


class Bars(Panel):
    """Grouped bars: one group per label, one bar per series."""

    def bars(self, groups, series):
        x0, x1 = self.x(self.xticks[0]), self.x(self.xticks[-1])
        width = (x1 - x0) / len(groups)
        bar = width * 0.8 / len(series)
        for g, label in enumerate(groups):
            left = x0 + g * width + width * 0.1
            for i, (colour, values) in enumerate(series):
                v = values[g]
                if v is None:
                    continue
                top, base = self.y(v), self.y(self.yticks[0])
                self.out.append(f'<rect x="{left + i * bar:.1f}" y="{top:.1f}" '
                                f'width="{bar * 0.9:.1f}" height="{base - top:.1f}" '
                                f'fill="{colour}"/>')
            self.out.append(f'<text x="{x0 + (g + 0.5) * width:.1f}" '
                            f'y="{PANEL_H - MARGIN_B + 17}" text-anchor="middle">'
                            f"{escape(label)}</text>")

    def frame(self):
        # The groups label themselves: no numeric x axis.
        self.xticks = [0, 1]
        super().frame(x_ticks=False)


def legend(panel, names):
    for i, name in enumerate(names):
        y = MARGIN_T + 6 + 15 * i
        x = panel.ox + MARGIN_L + 8
        panel.out.append(f'<rect x="{x}" y="{y - 9}" width="10" height="10" '
                         f'fill="{COLOURS[name]}"/>')
        panel.out.append(f'<text x="{x + 14}" y="{y}">{escape(LABELS[name])}</text>')


def svg(appends, live, idle, path):
    panels = []
    if appends:
        names = [s for s in SERVERS if s in appends]
        keys = [(a["writers"], a["producers"]) for a in appends[names[0]]["appends"]]
        series = []
        for s in names:
            by_key = {(a["writers"], a["producers"]): a["appends_per_second"]
                      for a in appends[s]["appends"]}
            series.append((COLOURS[s], [by_key.get(k) for k in keys]))
        ys = [v for _, values in series for v in values if v is not None]
        p = Bars(0, "Appends/s, one stream", "writers (p: producer headers)", "appends/s",
                 [1], ys)
        p.frame()
        p.bars([f"{w}{' p' if prod else ''}" for w, prod in keys], series)
        legend(p, names)
        panels.append(p)
    if live:
        xs = [s["rate"] for r in live.values() for s in r["steps"]]
        ys = [max(s["p99_ms"], 0.1) for r in live.values() for s in r["steps"]]
        n = next(iter(live.values()))["connect"]["connected"]
        p = Panel(PANEL_W * len(panels), f"Append → receipt p99, {n:,} readers",
                  "appends/s", "ms (log scale)", [0] + xs, ys, log_y=True)
        p.frame()
        for s in SERVERS:
            if s in live:
                steps = live[s]["steps"]
                p.line([x["rate"] for x in steps], [max(x["p99_ms"], 0.1) for x in steps],
                       COLOURS[s], LABELS[s], dashed=s.endswith(("sqlite", "file")),
                       below=s.startswith("sluice"))
        panels.append(p)
    if idle:
        pts = {s: sorted((r["idle"]["subscribers"], r["idle"]["bytes_per_subscriber"] / 1024)
                         for r in rs if r["idle"]["bytes_per_subscriber"])
               for s, rs in idle.items()}
        xs = [n for v in pts.values() for n, _ in v]
        ys = [k for v in pts.values() for _, k in v]
        p = Panel(PANEL_W * len(panels), "Memory per idle reader", "readers", "KiB",
                  [0] + xs, [0] + ys)
        p.frame()
        for s in SERVERS:
            if pts.get(s):
                p.line([n for n, _ in pts[s]], [k for _, k in pts[s]], COLOURS[s], LABELS[s],
                       dashed=s.endswith(("sqlite", "file")), below=s.startswith("sluice"))
        panels.append(p)
    if not panels:
        return
    write_svg(path, panels)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default="bench/results/durable")
    ap.add_argument("--svg", default="bench/durable.svg")
    args = ap.parse_args()

    parts = {"appends": {}, "live": {}, "idle": {}}
    for path in glob.glob(os.path.join(args.dir, "*-*.json")):
        m = re.search(r"(appends|live|idle)-([\w-]+)\.json$", path)
        if m and m.group(2) in SERVERS:
            parts[m.group(1)][m.group(2)] = load(path)
    appends = {s: r for s, r in parts["appends"].items() if r["appends"]}
    live = {s: r["live"] for s, r in parts["live"].items() if r.get("live")}
    idle = {s: r["idle"] for s, r in parts["idle"].items() if r["idle"]}
    if not (appends or live or idle):
        sys.exit(f"nothing to show in {args.dir}")

    sections = []
    if appends:
        sections += ["### Appends/s (one stream, writers back to back)", appends_table(appends)]
    if live:
        sections += ["### Append → receipt, SSE readers of one stream", live_table(live)]
    if idle:
        sections += ["### Memory per idle SSE reader", idle_table(idle)]
    print("\n\n".join(sections))
    svg(appends, live, idle, args.svg)


if __name__ == "__main__":
    main()
