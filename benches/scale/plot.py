"""Plot the load-tester benches (benches/results/scale-*.json) and write their summary table.

Usage: plot.py RESULTS_DIR OUT.svg OUT.md
"""
import glob
import json
import os
import sys

import matplotlib

matplotlib.use("svg")
import matplotlib.pyplot as plt  # noqa: E402


def load(results):
    runs = {}
    for path in glob.glob(os.path.join(results, "scale-*.json")):
        r = json.load(open(path))
        runs[r["label"] or os.path.basename(path)] = r

    def order(name):
        kind, _, n = name.rpartition("-")
        return (kind, int(n)) if n.isdigit() else (name, 0)

    return dict(sorted(runs.items(), key=lambda kv: order(kv[0])))


def series(runs, prefix):
    pts = []
    for name, r in runs.items():
        if name.startswith(prefix):
            pts.append((int(name[len(prefix):]), r))
    return sorted(pts, key=lambda p: p[0])


def fmt(v, digits=1):
    return "–" if v is None else f"{v:.{digits}f}"


def table(runs):
    rows = [
        "| scenario | forwarded streams | participants ok | connect → first media p50 / p95 ms "
        "| one-way latency p50 / p99 ms | loss % | server CPU % of a core | CPU µs per forwarded packet "
        "| in-SFU delay p50 / p99 µs | forwarded packets/s | RSS KiB per stream | load tester CPU % "
        "| kernel UDP drops |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in runs.items():
        s, m, p = r["server"], r["media"], r["participants"]
        drops = s.get("udp_receive_buffer_drops")
        media_ms = r["connect_to_media_ms"]
        first = "–" if media_ms["n"] == 0 else f"{fmt(media_ms['p50'], 0)} / {fmt(media_ms['p95'], 0)}"
        rows.append(
            f"| {name} | {r['plan']['forwarded_streams']} | {p['admitted'] - p['failed']}/{p['planned']} "
            f"| {first} "
            f"| {fmt(m['latency_ms']['p50'], 2)} / {fmt(m['latency_ms']['p99'], 2)} "
            f"| {fmt(m['loss_pct'], 2)} | {fmt(s.get('cpu_pct'))} | {fmt(s.get('cpu_us_per_forwarded_packet'))} "
            f"| ≤ {fmt(s.get('forward_delay_us_p50'), 0)} / ≤ {fmt(s.get('forward_delay_us_p99'), 0)} "
            f"| {fmt(s.get('forwarded_pps'), 0)} | {fmt(s.get('rss_kib_per_forwarded_stream'), 0)} "
            f"| {fmt(r.get('loadtest_cpu_pct'))} | {'–' if drops is None else drops} |"
        )
    low = runs.get("link-100k")
    if low:
        rows += [
            "",
            "link-100k, what the physician (behind 100 kbit/s, 100 ms, 2 % loss) received:",
            "",
            "| track | streams | loss % | latency p50 / p95 / p99 ms |",
            "|---|---|---|---|",
        ]
        for key, l in low["media"]["by_receiver_label"].items():
            if key.startswith("physician<-"):
                lat = l["latency_ms"]
                rows.append(
                    f"| {key.split('<-')[1]} | {l['streams']} | {fmt(l['loss_pct'], 2)} "
                    f"| {fmt(lat['p50'])} / {fmt(lat['p95'])} / {fmt(lat['p99'])} |"
                )
    return "\n".join(rows) + "\n"


def panel(ax, pts, xlabel):
    if not pts:
        ax.set_visible(False)
        return
    x = [p[0] for p in pts]
    ax.plot(x, [p[1]["media"]["latency_ms"]["p50"] for p in pts], "o-", label="latency p50 ms")
    ax.plot(x, [p[1]["media"]["latency_ms"]["p99"] for p in pts], "o-", label="latency p99 ms")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("one-way latency, ms")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    cpu = ax.twinx()
    cpu.plot(x, [p[1]["server"].get("cpu_pct") or 0 for p in pts], "s--", color="tab:red",
             label="server CPU %")
    cpu.plot(x, [p[1].get("loadtest_cpu_pct") or 0 for p in pts], "^:", color="tab:gray",
             label="load tester CPU %")
    cpu.set_ylabel("CPU, % of one core")
    lines = ax.get_legend_handles_labels()
    more = cpu.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], loc="upper left", fontsize=8)


def main(results, svg, md):
    runs = load(results)
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    panel(a, series(runs, "fanout-"), "subscribers of one cart (stethoscope + camera)")
    a.set_title("fan-out", fontsize=10)
    panel(b, series(runs, "rooms-"), "consultations of 3 (16 streams each)")
    b.set_title("many small rooms", fontsize=10)
    fig.tight_layout()
    fig.savefig(svg)
    open(md, "w").write(table(runs))


if __name__ == "__main__":
    main(*sys.argv[1:4])
