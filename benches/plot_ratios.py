#!/usr/bin/env python3
"""Draws benches/pool-ratios.png from interleaved runs of the pool bench.

    ASYNCIFY_BENCH_INTERLEAVED=20 cargo bench --bench pool > run1.txt   # as many runs as you like
    python3 benches/plot_ratios.py run1.txt run2.txt run3.txt

Each bar is the median over the runs of a contender's median per-round ratio to the floor
(the figure each run prints as `xR floor`); the whiskers span the runs' lowest and highest.
Capture bars are divided by the same run's "0 overrides" ratio instead, so they read as the
cost of capturing over capturing nothing. Needs matplotlib.
"""

import re
import statistics
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

LINE = re.compile(r"^\s+(\S+)\s+median\s+[\d.]+ \S+\s+\(p10.*x([\d.]+) floor$")


def parse(path):
    """{section: {entry: ratio to the floor}} for one run."""
    sections, section = {}, None
    for line in open(path):
        m = LINE.match(line.rstrip("\n"))
        if m:
            sections.setdefault(section, {})[m.group(1)] = float(m.group(2))
        elif line.strip() and not line.startswith(" "):
            section = line.strip() if line.startswith("capture") else line.split(" (")[0].strip()
    return sections


def main(paths):
    runs = [parse(p) for p in paths]
    peers = ["asyncify_pool", "rayon_oneshot", "tokio_spawn_blocking", "blocking_unblock"]
    shapes = [("round_trip", "round trip"), ("throughput", "throughput")]

    def spread(values):
        mid = statistics.median(values)
        return mid, mid - min(values), max(values) - mid

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    width = 0.8 / len(peers)
    for i, peer in enumerate(peers):
        stats = [spread([r[shape][peer] for r in runs]) for shape, _ in shapes]
        xs = [j + (i - (len(peers) - 1) / 2) * width for j in range(len(shapes))]
        left.bar(
            xs,
            [s[0] for s in stats],
            width,
            yerr=[[s[1] for s in stats], [s[2] for s in stats]],
            capsize=3,
            label=peer,
        )
    left.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
    left.text(len(shapes) - 0.5, 1.03, "floor", ha="right", fontsize=8)
    left.set_xticks(range(len(shapes)), [label for _, label in shapes])
    left.set_ylabel("time per call ÷ floor (lower is better)")
    left.set_title("this pool and its peers, ratio to the floor")
    top = max(max(r[shape][peer] for r in runs) for shape, _ in shapes for peer in peers)
    left.set_ylim(0, top * 1.35)  # room for the legend above the bars
    left.legend(fontsize=8, loc="upper center", ncol=2)

    captures = []
    for run in runs:
        none = next(v for k, v in run.items() if k.startswith("capture") and "no tracing" in k)
        scoped = next(v for k, v in run.items() if "scoped" in k)
        global_ = next(v for k, v in run.items() if "global" in k)
        base = none["asyncify_pool/0_overrides"]
        captures.append(
            [
                none["asyncify_pool/16_overrides"] / base,
                global_["asyncify_pool/span_under_subscriber"] / base,
                scoped["asyncify_pool/span_under_subscriber"] / base,
            ]
        )
    labels = ["16 overrides", "span, global\nsubscriber", "span, scoped\nsubscriber"]
    stats = [spread([c[i] for c in captures]) for i in range(len(labels))]
    right.bar(
        range(len(labels)),
        [s[0] for s in stats],
        0.6,
        yerr=[[s[1] for s in stats], [s[2] for s in stats]],
        capsize=3,
        color=["tab:blue", "tab:blue", "tab:gray"],
    )
    for limit, x, text in [(1.05, 0, "target +5%"), (1.15, 1.5, "target +15%")]:
        right.axhline(limit, color="tab:red", linewidth=0.8, linestyle=":")
        right.text(x, limit + 0.02, text, fontsize=8, color="tab:red", ha="center")
    right.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
    right.set_xticks(range(len(labels)), labels)
    right.set_ylabel("throughput time ÷ nothing captured")
    right.set_title("capture cost (this pool)")

    fig.suptitle(f"interleaved runs: median of {len(runs)}, whiskers min–max", fontsize=9)
    fig.tight_layout()
    fig.savefig("benches/pool-ratios.png", dpi=110)


if __name__ == "__main__":
    main(sys.argv[1:])
