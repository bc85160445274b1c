"""Plot the 100 kbps scenario's time series (JSON from signaling/tests/bandwidth.rs) as SVG."""
import json
import sys

import matplotlib

matplotlib.use("svg")
import matplotlib.pyplot as plt  # noqa: E402


def main(src, dst):
    r = json.load(open(src))
    phases = r["phases_s"]
    series = r["series"]
    t = [s["t_ms"] / 1000 for s in series]
    kbps = lambda v: [x / 1000 if x is not None else None for x in v]  # noqa: E731
    fig, (top, mid, layer, bottom) = plt.subplots(
        4, 1, figsize=(10, 11), sharex=True, gridspec_kw={"height_ratios": [3, 3, 1, 2]}
    )
    for ax in (top, mid, layer, bottom):
        ax.axvspan(phases["degraded"], phases["recovered"], color="#fde8e8", zorder=0)
        ax.grid(alpha=0.3)
    top.plot(t, kbps([s["estimate_bps"] for s in series]), label="str0m estimate")
    top.plot(
        t,
        kbps([s.get("allocation_estimate_bps") for s in series]),
        label="estimate allocated on (gated)",
    )
    top.plot(t, kbps([s["allocated_bps"] for s in series]), label="allocated")
    top.set_ylabel("kbit/s (physician's downlink)")
    top.set_yscale("log")
    top.set_ylim(bottom=10)
    top.legend(loc="upper right")
    top.set_title(r["scenario"], fontsize=10)
    rx = r["received_kbps_per_s"]
    secs = list(range(len(rx["stethoscope"])))
    for name in ("stethoscope", "speech", "otoscope", "camera"):
        mid.step(secs, rx[name], where="post", label=name)
    mid.set_ylabel("received kbit/s (payload)")
    mid.legend(loc="upper right")
    # The camera's simulcast layer the physician received each second (none: paused).
    cam_layer = r.get("camera_layer_per_s", [])
    layer.step(
        list(range(len(cam_layer))),
        [x if x is not None else -1 for x in cam_layer],
        where="post",
        label="camera layer",
    )
    layer.set_yticks([-1, 0, 1, 2])
    layer.set_yticklabels(["paused", "q", "h", "f"])
    layer.set_ylabel("camera layer")
    bottom.plot(t, [s["rtt_ms"] for s in series], label="RTT ms")
    loss = [100 * s["loss"] if s["loss"] is not None else None for s in series]
    bottom.plot(t, loss, label="TWCC loss %")
    bottom.plot(t, [100 if s["audio_only"] else 0 for s in series], label="audio-only (100)", ls=":")
    bottom.set_xlabel("s")
    bottom.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(dst)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
