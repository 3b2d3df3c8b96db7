#!/usr/bin/env python3
"""Charts and tables of the side-by-side run (bench/peers.sh). Python standard library only.

    python3 bench/plot_peers.py [--dir bench/results/peers] [--svg bench/peers.svg]

Reads DIR/hub-*.json (`sluice bench hub`), DIR/gateway-*.json (`sluice bench gateway`) and
DIR/model.json (bench/peers/model.py); prints the Markdown tables of BENCHMARKS.md's "Side by
side with the peers" (every figure of Sluice beside the peer's and their ratio, then each of
issue 9's targets, met or not) and writes an SVG of four panels: fan-out p99 and deliveries/s
against the publish rate, idle memory per subscriber, and the time to first token each gateway
adds, and the local model's decode speed beside llama.cpp's.
"""

import argparse
import glob
import json
import math
import os
import re
import sys

from plot_hub import BLUE, GREY, ORANGE, PANEL_W, RED, Panel, write_svg

HUBS = ("sluice", "nchan")
LABELS = {"sluice": "Sluice", "nchan": "Nchan", "floor": "floor", "litellm": "LiteLLM",
          "relay": "nginx relay",
          "llama.cpp": "llama.cpp"}


def load(path):
    with open(path) as f:
        return json.load(f)


def maybe(path):
    return load(path) if os.path.exists(path) else None


def ratio(a, b):
    return f"{a / b:.2f}×" if a is not None and b else "–"


def share(step):
    """The share of a step's expected deliveries that were made, or a dash for a skipped step."""
    return f"{step['delivered'] / max(step['expected'], 1):.1%}" if step else "–"


def sustained(run, limit_ms=1000.0):
    """The highest deliveries/s of a step with p99 under the limit and every update delivered."""
    ok = [s for s in run["steps"]
          if s["p99_ms"] < limit_ms and s["expected"] and s["delivered"] >= 0.99 * s["expected"]]
    return max((s["deliveries_per_second"] for s in ok), default=0.0)


def fanout_tables(runs):
    floor = runs.get("floor")
    out = ["| publish/s | deliveries/s (Sluice · Nchan) | p99 ms Sluice | p99 ms Nchan | "
           "p99 Sluice ÷ Nchan | p99 ms floor | delivered (Sluice · Nchan) |",
           "| ---: | --- | ---: | ---: | ---: | ---: | --- |"]
    steps = {h: {s["rate"]: s for s in runs[h]["steps"]} for h in HUBS}
    floor_steps = {s["rate"]: s for s in floor["steps"]} if floor else {}
    for rate in sorted(set(steps["sluice"]) | set(steps["nchan"])):
        s, n, f = steps["sluice"].get(rate), steps["nchan"].get(rate), floor_steps.get(rate)

        def cell(step, key, f="{:,.0f}"):
            return f.format(step[key]) if step else "skipped (saturated)"

        out.append(f"| {rate:g} | {cell(s, 'deliveries_per_second')} · "
                   f"{cell(n, 'deliveries_per_second')} | {cell(s, 'p99_ms', '{:,.1f}')} | "
                   f"{cell(n, 'p99_ms', '{:,.1f}')} | "
                   f"{ratio(s and s['p99_ms'], n and n['p99_ms'])} | "
                   f"{cell(f, 'p99_ms', '{:,.1f}') if floor else '–'} | {share(s)} · {share(n)} |")
    out.append("")
    best = {h: sustained(runs[h]) for h in HUBS}
    floor_best = f"; the floor hub {sustained(floor):,.0f}" if floor else ""
    out.append(f"Most deliveries/s with p99 under 1 s: Sluice {best['sluice']:,.0f}, Nchan "
               f"{best['nchan']:,.0f} ({ratio(best['sluice'], best['nchan'])}){floor_best}.")
    storms = {h: runs[h].get("storm") for h in HUBS}
    if all(storms.values()):
        out += ["", "| connect storm (10,000 reconnect at once with Last-Event-ID) | Sluice | Nchan |",
                "| --- | ---: | ---: |"]
        rows = [("all back in, s", "reconnect_seconds", "{:.2f}"),
                ("reconnections/s", "reconnects_per_second", "{:,.0f}"),
                ("missed updates replayed", "replayed", "{:,}"),
                ("of", "replay_expected", "{:,}"),
                ("every replay in, s", "replay_seconds", "{:.2f}"),
                ("reconnect → replayed update p99, ms", "replay_p99_ms", "{:,.1f}"),
                ("failed attempts", "connect_errors", "{}"),
                ("accept-queue overflows", "listen_overflows", "{}")]
        for label, key, f in rows:
            cells = [f.format(storms[h][key]) if storms[h][key] is not None else "–" for h in HUBS]
            out.append(f"| {label} | {cells[0]} | {cells[1]} |")
    return "\n".join(out)


