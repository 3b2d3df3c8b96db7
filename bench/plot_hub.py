#!/usr/bin/env python3
"""Charts the hub benchmark (`sluice bench hub --json`). Python standard library only.

Run bench/hub.sh first (it calls this at the end), or:

    python3 bench/plot_hub.py [--dir target/bench-hub] [--svg bench/hub.svg]

It reads DIR/rates.json (one run, 10,000 subscribers at rising publish rates) and
DIR/idle-<N>.json (idle runs at several N), writes an SVG of three panels (deliveries/s and
p99 latency against the publish rate, RSS per idle subscriber against N, each with its
design target), and prints the Markdown tables for BENCHMARKS.md.
"""

import argparse
import glob
import json
import math
import os
import re
import sys
from html import escape

BLUE, ORANGE, GREY, RED = "#1f6feb", "#d29922", "#8b949e", "#cf222e"
PANEL_W, PANEL_H, MARGIN_L, MARGIN_B, MARGIN_T, MARGIN_R = 360, 300, 70, 50, 40, 20


def nice_ticks(lo, hi, count=5):
    """Round tick values covering [lo, hi]."""
    if hi <= lo:
        hi = lo + 1
    raw = (hi - lo) / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    ticks, v = [], start
    while v <= hi + step * 0.5:
        ticks.append(round(v, 10))
        v += step
    return ticks


def fmt(v):
    if abs(v) >= 1e6:
        return f"{v / 1e6:g}M"
    if abs(v) >= 1e3:
        return f"{v / 1e3:g}k"
    return f"{v:g}"


class Panel:
    """One chart: linear x, linear or log10 y, drawn at (ox, oy)."""

    def __init__(self, ox, title, xlabel, ylabel, xs, ys, log_y=False):
        self.ox, self.oy = ox, 0
        self.title, self.xlabel, self.ylabel, self.log_y = title, xlabel, ylabel, log_y
        self.xticks = nice_ticks(0, max(xs))
        if log_y:
            lo = math.floor(math.log10(max(min(ys), 1e-3)))
            hi = math.ceil(math.log10(max(ys)))
            self.yticks = [10**e for e in range(lo, hi + 1)]
        else:
            self.yticks = nice_ticks(0, max(ys))
        self.out = []

    def x(self, v):
        lo, hi = self.xticks[0], self.xticks[-1]
        return self.ox + MARGIN_L + (v - lo) / (hi - lo) * (PANEL_W - MARGIN_L - MARGIN_R)

    def y(self, v):
        lo, hi = self.yticks[0], self.yticks[-1]
        if self.log_y:
            v, lo, hi = math.log10(max(v, lo)), math.log10(lo), math.log10(hi)
        frac = (v - lo) / (hi - lo)
        return MARGIN_T + (1 - frac) * (PANEL_H - MARGIN_T - MARGIN_B)

    def frame(self, x_ticks=True):
        o = self.out
        x0, x1 = self.x(self.xticks[0]), self.x(self.xticks[-1])
        y0, y1 = self.y(self.yticks[0]), self.y(self.yticks[-1])
        o.append(f'<text x="{(x0 + x1) / 2}" y="22" text-anchor="middle" font-weight="bold">'
                 f"{escape(self.title)}</text>")
        for t in self.xticks if x_ticks else ():
            o.append(f'<line x1="{self.x(t)}" y1="{y0}" x2="{self.x(t)}" y2="{y0 + 4}" stroke="#333"/>')
            o.append(f'<text x="{self.x(t)}" y="{y0 + 17}" text-anchor="middle">{fmt(t)}</text>')
        for t in self.yticks:
            o.append(f'<line x1="{x0}" y1="{self.y(t)}" x2="{x1}" y2="{self.y(t)}" stroke="#eee"/>')
            o.append(f'<text x="{x0 - 6}" y="{self.y(t) + 4}" text-anchor="end">{fmt(t)}</text>')
        o.append(f'<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="#333"/>')
        o.append(f'<line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}" stroke="#333"/>')
        o.append(f'<text x="{(x0 + x1) / 2}" y="{PANEL_H - 10}" text-anchor="middle">'
                 f"{escape(self.xlabel)}</text>")
        cy = (y0 + y1) / 2
        o.append(f'<text x="{self.ox + 16}" y="{cy}" text-anchor="middle" '
                 f'transform="rotate(-90 {self.ox + 16} {cy})">{escape(self.ylabel)}</text>')

    def line(self, xs, ys, colour, label, dashed=False, dots=True, label_at=-1, below=False):
        pts = " ".join(f"{self.x(a):.1f},{self.y(b):.1f}" for a, b in zip(xs, ys))
        dash = ' stroke-dasharray="5,4"' if dashed else ""
        self.out.append(f'<polyline points="{pts}" fill="none" stroke="{colour}" '
                        f'stroke-width="2"{dash}/>')
        if dots:
            for a, b in zip(xs, ys):
                self.out.append(f'<circle cx="{self.x(a):.1f}" cy="{self.y(b):.1f}" r="3" '
                                f'fill="{colour}"/>')
        lx, ly = self.x(xs[label_at]), self.y(ys[label_at]) + (17 if below else -7)
        anchor = "start" if below else "end"
        lx += 6 if below else -4
        self.out.append(f'<text x="{lx}" y="{ly}" text-anchor="{anchor}" fill="{colour}">'
                        f"{escape(label)}</text>")

    def hline(self, v, colour, label):
        x0, x1 = self.x(self.xticks[0]), self.x(self.xticks[-1])
        self.out.append(f'<line x1="{x0}" y1="{self.y(v)}" x2="{x1}" y2="{self.y(v)}" '
                        f'stroke="{colour}" stroke-dasharray="2,3"/>')
        self.out.append(f'<text x="{x1 - 4}" y="{self.y(v) - 4}" text-anchor="end" '
                        f'fill="{colour}">'
                        f"{escape(label)}</text>")



