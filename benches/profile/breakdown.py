"""Sort `perf script -F ip,sym,dso` samples of the server (call chains, leaf first) into where
the CPU goes, and scale the shares by the run's CPU µs per forwarded packet.

Usage: perf script … | breakdown.py <scenario> <loadtest.json> <out.json> <out.md>
"""
import collections
import json
import sys

# Checked in this order; a sample goes to the first that matches its chain.
CATEGORIES = [
    ("delivery", "send: the loopback delivery into the receivers' sockets (their receive path, "
     "waking them), run in the sender's system call",
     lambda chain: is_send(chain) and ("net_rx_action" in chain or "process_backlog" in chain)),
    ("send", "send: the UDP/IP send path (sendmmsg)", lambda chain: is_send(chain)),
    ("wait", "waiting: epoll_wait and the context switches in it",
     lambda chain: "do_epoll_wait" in chain),
    ("recv", "receiving: recvfrom", lambda chain: "__sys_recvfrom" in chain or "udp_recvmsg" in chain),
    ("wake", "waking the other shard (eventfd) and threads (futex)",
     lambda chain: "eventfd_write" in chain or "futex" in chain),
]


def is_send(chain):
    return "__sys_sendmmsg" in chain or "__sys_sendto" in chain or "udp_sendmsg" in chain


def classify(frames):
    chain = " ".join(sym for sym, _ in frames)
    for key, _, test in CATEGORIES:
        if test(chain):
            return key
    leaf_dso = frames[0][1]
    return "kernel" if "kernel" in leaf_dso else "user"


LABELS = dict((k, label) for k, label, _ in CATEGORIES)
LABELS["kernel"] = "kernel, other (interrupts, timers, page faults)"
LABELS["user"] = "user space: str0m (SRTP, RTCP, pacer, timers), the engine, tokio, libc"


def samples(lines):
    frames = []
    for line in lines:
        line = line.rstrip("\n")
        if not line.strip():
            if frames:
                yield frames
            frames = []
            continue
        parts = line.strip().split(None, 1)
        if len(parts) < 2:
            continue
        rest = parts[1]
        cut = rest.rfind(" (")
        sym, dso = (rest[:cut], rest[cut + 2:-1]) if cut >= 0 else (rest, "")
        frames.append((sym, dso))
    if frames:
        yield frames


def main():
    scenario, loadtest_json, out_json, out_md = sys.argv[1:5]
    counts = collections.Counter(classify(f) for f in samples(sys.stdin))
    total = sum(counts.values())
    if total == 0:
        sys.exit("no samples: is perf allowed here?")
    server = json.load(open(loadtest_json))["server"]
    us = server.get("cpu_us_per_forwarded_packet") or 0.0
    rows = [
        {"where": k, "label": LABELS[k], "share": n / total, "us_per_forwarded_packet": us * n / total}
        for k, n in counts.most_common()
    ]
    json.dump({
        "scenario": scenario, "samples": total, "cpu_us_per_forwarded_packet": us,
        "forwarded_pps": server.get("forwarded_pps"), "cpu_pct": server.get("cpu_pct"),
        "rows": rows,
    }, open(out_json, "w"), indent=1)
    with open(out_md, "w") as f:
        f.write(f"{scenario}: {us:.1f} µs of server CPU per forwarded packet at "
                f"{server.get('forwarded_pps') or 0:.0f} packets/s ({total} samples)\n\n")
        f.write("| where | share | µs per forwarded packet |\n|---|---|---|\n")
        for r in rows:
            f.write(f"| {r['label']} | {r['share'] * 100:.1f} % | {r['us_per_forwarded_packet']:.1f} |\n")


if __name__ == "__main__":
    main()