def topics_table(runs):
    out = ["| 10,000 topics × 1 subscriber, publish/s | Sluice p50 · p99 ms | Nchan p50 · p99 ms | "
           "p99 Sluice ÷ Nchan | floor p50 · p99 ms | delivered (Sluice · Nchan) |",
           "| ---: | --- | --- | ---: | --- | --- |"]
    steps = {h: {s["rate"]: s for s in runs[h]["steps"]} for h in runs}
    for rate in sorted(set(steps["sluice"]) | set(steps["nchan"])):
        s, n = steps["sluice"].get(rate), steps["nchan"].get(rate)
        f = steps.get("floor", {}).get(rate)

        def lat(step):
            return f"{step['p50_ms']:.1f} · {step['p99_ms']:.1f}" if step else "skipped"

        out.append(f"| {rate:g} | {lat(s)} | {lat(n)} | "
                   f"{ratio(s and s['p99_ms'], n and n['p99_ms'])} | {lat(f)} | "
                   f"{share(s)} · {share(n)} |")
    return "\n".join(out)


def idle_table(idle):
    out = ["| idle subscribers | Sluice KiB each | Nchan KiB each | Sluice ÷ Nchan | floor KiB each |",
           "| ---: | ---: | ---: | ---: | ---: |"]
    for n in sorted(idle):
        s, c, f = idle[n].get("sluice"), idle[n].get("nchan"), idle[n].get("floor")
        floor = f"{f:.1f}" if f is not None else "–"
        out.append(f"| {n:,} | {s:.1f} | {c:.1f} | {ratio(s, c)} | {floor} |")
    return "\n".join(out)


def per_stream(run, streams):
    """A gateway's memory per open stream, KiB."""
    return (run["rss_open_kib"] - run["rss_idle_kib"]) / streams if run else None


def gateway_table(gateways):
    out = ["| streams | through | answers | added TTFT p50 · p99 ms | added gap p50 · p99 ms | "
           "KiB per open stream | CPU % | errors | disconnect → upstream cancelled p50 ms |",
           "| ---: | --- | ---: | --- | --- | ---: | ---: | ---: | ---: |"]
    for k in sorted(gateways):
        g = gateways[k]
        d = g["direct"]
        for r in g["gateways"]:
            def added(what, q):
                return f"{(r['path'][what][q] - d[what][q]) / 1e3:+.2f}"

            cancel = f"{r['cancel']['p50'] / 1e3:.2f}" if r.get("cancel") else "never"
            out.append(
                f"| {k:,} | {LABELS.get(r['name'], r['name'])} | "
                f"{r['path']['answers'] + r['path']['errors']:,} | "
                f"{added('ttft', 'p50')} · {added('ttft', 'p99')} | "
                f"{added('gap', 'p50')} · {added('gap', 'p99')} | "
                f"{per_stream(r, k):.1f} | {r['cpu_percent']:.0f} | {r['path']['errors']} | "
                f"{cancel} |")
        out.append(f"| {k:,} | *straight to the upstream: TTFT p50 · p99 ms* | "
                   f"{d['answers'] + d['errors']:,} | {d['ttft']['p50'] / 1e3:.2f} · "
                   f"{d['ttft']['p99'] / 1e3:.2f} | {d['gap']['p50'] / 1e3:.2f} · "
                   f"{d['gap']['p99'] / 1e3:.2f} | | | {d['errors']} | "
                   f"{g['cancel_direct']['p50'] / 1e3:.2f} |")
    return "\n".join(out)


