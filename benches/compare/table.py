"""The comparison table (benches/results/compare-<server>-<scenario>.json → markdown).

Usage: table.py RESULTS_DIR OUT.md
"""
import glob
import json
import os
import sys


def fmt(x, digits=1):
    return "–" if x is None else f"{x:.{digits}f}"


def main(results, out):
    rows = []
    for path in glob.glob(os.path.join(results, "compare-*-*.json")):
        r = json.load(open(path))
        server, _, scenario = r["label"].partition(" ")
        rows.append((scenario, server, r))

    def order(row):
        kind, _, n = row[0].rpartition("-")
        return (kind, int(n) if n.isdigit() else 0, row[1] != "ours")

    lines = [
        "| scenario | server | participants ok | streams received | connect → first media p50 / p95 ms "
        "| one-way latency p50 / p99 ms | loss % | server CPU % of a core "
        "| CPU µs per packet received | packets/s received | RSS KiB per stream | load tester CPU % |",
        "|" + "---|" * 12,
    ]
    for scenario, server, r in sorted(rows, key=order):
        p, m, s, c = r["participants"], r["media"], r["server"], r["connect_to_media_ms"]
        window = s.get("window_s") or 1
        lines.append(
            f"| {scenario} | {server} | {p['joined'] - p['failed']}/{p['planned']} "
            f"| {m['streams_received']}/{m['streams_expected']} "
            f"| {fmt(c['p50'], 0) if c['n'] else '–'} / {fmt(c['p95'], 0) if c['n'] else '–'} "
            f"| {fmt(m['latency_ms']['p50'], 2)} / {fmt(m['latency_ms']['p99'], 2)} "
            f"| {fmt(m['loss_pct'], 2)} | {fmt(s['cpu_pct'])} "
            f"| {fmt(s.get('cpu_us_per_received_packet'))} | {fmt(m['window_received'] / window, 0)} "
            f"| {fmt(s['rss_kib_per_forwarded_stream'], 0)} | {fmt(r['loadtest_cpu_pct'])} |"
        )
    open(out, "w").write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
