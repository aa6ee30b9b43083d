#!/usr/bin/env python3
"""Draws docs/img/*.png from the district benchmark's output (target/bench-fleet.json by
default): memory against connections for the gateway, the floor program and nats-server;
the alarm acknowledgement latency quantiles; the reconnect storm. Needs matplotlib
(`pip install matplotlib`)."""
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

source = Path(sys.argv[1] if len(sys.argv) > 1 else "target/bench-fleet.json")
out = Path(sys.argv[2] if len(sys.argv) > 2 else "docs/img")
out.mkdir(parents=True, exist_ok=True)
data = json.loads(source.read_text())
details = data["details"]

fig, ax = plt.subplots(figsize=(7, 4.5))
for key, label in [
    ("gateway_samples", "Carebell gateway (all processes)"),
    ("floor_samples", "floor: tokio-tungstenite + rustls"),
    ("nats_samples", "nats-server WebSocket"),
]:
    samples = details.get(key) or []
    if samples:
        base = samples[0][1]
        xs = [c for c, _ in samples]
        ys = [(rss - base) / 2**20 for _, rss in samples]
        ax.plot(xs, ys, marker="o", markersize=3, label=label)
ax.set_xlabel("idle TLS WebSocket connections held")
ax.set_ylabel("resident memory above start (MiB)")
ax.set_title("Memory against connections")
ax.grid(True, alpha=0.3)
ax.legend()
fig.tight_layout()
fig.savefig(out / "memory-vs-connections.png", dpi=120)

fig, ax = plt.subplots(figsize=(7, 4.5))
labels = ["p50", "p99", "p99.9", "max"]
asked = data.get("figures", {}).get("alarm rate asked", {}).get("value")
reports = [
    (entry.get("report"), f"{entry.get('rate'):.0f}/s, fleet connected")
    for entry in details.get("rate_sweep") or []
]
reports += [
    (details.get("alarms"), f"{asked:.0f}/s, fleet connected" if asked else "fleet connected"),
    (details.get("storm_alarms"), "during the reconnect storm"),
]
for report, label in reports:
    if report:
        values = [report.get(f"alarm_ack_ms_{q}") or 0 for q in ["p50", "p99", "p999", "max"]]
        ax.plot(labels, values, marker="o", label=label)
ax.set_yscale("log")
ax.set_ylabel("alarm durable acknowledgement (ms, log scale)")
ax.set_title("Alarm acknowledgement latency distribution")
ax.grid(True, which="both", alpha=0.3)
ax.legend()
fig.tight_layout()
fig.savefig(out / "alarm-latency.png", dpi=120)

samples = details.get("storm_samples") or []
if samples:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(range(len(samples)), [c for c, _ in samples], marker="o", markersize=3)
    ax.set_xlabel("seconds after the gateways were killed and restarted")
    ax.set_ylabel("tablets connected")
    ax.set_title("Reconnect storm")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "reconnect-storm.png", dpi=120)
print(f"plots written to {out}")