def model_table(model):
    out = ["| threads | | prompt tokens | first token ms | prompt tokens/s | decode tokens/s | "
           "RSS MiB |", "| ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
    for threads, pair in model["threads"].items():
        s, l = pair["sluice"], pair["llama.cpp"]
        for name, r in (("Sluice", s), ("llama.cpp", l)):
            out.append(f"| {threads} | {name} | {r['prompt_tokens']} | {r['ttft_ms']:.0f} | "
                       f"{r['prompt_tokens_per_s']:.0f} | {r['decode_tokens_per_s']:.1f} | "
                       f"{r['rss_kib'] / 1024:.0f} |")
        out.append(f"| {threads} | **Sluice ÷ llama.cpp** | | {ratio(s['ttft_ms'], l['ttft_ms'])} | "
                   f"{ratio(s['prompt_tokens_per_s'], l['prompt_tokens_per_s'])} | "
                   f"{ratio(s['decode_tokens_per_s'], l['decode_tokens_per_s'])} | "
                   f"{ratio(s['rss_kib'], l['rss_kib'])} |")
    return "\n".join(out)


def targets(fanout, idle, gateways, model):
    """Issue 9's targets: (target, measured, what the floor hub gets, met)."""
    rows = []
    if fanout:
        floor = fanout.get("floor")

        def worst_against_nchan(run):
            by_rate = {x["rate"]: x for x in run["steps"]}
            n_ok = [x for x in fanout["nchan"]["steps"]
                    if x["p99_ms"] < 1000 and x["delivered"] >= 0.99 * max(x["expected"], 1)]
            return max((by_rate[x["rate"]]["p99_ms"] / x["p99_ms"] for x in n_ok
                        if x["rate"] in by_rate), default=None)

        def p99_at_100k(run):
            at = [x for x in run["steps"] if x["deliveries_per_second"] >= 95_000]
            return at[0]["p99_ms"] if at else None

        worst = worst_against_nchan(fanout["sluice"])
        floor_worst = worst_against_nchan(floor) if floor else None
        rows.append(("hub p99 ≤ ½ Nchan's at every rate Nchan sustains",
                     f"worst Sluice ÷ Nchan {worst:.2f}×" if worst else "–",
                     f"{floor_worst:.2f}×" if floor_worst else "–",
                     worst is not None and worst <= 0.5))
        p99 = p99_at_100k(fanout["sluice"])
        floor_p99 = p99_at_100k(floor) if floor else None
        rows.append(("hub p99 ≤ 50 ms at 100,000 deliveries/s",
                     f"{p99:.1f} ms" if p99 is not None else "not reached",
                     f"{floor_p99:.1f} ms" if floor_p99 is not None else "–",
                     p99 is not None and p99 <= 50))
        best = {h: sustained(run) for h, run in fanout.items()}
        r = best["sluice"] / best["nchan"] if best["nchan"] else None
        floor_r = best["floor"] / best["nchan"] if floor and best["nchan"] else None
        rows.append(("hub deliveries/s with p99 < 1 s ≥ 5× Nchan's",
                     f"{r:.2f}×" if r else "–", f"{floor_r:.2f}×" if floor_r else "–",
                     r is not None and r >= 5))
    if idle:
        worst_n = max((n for n in idle if "sluice" in idle[n]), key=lambda n: idle[n]["sluice"])
        worst = idle[worst_n]["sluice"]
        floor = idle[worst_n].get("floor")
        rows.append(("idle memory ≤ 8 KiB per subscriber", f"{worst:.1f} KiB at {worst_n:,}",
                     f"{floor:.1f} KiB" if floor is not None else "–", worst <= 8))
    for k, limit in ((1, 0.25), (1000, 1.0)):
        g = gateways.get(k)
        if not g:
            continue
        by = {r["name"]: r for r in g["gateways"]}

        def added(r, what):
            return (r["path"][what]["p99"] - g["direct"][what]["p99"]) / 1e3

        s, relay = by["sluice"], by.get("relay")
        ttft, gap = added(s, "ttft"), added(s, "gap")
        floor = (f"nginx relay: TTFT {added(relay, 'ttft'):+.2f} ms, gap "
                 f"{added(relay, 'gap'):+.2f} ms" if relay else "–")
        rows.append((f"gateway added TTFT and gap p99 ≤ {limit} ms at {k:,} stream(s)",
                     f"TTFT {ttft:+.2f} ms, gap {gap:+.2f} ms", floor,
                     ttft <= limit and gap <= limit))
    for k, g in sorted(gateways.items()):
        by = {r["name"]: r for r in g["gateways"]}
        if "litellm" not in by:
            continue
        s = by["sluice"]["path"]["ttft"]["p99"] - g["direct"]["ttft"]["p99"]
        p = by["litellm"]["path"]["ttft"]["p99"] - g["direct"]["ttft"]["p99"]
        measured = (f"Sluice {s / 1e3:+.2f} ms, LiteLLM {p / 1e3:+,.0f} ms"
                    + (f": {p / s:,.0f}× below" if s > 0 else ": Sluice adds nothing measurable"))
        rows.append((f"gateway added TTFT p99 ≥ 50× below LiteLLM's at {k:,} stream(s)",
                     measured, "–", s <= 0 or p / s >= 50))
    if gateways:
        k = max(gateways)
        s = next(r for r in gateways[k]["gateways"] if r["name"] == "sluice")
        per = per_stream(s, k)
        relay = next((r for r in gateways[k]["gateways"] if r["name"] == "relay"), None)
        floor = f"nginx relay {per_stream(relay, k):.1f} KiB" if relay else "–"
        rows.append((f"gateway ≤ 16 KiB per open stream ({k:,} streams)", f"{per:.1f} KiB", floor,
                     per <= 16))
        errors = sum(r["path"]["errors"] for g in gateways.values() for r in g["gateways"]
                     if r["name"] == "sluice")
        rows.append(("gateway: no stream stalls or fails", f"{errors} failed", "–", errors == 0))
    if model:
        for threads, pair in model["threads"].items():
            s, l = pair["sluice"], pair["llama.cpp"]
            rows.append((f"local model decode tokens/s ≥ llama.cpp's ({threads} thread(s))",
                         ratio(s["decode_tokens_per_s"], l["decode_tokens_per_s"]), "–",
                         s["decode_tokens_per_s"] >= l["decode_tokens_per_s"]))
            rows.append((f"local model first token ≤ llama.cpp's ({threads} thread(s))",
                         ratio(s["ttft_ms"], l["ttft_ms"]), "–", s["ttft_ms"] <= l["ttft_ms"]))
    out = ["| target | Sluice | floor (floor hub, nginx relay) | met |",
           "| --- | --- | --- | :---: |"]
    out += [f"| {t} | {m} | {f} | {'yes' if ok else '**no**'} |" for t, m, f, ok in rows]
    return "\n".join(out)


def svg(fanout, idle, gateways, model, path):
    panels = []
    if fanout:
        for i, (title, key, log_y, label) in enumerate([
            ("Fan-out: p99 (10,000 subscribers)", "p99_ms", True, "ms"),
            ("Fan-out: deliveries/s", "deliveries_per_second", False, "deliveries/s"),
        ]):
            xs = [s["rate"] for run in fanout.values() for s in run["steps"]]
            ys = [max(s[key], 0.1) for run in fanout.values() for s in run["steps"]]
            p = Panel(PANEL_W * len(panels), title, "updates/s", label, [0] + xs, ys, log_y=log_y)
            p.frame()
            for h, colour in zip(("sluice", "nchan", "floor"), (BLUE, ORANGE, GREY)):
                steps = fanout.get(h, {}).get("steps") or []
                if steps:
                    p.line([s["rate"] for s in steps], [max(s[key], 0.1) for s in steps], colour,
                           LABELS[h], below=h == "nchan", dashed=h == "floor")
            if key == "p99_ms":
                p.hline(1000, RED, "1 s")
            panels.append(p)
    if idle:
        ns = sorted(idle)
        ys = [v for n in ns for v in idle[n].values()]
        p = Panel(PANEL_W * len(panels), "Idle memory per subscriber", "subscribers", "KiB",
                  [0] + ns, ys + [8])
        p.frame()
        for h, colour in zip(("sluice", "nchan", "floor"), (BLUE, ORANGE, GREY)):
            if all(h in idle[n] for n in ns):
                p.line(ns, [idle[n][h] for n in ns], colour, LABELS[h], below=h == "nchan",
                       dashed=h == "floor")
        p.hline(8, GREY, "target 8 KiB")
        panels.append(p)
    if gateways:
        ks = sorted(gateways)
        series = {}
        for k in ks:
            g = gateways[k]
            for r in g["gateways"]:
                added = (r["path"]["ttft"]["p99"] - g["direct"]["ttft"]["p99"]) / 1e3
                series.setdefault(r["name"], []).append(max(added, 0.01))
        xs = [math.log10(k) for k in ks]
        ys = [v for values in series.values() for v in values]
        p = Panel(PANEL_W * len(panels), "Gateway: added TTFT p99", "log10 concurrent streams",
                  "ms", [0] + xs, ys, log_y=True)
        p.frame()
        colours = {"sluice": BLUE, "litellm": ORANGE, "relay": GREY}
        for name, values in series.items():
            # Sluice's label at its first point: its later points sit on the axis.
            p.line(xs, values, colours.get(name, RED), LABELS.get(name, name),
                   below=name == "sluice", label_at=0 if name == "sluice" else -1,
                   dashed=name == "relay")
        panels.append(p)
    if model:
        threads = sorted(int(t) for t in model["threads"])
        pairs = [model["threads"][str(t)] for t in threads]
        ys = [pair[name]["decode_tokens_per_s"] for pair in pairs for name in pair]
        p = Panel(PANEL_W * len(panels), "Local model: decode speed", "threads", "tokens/s",
                  [0] + threads, ys)
        p.frame()
        for name, colour in (("sluice", BLUE), ("llama.cpp", ORANGE)):
            p.line(threads, [pair[name]["decode_tokens_per_s"] for pair in pairs], colour,
                   LABELS.get(name, name), below=name == "sluice")
        panels.append(p)
    if not panels:
        return
    write_svg(path, panels)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default="bench/results/peers")
    ap.add_argument("--svg", default="bench/peers.svg")
    args = ap.parse_args()
    d = args.dir

    fanout = {h: maybe(f"{d}/hub-fanout-{h}.json") for h in HUBS}
    fanout = fanout if all(fanout.values()) else None
    topics = {h: maybe(f"{d}/hub-topics-{h}.json") for h in HUBS}
    topics = topics if all(topics.values()) else None
    for runs, name in ((fanout, "fanout"), (topics, "topics")):
        floor = maybe(f"{d}/hub-{name}-floor.json")
        if runs and floor:
            runs["floor"] = floor
    idle = {}
    for path in glob.glob(f"{d}/hub-idle-*-*.json"):
        n, hub = re.search(r"hub-idle-(\d+)-(\w+)\.json$", path).groups()
        bytes_each = load(path)["idle"]["bytes_per_subscriber"]
        if bytes_each is not None:
            idle.setdefault(int(n), {})[hub] = bytes_each / 1024
    idle = {n: v for n, v in idle.items() if all(h in v for h in HUBS)}
    gateways = {}
    for path in glob.glob(f"{d}/gateway-*.json"):
        gateways[int(re.search(r"gateway-(\d+)\.json$", path).group(1))] = load(path)
    model = maybe(f"{d}/model.json")

    sections = []
    if fanout:
        sections += ["### Hub: 10,000 subscribers on one topic", fanout_tables(fanout)]
    if topics:
        sections += ["### Hub: 10,000 topics, one subscriber each", topics_table(topics)]
    if idle:
        sections += ["### Hub: memory per idle subscriber", idle_table(idle)]
    if gateways:
        sections += ["### Gateway: straight, through Sluice, through LiteLLM (upstream TTFT 0)",
                     gateway_table(gateways)]
    if model:
        sections += ["### Local model: Sluice and llama.cpp, same GGUF, greedy", model_table(model)]
    sections += ["### The targets", targets(fanout, idle, gateways, model)]
    print("\n\n".join(sections))
    svg(fanout, idle, gateways, model, args.svg)


if __name__ == "__main__":
    main()
