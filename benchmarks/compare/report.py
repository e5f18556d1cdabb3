"""Tables (text and markdown) and the plot of a comparison run."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from _common import table

MEASURES = {"read": "context read", "add": "add (1 msg)", "turn": "chat turn", "cold": "cold read"}


def fms(seconds: float | None) -> str:
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return "-"
    v = seconds * 1e3
    return f"{v:.3f}" if v < 10 else f"{v:.1f}" if v < 1000 else f"{v:,.0f}"


def fx(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.2f}x" if x < 100 else f"{x:,.0f}x"


def shape_label(n: int) -> str:
    return f"{n:,}"


def latency_table(rows: Sequence[dict[str, Any]]) -> str:
    headers = ["measure", "msgs", "subject", "n", "got", "p50 ms", "p99 ms", "x floor p50", "x floor p99",
               "x best p50", "x best p99"]
    lines = []
    for r in rows:
        lines.append([MEASURES[r["measure"]], shape_label(r["shape"]), r["label"], str(r["n"]),
                      str(r["returned"]) if r["returned"] is not None else "-", fms(r["p50"]), fms(r["p99"]),
                      fx(r["x_floor_p50"]), fx(r["x_floor_p99"]), fx(r["x_best_p50"]), fx(r["x_best_p99"])])
    return table(headers, lines)


def redis_table(usage: Sequence[dict[str, Any]]) -> str:
    headers = ["msgs", "subject", "sessions", "cached msgs", "bytes", "bytes/cached msg", "bytes/session",
               "x floor", "x best"]
    lines = []
    for u in usage:
        lines.append([shape_label(u["shape"]), u["label"], str(u["sessions"]), f"{u['messages']:,}",
                      f"{u['bytes']:,}", f"{u['per_message']:,.0f}", f"{u['per_session']:,.0f}",
                      fx(u.get("x_floor")), fx(u.get("x_best"))])
    return table(headers, lines)


def mixed_table(points: Sequence[dict[str, Any]]) -> str:
    headers = ["clients", "subject", "turns", "turns/s", "p50 ms", "p99 ms", "x floor tput", "x floor p99",
               "x best tput", "x best p99"]
    lines = []
    for p in points:
        lines.append([str(p["clients"]), p["label"], f"{p['turns']:,}", f"{p['throughput']:,.0f}", fms(p["p50"]),
                      fms(p["p99"]), fx(p["x_floor_tput"]), fx(p["x_floor_p99"]), fx(p.get("x_best_tput")),
                      fx(p.get("x_best_p99"))])
    return table(headers, lines)


def markdown(data: dict[str, Any], command: str) -> str:
    """The README table: latency at 1,000 messages, context read by session length, mixed load, persistence."""
    rows = data["rows"]
    labels = data["subjects"]
    shapes = data["shapes"]
    ref = 1000 if 1000 in shapes else max(shapes)
    by = {(r["measure"], r["shape"], r["key"]): r for r in rows}
    env = data["env"]
    cpu = f" ({env['cpu']})" if env.get("cpu") else ""
    out = [f"Measured with `{command}` ({env['date']}, {env['cpus']} cores{cpu}, Python {env['python']}, "
           f"Redis {env['redis']}, PostgreSQL {env['postgres']}; one run, every subject interleaved with the "
           "others and with the raw floors, so ratios hold on a noisy machine). Latencies in ms, p50 / p99. "
           "\"x floor\": p50 ratio (median of per-round ratios) to a raw redis-py / redis.asyncio call doing the "
           "same Redis work; \"x best\": to the fastest competitor measured in the same run.", ""]
    out += [f"Sessions of {ref:,} messages:", "",
            "| subject | model gets | context read | x floor | x best | add 1 msg | chat turn | cold read |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]

    def cell(measure: str, key: str, shape: int = ref) -> str:
        r = by.get((measure, shape, key))
        return f"{fms(r['p50'])} / {fms(r['p99'])}" if r else "-"

    order = data["order"]
    for key in order:
        if key in ("floor-pg", "floor-miss-pg"):
            continue
        r = by.get(("read", ref, key))
        name = f"**{labels[key]['label']}**" if labels[key]["kind"] == "ours" else labels[key]["label"]
        cold = cell("cold", key) if ("cold", ref, key) in by else labels[key]["cold_short"]
        out.append(f"| {name} | {labels[key]['view']} | {cell('read', key)} | "
                   f"{fx(r['x_floor_p50']) if r else '-'} | {fx(r['x_best_p50']) if r else '-'} | "
                   f"{cell('add', key)} | {cell('turn', key)} | {cold} |")
    if ("cold", ref, "floor-pg") in by:
        out.append(f"| raw asyncpg (cold floor) | window of {data['window']} | | | | | | {cell('cold', 'floor-pg')} |")
    if ("cold", ref, "floor-miss-pg") in by:
        out.append(f"| raw Redis miss + asyncpg (cache-first cold floor) | window of {data['window']} | | | | | | "
                   f"{cell('cold', 'floor-miss-pg')} |")
    out += ["", "Context read p50 (ms) by session length (what the model is handed each turn):", "",
            "| subject | " + " | ".join(f"{s:,} msgs" for s in shapes) + " |",
            "| --- | " + " | ".join("---:" for _ in shapes) + " |"]
    for key in order:
        if ("read", shapes[0], key) not in by:
            continue
        cells = []
        for s in shapes:
            r = by.get(("read", s, key))
            cells.append(f"{fms(r['p50'])} ({r['returned']})" if r and r["returned"] is not None else "-")
        out.append(f"| {labels[key]['label']} | " + " | ".join(cells) + " |")
    out.append("")
    out.append("(in parentheses: messages returned)")
    for name, intro in (
            ("mixed", "Saturation: N clients doing chat turns (read context + add 2 messages) back to back on random "
                      "sessions out of {sessions:,}, so turns queue in one Python process; turns/s and p99 ms "
                      "(asyncio tasks for async APIs, threads for sync ones):"),
            ("paced", "Conversations: N clients doing the same turns, each waiting {think} s for the model between "
                      "two turns (what a chat app does); turns/s and p99 ms of a turn:")):
        load = data.get(name) or {}
        if not load.get("points"):
            continue
        subj = load["subjects"]
        think = "-".join(str(t) for t in load.get("think_s", []))
        out += ["", intro.format(sessions=load["sessions"], think=think), "",
                "| clients | " + " | ".join(labels[k]["label"] for k in subj) + " |",
                "| ---: | " + " | ".join("---:" for _ in subj) + " |"]
        pts = {(p["clients"], p["key"]): p for p in load["points"]}
        for n in load["clients"]:
            cells = []
            for k in subj:
                p = pts.get((n, k))
                cells.append(f"{p['throughput']:,.0f}/s, {fms(p['p99'])}" if p else "-")
            out.append(f"| {n} | " + " | ".join(cells) + " |")
    ps = data.get("persistence")
    if ps:
        o, k = ps["ours"], ps["ours_parked"]
        comp = ", ".join(f"{labels[c]['label']} {v['rate']:,.0f}/s" for c, v in ps["competitors"].items())
        out += ["", f"Persistence into PostgreSQL ({ps['concurrency']} tasks, {ps['per_call']} messages per call, "
                    f"{ps['sessions']:,} sessions, counted in PostgreSQL after flush): ours sustained (writers and "
                    f"flusher together) {o['rate']:,.0f} messages/s; flusher alone (draining a parked backlog) "
                    f"{k['drain_rate']:,.0f} messages/s = {fx(ps['x_floor_drain'])} a raw asyncpg COPY "
                    f"({ps['copy']['rate']:,.0f} rows/s){'; ' + comp if comp else ''}."]
    ru = [u for u in data.get("redis_usage", []) if u["shape"] == ref]
    if ru:
        out += ["", f"Redis memory per session of {ref:,} messages (`MEMORY USAGE`): "
                + "; ".join(f"{u['label']} {u['per_session']:,.0f} B ({u['messages'] // max(u['sessions'], 1):,} "
                            f"messages cached, {u['per_message']:,.0f} B each{_parts(u)})" for u in ru) + "."]
    return "\n".join(out) + "\n"


def _parts(u: dict[str, Any]) -> str:
    if "window_bytes" not in u:
        return ""
    n = max(u["sessions"], 1)
    return (f"; per session: window {u['window_bytes'] // n:,} B, meta {u['meta_bytes'] // n:,} B, "
            f"idempotency ids {u['ids_bytes'] // n:,} B")


def plot(data: dict[str, Any], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = data["rows"]
    labels = data["subjects"]
    fig, axes = plt.subplots(2, 3, figsize=(18, 10))
    styles = {"ours": dict(linewidth=2.5, marker="o"), "adapter": dict(linewidth=1.5, marker="o", linestyle="-."),
              "competitor": dict(linewidth=1.2, marker="s"), "floor": dict(linewidth=1.2, marker="x", linestyle=":")}
    palette = plt.get_cmap("tab10").colors
    colors = {k: palette[i % len(palette)] for i, k in enumerate(k for k in data["order"]
                                                                   if labels[k]["kind"] != "floor")}
    colors.update({"floor-async": "grey", "floor-sync": "black", "floor-pg": "grey", "floor-miss-pg": "darkgrey"})
    for ax, measure in zip([*axes[0].tolist(), axes[1][0]], ("read", "add", "turn", "cold"), strict=True):
        for key in data["order"]:
            pts = sorted((r["shape"], r["p50"] * 1e3) for r in rows if r["measure"] == measure and r["key"] == key)
            if not pts:
                continue
            st = {**styles[labels[key]["kind"]], "color": colors[key]}
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=labels[key]["label"], **st)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("messages in the session")
        ax.set_ylabel("p50 latency (ms)")
        ax.set_title(f"{MEASURES[measure]} p50")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    mixed = data.get("mixed") or {}
    for ax, field, title in ((axes[1][1], "throughput", "mixed load: chat turns/s"),
                             (axes[1][2], "p99", "mixed load: chat turn p99 (ms)")):
        for key in mixed.get("subjects", []):
            pts = sorted((p["clients"], p[field] * (1e3 if field == "p99" else 1))
                         for p in mixed["points"] if p["key"] == key)
            st = {**styles[labels[key]["kind"]], "color": colors[key]}
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=labels[key]["label"], **st)
        ax.set_xscale("log", base=2)
        if field == "p99":
            ax.set_yscale("log")
            ax.axhline(2.0, color="red", linewidth=0.8, linestyle="--", label="target 2 ms")
        ax.set_xlabel("concurrent clients")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"langchain-hybrid-memory vs competitors ({data['mode']} run, {data['env']['date']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
