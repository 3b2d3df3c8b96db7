#!/usr/bin/env python3
"""Charts a soak (`sluice bench soak --json`): the server's RSS and open files over the run.

    python3 bench/plot_soak.py [--json bench/results/soak.json] [--svg bench/soak.svg]
                               [--also OTHER.json --also-label "window off"]

Two panels, each with the warm-up (the first fifth, left out of the slopes) shaded: resident
memory in MiB and open file descriptors, against time. A server that leaks climbs; one that
does not stays flat after the warm-up. With `--also`, a second run's RSS is drawn beside the
first (the same soak with one setting changed).
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

    write_svg(args.svg, panels)


if __name__ == "__main__":
    main()
