#!/usr/bin/env python3
"""The table `scripts/bench-cluster.sh` ends with: the raw replication figures, then every
replication and scale target of docs/PERFORMANCE.md with its figure, fraction and met /
MISSED. Missing runs print "-" (the script reports; it never fails).

    python3 scripts/bench_cluster_summary.py target/bench/cluster.json FSYNC RATE
"""

from __future__ import annotations

import sys
from typing import Any

from bench_results import getter, load


def cpu_table(get: Any) -> None:
    """The SDK runs' CPU per MB produced next to what their page-cache copies alone cost on
    this machine: the single node writes each byte once, the RF=3 cluster three times on the
    same cores."""
    fill = get("page_fill") or {}
    fresh, reused = fill.get("fresh_ms_per_mb"), fill.get("reused_ms_per_mb")
    if fresh is None or reused is None:
        return
    print(
        f"\npage-cache fill on this machine: {fresh:.2f} ms of CPU per MB into fresh pages, "
        f"{reused:.2f} ms into pages freed just before (scripts/page_fill.py)"
    )
    head = f"{'SDK run':<24} {'MB/s':>7} {'brokers, ms CPU per MB':>23}"
    print(f"{head} {'page fills alone (fresh / reused)':>35}")
    for name, copies in [
        ("single node sdk 1p", 1),
        ("single node sdk 8p", 1),
        ("cluster sdk 1p", 3),
        ("cluster sdk 8p", 3),
        ("cluster sdk 1p paced", 3),
    ]:
        run = get(name)
        if not run or "brokers_cpu_s" not in run or not run.get("bytes"):
            continue
        per_mb = run["brokers_cpu_s"] * 1000 / (run["bytes"] / 1e6)
        print(
            f"{name:<24} {run['mb_per_s']:>7.1f} {per_mb:>23.2f} "
            f"{copies * fresh:>26.2f} / {copies * reused:.2f}"
        )


def main() -> None:
    data: dict[str, Any] = load(sys.argv[1])
    fsync, rate = sys.argv[2], sys.argv[3]
    get = getter(data)

    base = get("single node, acks=leader max", "mb_per_s")
    print(
        f"\n1 KiB records, fsync={fsync}; raw pre-encoded batches to one partition's leader, "
        f"paced at {rate} records/s"
    )
    print(
        f"{'setup':<32} {'MB/s':>8} {'vs single':>9} {'records/s':>10} {'paced p50 ms':>12} "
        f"{'p99 ms':>8} {'p99.9 ms':>8}"
    )
    for setup in ["single node, acks=leader", "3 brokers RF=3, acks=leader", "3 brokers RF=3, acks=all"]:
        m, p = get(f"{setup} max"), get(f"{setup} paced")
        if not m or not p or not base:
            continue
        lat = p["latency"]
        print(
            f"{setup:<32} {m['mb_per_s']:>8.1f} {m['mb_per_s'] / base:>8.0%} {m['records_per_s']:>10.0f} "
            f"{lat['p50_us'] / 1000:>12.2f} {lat['p99_us'] / 1000:>8.2f} {lat['p999_us'] / 1000:>8.2f}"
        )

    cpu_table(get)

    rows: list[tuple[str, str, str, str]] = []

    def ratio(name: str, figure: float | None, limit: float | None, target: float) -> None:
        r = None if figure is None or not limit else figure / limit
        fig = "-" if figure is None else f"{figure:,.1f} MB/s"
        rows.append(
            (
                name,
                fig + ("" if r is None else f" ({r:.0%})"),
                f">= {target:.0%}",
                "-" if r is None else ("met" if r >= target else "MISSED"),
            )
        )

    def bound(name: str, figure: float | None, unit: str, target: float) -> None:
        fig = "-" if figure is None else f"{figure:,.2f} {unit}"
        rows.append(
            (
                name,
                fig,
                f"<= {target:g} {unit}",
                "-" if figure is None else ("met" if figure <= target else "MISSED"),
            )
        )

    for p in ("1p", "8p"):
        target = 0.6 if p == "1p" else 0.7
        ratio(
            f"SDK acks=all RF=3, {p[:-1]} partition(s), vs single",
            get(f"cluster sdk {p}", "mb_per_s"),
            get(f"single node sdk {p}", "mb_per_s"),
            target,
        )
    paced = get("cluster sdk 1p paced")
    if paced:
        bound(
            f"SDK acks=all RF=3 paced at {paced['rate']:,} rec/s, p99",
            paced["latency"]["p99_us"] / 1000,
            "ms",
            5,
        )
    else:
        bound("SDK acks=all RF=3 paced at half, p99", None, "ms", 5)
    s = get("scale") or {}
    n = s.get("partitions", "?")
    bound(f"scale: {n} partitions created and led", s.get("create_s"), "s", 60)
    cpu = s.get("idle_cpu_pct") or []
    bound("scale: idle CPU, worst broker", max(cpu) if cpu else None, "% core", 5)
    listen, produce = s.get("restart_listen_s"), s.get("restart_produce_s")
    bound("scale: SIGKILLed broker back (produces answered)", produce, "s", 10)
    bound(
        "scale: produce answered after it listens",
        None if produce is None or listen is None else produce - listen,
        "s",
        2,
    )

    print(f"\n{'target':<52} {'figure':>24} {'target':>12} {'':>6}")
    for name, fig, goal, verdict in rows:
        print(f"{name:<52} {fig:>24} {goal:>12} {verdict:>6}")
    if s:
        rss = s.get("rss_mb") or []
        print(
            f"\nscale: create answered ok={s.get('create_ok')} after {s.get('create_answered_s')} s; "
            f"RSS MB per broker {rss}; {s.get('warn_lines')} WARN lines, "
            f"groups awake at idle per broker {s.get('awake_groups')}; "
            f"the restarted broker reopened all its replicas after {s.get('restart_reopened_s')} s"
        )
    m = get("memory")
    if m:
        print(
            f"\nmemory per partition replica, KB per broker ({m['partitions']} partitions, RF=3): "
            f"idle {m['idle_kb_per_replica']}; after {m['writes_per_partition']:,} writes each "
            f"{m['written_kb_per_replica']}, asleep again {m['written_asleep_kb_per_replica']} "
            "(docs/PERFORMANCE.md, \"Memory per partition\")"
        )
    print(f"\nall results: {sys.argv[1]}")


if __name__ == "__main__":
    main()
