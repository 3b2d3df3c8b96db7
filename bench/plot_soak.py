#!/usr/bin/env python3
"""Charts a soak (`sluice bench soak --json`): the server's RSS and open files over the run.

    python3 bench/plot_soak.py [--json bench/results/soak.json] [--svg bench/soak.svg]
                               [--also OTHER.json --also-label "window off"]
                               [--heap HEAP.json [--also-heap OTHER-HEAP.json]]

Two panels, each with the warm-up (the first fifth, left out of the slopes) shaded: resident
memory in MiB and open file descriptors, against time. A server that leaks climbs; one that
does not stays flat after the warm-up. With `--also`, a second run's RSS is drawn beside the
first (the same soak with one setting changed). With `--heap` (bench/soak-heap.sh's
`*.heap-series.json`: the heap in use as heaptrack saw it, the most in each 10 s), a third
panel shows the heap itself, which RSS only bounds from above.
"""

import argparse
import json
import sys

from plot_hub import BLUE, GREY, ORANGE, PANEL_W, Panel, write_svg


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default="bench/results/soak.json")
    ap.add_argument("--svg", default="bench/soak.svg")
    ap.add_argument("--also", help="a second soak's JSON, whose RSS is drawn too")
    ap.add_argument("--also-label", default="second run")
    ap.add_argument("--heap", help="the heap in use over a soak (soak-heap.sh's heap-series)")
    ap.add_argument("--also-heap", help="the second run's heap series")
    args = ap.parse_args()
    also = None
    if args.also:
        with open(args.also) as f:
            also = json.load(f)
    with open(args.json) as f:
        run = json.load(f)
    samples = run["samples"]
    if not samples:
        sys.exit(f"no samples in {args.json}")
    ts = [s["t_s"] for s in samples]
    rss = [s["rss_kib"] / 1024 for s in samples]
    fds = [s["fds"] for s in samples]
    warm = ts[-1] * 0.2

    panels = []
    for i, (title, label, ys, colour, slope) in enumerate([
        ("Server RSS during the soak", "MiB", rss, BLUE,
         f"{run['rss_slope_kib_per_min']:+.1f} KiB/min after warm-up"),
        ("Server open files during the soak", "file descriptors", fds, ORANGE,
         f"{run['fd_slope_per_min']:+.2f} /min after warm-up"),
    ]):
        extra = [x["rss_kib"] / 1024 for x in also["samples"]] if also and i == 0 else []
        p = Panel(PANEL_W * i, title, "seconds", label, [0] + ts, [0] + [max(ys + extra) * 1.2])
        top = p.y(p.yticks[-1])
        bottom = p.y(p.yticks[0])
        p.out.append(f'<rect x="{p.x(0)}" y="{top}" width="{p.x(warm) - p.x(0)}" '
                     f'height="{bottom - top}" fill="#f6f8fa"/>')
        p.frame()
        p.line(ts, ys, colour, slope, dots=False, label_at=len(ts) // 2)
        if extra:
            other_ts = [x["t_s"] for x in also["samples"]]
            p.line(other_ts, extra, GREY, f"{args.also_label}: "
                   f"{also['rss_slope_kib_per_min']:+.1f} KiB/min", dots=False,
                   label_at=len(other_ts) * 3 // 4)
        p.out.append(f'<text x="{p.x(warm / 2)}" y="{bottom - 6}" text-anchor="middle" '
                     f'fill="{GREY}">warm-up</text>')
        panels.append(p)

    if args.heap:
        panels.append(heap_panel(PANEL_W * len(panels), args, warm))
    write_svg(args.svg, panels)


def heap_panel(x, args, warm):
    """The heap in use against time, for one run and perhaps the second."""
    runs = [(args.heap, BLUE, "heap")]
    if args.also_heap:
        runs.append((args.also_heap, GREY, f"{args.also_label}: heap"))
    series = []
    for path, colour, label in runs:
        with open(path) as f:
            points = json.load(f)
        series.append(([t for t, _ in points], [b / 2**20 for _, b in points], colour, label))
    ts = [t for s in series for t in s[0]]
    ys = [y for s in series for y in s[1]]
    p = Panel(x, "Heap in use (heaptrack)", "seconds", "MiB", [0] + ts, [0, max(ys) * 1.2])
    p.frame()
    for xs, values, colour, label in series:
        p.line(xs, values, colour, f"{label}: {values[-1]:.1f} MiB at the end", dots=False,
               label_at=len(xs) // 2)
    p.out.append(f'<text x="{p.x(warm / 2)}" y="{p.y(p.yticks[0]) - 6}" text-anchor="middle" '
                 f'fill="{GREY}">warm-up</text>')
    return p


if __name__ == "__main__":
    main()
