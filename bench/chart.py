"""The PNG of a run: committed records/s and submit->receipt latency, second by second.

matplotlib is an optional dependency (`pip install 'consortium[bench]'`): without it the chart
is skipped with a message and everything else is still written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def write(path: Path, run: dict[str, Any]) -> bool:
    """Draw `run["timeline"]`; False (nothing written) when matplotlib is missing."""
    if not available():
        return False
    import matplotlib

    matplotlib.use("Agg")  # no display: write files only
    import matplotlib.pyplot as plt

    timeline = run["timeline"]
    t = [row["t_s"] for row in timeline]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    mode = f"open loop {run['rate']:g}/s" if run.get("rate") else f"{run['clients']} clients"
    fig.suptitle(f"consortium bench: n = {run['validators']}, {mode}, "
                 f"{run['payload_bytes']} B payloads — {run['throughput_rps']:.0f} records/s "
                 f"steady state")
    top.plot(t, [row["committed"] for row in timeline], color="tab:blue", drawstyle="steps-post")
    top.set_ylabel("committed records/s")
    top.set_ylim(bottom=0)
    top.grid(alpha=0.3)
    bottom.plot(t, [row["p50_ms"] for row in timeline], label="p50", color="tab:green")
    bottom.plot(t, [row["p99_ms"] for row in timeline], label="p99", color="tab:red")
    bottom.set_ylabel("submit→receipt latency (ms)")
    bottom.set_ylim(bottom=0)
    bottom.set_xlabel("seconds since the first submission")
    bottom.grid(alpha=0.3)
    bottom.legend(loc="upper left")
    window = run.get("window", {})
    for ax in (top, bottom):
        if window.get("start_s"):
            ax.axvspan(0, window["start_s"], color="grey", alpha=0.15, label="warm-up")
        if window.get("end_s"):
            ax.axvline(window["end_s"], color="grey", linestyle="--", linewidth=1)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