def write_svg(path, panels):
    """Writes `panels` side by side, one row, as an SVG file, and says so on stderr."""
    width = PANEL_W * len(panels)
    body = "\n".join("\n".join(p.out) for p in panels)
    with open(path, "w") as f:
        f.write(f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{PANEL_H}" '
                f'viewBox="0 0 {width} {PANEL_H}" font-family="sans-serif" font-size="12">\n'
                f'<rect width="100%" height="100%" fill="white"/>\n{body}\n</svg>\n')
    print(f"wrote {path}", file=sys.stderr)

def load(path):
    with open(path) as f:
        return json.load(f)


def rate_tables(run):
    lines = [
        "| publish/s | offered deliveries/s | deliveries/s | delivered | p50 ms | p99 ms "
        "| p99.9 ms | max ms | server CPU | load gen CPU | server writes/s | events/write "
        "| server RSS MiB | errors |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    n = run["connect"]["connected"]
    for s in run["steps"]:
        if s["rate"] == 0:
            continue
        delivered = f'{100 * s["delivered"] / s["expected"]:.2f}%' if s["expected"] else "-"
        writes = s.get("server_writes_per_second")
        per_write = f'{s["received_per_second"] / writes:.1f}' if writes else "-"
        cpu = lambda v: f"{v:.0f}%" if v is not None else "-"
        errors = s["publish_errors"] + s["publish_behind"] + s["disconnects"]
        rss = s["server_rss_kib"]
        lines.append(
            f'| {s["rate"]:g} | {s["rate"] * n:,.0f} | {s["deliveries_per_second"]:,.0f} '
            f'| {delivered} | {s["p50_ms"]:.2f} | {s["p99_ms"]:.2f} | {s["p999_ms"]:.2f} '
            f'| {s["max_ms"]:.1f} | {cpu(s["server_cpu_percent"])} '
            f'| {cpu(s["loadgen_cpu_percent"])} | {writes or 0:,.0f} | {per_write} '
            f'| {rss / 1024 if rss else 0:.1f} | {errors} |'
        )
    return "\n".join(lines)


def idle_table(idle_runs):
    lines = [
        "| subscribers | connect time s | connects/s | server RSS before MiB "
        "| server RSS idle MiB | RSS per subscriber KiB | accept-queue overflows | errors |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n, run in idle_runs:
        c, i = run["connect"], run["idle"]
        lines.append(
            f'| {i["subscribers"]:,} | {c["seconds"]:.2f} | {c["per_second"]:,.0f} '
            f'| {i["server_rss_before_kib"] / 1024:.1f} | {i["server_rss_idle_kib"] / 1024:.1f} '
            f'| {i["bytes_per_subscriber"] / 1024:.1f} | {c.get("listen_overflows", "?")} '
            f'| {c["errors"] + c["gave_up"]} |'
        )
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default="target/bench-hub")
    ap.add_argument("--svg", default="bench/hub.svg")
    args = ap.parse_args()

    rates_path = os.path.join(args.dir, "rates.json")
    run = load(rates_path) if os.path.exists(rates_path) else None
    idle_runs = []
    for path in glob.glob(os.path.join(args.dir, "idle-*.json")):
        m = re.search(r"idle-(\d+)\.json$", path)
        if m:
            idle_runs.append((int(m.group(1)), load(path)))
    idle_runs.sort()
    if run is None and not idle_runs:
        sys.exit(f"nothing to plot in {args.dir}")

    panels = []
    if run is not None:
        steps = [s for s in run["steps"] if s["rate"] > 0]
        n = run["connect"]["connected"]
        rates = [s["rate"] for s in steps]
        got = [s["deliveries_per_second"] for s in steps]
        offered = [r * n for r in rates]
        p = Panel(0, f"Deliveries/s, {n:,} subscribers", "publish rate (updates/s)",
                  "deliveries/s", rates, offered + got + [500_000])
        p.frame()
        p.hline(500_000, RED, "target 500k/s")
        p.line(rates, offered, GREY, "offered", dashed=True, dots=False, label_at=len(rates) // 2)
        p.line(rates, got, BLUE, "delivered", below=True, label_at=len(rates) // 2)
        panels.append(p)
        p99 = [max(s["p99_ms"], 0.01) for s in steps]
        p50 = [max(s["p50_ms"], 0.01) for s in steps]
        q = Panel(PANEL_W, "Publish→receive latency", "publish rate (updates/s)",
                  "ms (log scale)", rates, p99 + p50 + [50], log_y=True)
        q.frame()
        q.hline(50, RED, "target p99 < 50 ms")
        q.line(rates, p99, ORANGE, "p99")
        q.line(rates, p50, BLUE, "p50", below=True, label_at=len(rates) // 2)
        panels.append(q)
    if idle_runs:
        ns = [i["idle"]["subscribers"] for _, i in idle_runs]
        kib = [i["idle"]["bytes_per_subscriber"] / 1024 for _, i in idle_runs]
        r = Panel(PANEL_W * len(panels), "Server RSS per idle subscriber", "subscribers",
                  "KiB", [0] + ns, kib + [8])
        r.frame()
        r.hline(8, RED, "target ≤ 8 KiB")
        r.line(ns, kib, BLUE, "measured")
        panels.append(r)

    write_svg(args.svg, panels)
    if run is not None:
        print(rate_tables(run) + "\n")
    if idle_runs:
        print(idle_table(idle_runs))


if __name__ == "__main__":
    main()
