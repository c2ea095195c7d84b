#!/usr/bin/env python3
"""The table `scripts/bench.sh` ends with: every single-node target of docs/PERFORMANCE.md,
each figure as a fraction of the machine limit it is measured against (from the same run),
and met / MISSED. Missing runs or limits print "-" (the script reports; it never fails).

    python3 scripts/bench_summary.py target/bench/results.json
"""

from __future__ import annotations

import sys
from typing import Any

from bench_results import getter, load


def main() -> None:
    r: dict[str, Any] = load(sys.argv[1])
    get = getter(r)

    loop = get("loopback", "mb_per_s")
    disk = get("disk_write", "mb_per_s")
    dsync = get("disk_write_fsync", "mb_per_s")
    fsyncs = get("fsync_rate", "iops")
    m = r["machine"]
    print(
        f"\nmachine: {m['cpus']} CPUs, {m['mem_gib']} GiB, "
        f"load average at start {m['loadavg_at_start'][0]:.2f}"
    )

    def f(x: float | None, unit: str = "") -> str:
        return "-" if x is None else f"{x:,.0f}{unit}"

    print(
        f"limits: loopback {f(loop, ' MB/s')} | disk write {f(disk, ' MB/s')} | disk write, fdatasync per "
        f"256 KiB {f(dsync, ' MB/s')} | fsyncs/s (4 KiB) {f(fsyncs)}"
    )

    fill = get("page_fill") or {}
    if "fresh_ms_per_mb" in fill:
        print(
            f"page-cache fill: {fill['fresh_ms_per_mb']:.2f} ms of CPU per MB into fresh pages, "
            f"{fill['reused_ms_per_mb']:.2f} ms into pages freed just before (every produced byte "
            "pays one of them; docs/PERFORMANCE.md)"
        )

    rows: list[tuple[str, str, str, str, str, str]] = []

    def ratio_row(
        name: str, figure: float | None, limit_name: str, limit: float | None, target: float | None
    ) -> None:
        ratio = None if figure is None or not limit else figure / limit
        verdict = "" if target is None or ratio is None else ("met" if ratio >= target else "MISSED")
        rows.append(
            (
                name,
                "-" if figure is None else f"{figure:,.0f} MB/s",
                limit_name,
                "-" if ratio is None else f"{ratio:.1%}",
                "" if target is None else f">= {target:.0%}",
                verdict,
            )
        )

    def bound_row(name: str, figure: float | None, unit: str, target: float) -> None:
        verdict = "-" if figure is None else ("met" if figure <= target else "MISSED")
        fig = "-" if figure is None else f"{figure:,.2f} {unit}"
        rows.append((name, fig, "", "", f"<= {target:g} {unit}", verdict))

    prod_limit = min(x for x in (loop, disk) if x) if (loop or disk) else None
    ratio_row(
        "produce raw 1 KiB, 1x1, acks=leader",
        get("produce", "mb_per_s"),
        "min(loopback, disk)",
        prod_limit,
        0.5,
    )
    ratio_row(
        "produce raw 1 KiB, 2 producers x 2 part.",
        get("produce_2x2", "mb_per_s"),
        "min(loopback, disk)",
        prod_limit,
        None,
    )
    ratio_row(
        "produce SDK, 1 partition, fsync=interval", get("produce_sdk", "mb_per_s"), "loopback", loop, 0.4
    )
    ratio_row(
        "fsync=always, SDK, 4 producers", get("fsync_always_sdk", "mb_per_s"), "disk w/ fdatasync", dsync, 0.6
    )
    for k in ("fsync_always_16", "fsync_always_256"):
        ratio_row(
            f"fsync=always, raw {get(k, 'batch_records')}/batch, 4 prod.",
            get(k, "mb_per_s"),
            "disk w/ fdatasync",
            dsync,
            None,
        )
    ratio_row("consume raw (count from headers)", get("consume", "mb_per_s"), "loopback", loop, None)
    ratio_row("consume raw (decode every batch)", get("consume_decode", "mb_per_s"), "loopback", loop, None)
    ratio_row("consume SDK Subscription, 1 partition", get("consume_sdk", "mb_per_s"), "loopback", loop, 0.5)
    ratio_row(
        "consume SDK, 4 partitions / 4 consumers", get("consume_sdk_4x4", "mb_per_s"), "loopback", loop, 0.6
    )
    for size, produce_us, consume_us in ((1024, 4.5, 1.6), (100, 1.3, None)):
        bound_row(
            f"python SDK produce {size} B, CPU/record",
            get(f"python_{size}", "produce_cpu_us_per_record"),
            "us",
            produce_us,
        )
        if consume_us is not None:
            bound_row(
                f"python SDK consume {size} B, CPU/record",
                get(f"python_{size}", "consume_cpu_us_per_record"),
                "us",
                consume_us,
            )
    restart = get("restart", "produce_ms") or []
    bound_row(
        f"restart, {get('restart', 'gb')} GB / 100 partitions, worst of {len(restart)}",
        max(restart) / 1000 if restart else None,
        "s",
        1.0,
    )

    print(f"\n{'target':<44} {'figure':>14} {'limit':<20} {'fraction':>9} {'target':>10} {'':>6}")
    for name, fig, lname, ratio, target, verdict in rows:
        print(f"{name:<44} {fig:>14} {lname:<20} {ratio:>9} {target:>10} {verdict:>6}")

    print(
        f"\n{'e2e at 10,000 records/s (us)':<44} {'p50':>7} {'p90':>7} {'p99':>7} {'p99.9':>7} {'max':>7}"
        "  target p99 <= 1000, p99.9 <= 3000"
    )
    for k, label in (("e2e", "raw, 1 record/batch"), ("e2e_sdk", "SDK producer, linger 0")):
        lat = get(k, "latency")
        if lat:
            ok = lat["p99_us"] <= 1000 and lat["p999_us"] <= 3000
            verdict = "met" if ok else "MISSED"
            print(
                f"{label:<44} {lat['p50_us']:>7} {lat['p90_us']:>7} {lat['p99_us']:>7} {lat['p999_us']:>7} "
                f"{lat['max_us']:>7}  {verdict}"
            )
    for k in ("produce", "produce_sdk", "fsync_always_sdk", "fsync_always_16", "fsync_always_256"):
        lat = get(k, "latency")
        if lat:
            print(
                f"{k + ' batch ack (us)':<44} {lat['p50_us']:>7} {lat['p90_us']:>7} {lat['p99_us']:>7} "
                f"{lat['p999_us']:>7} {lat['max_us']:>7}"
            )
    print(f"\nall results: {sys.argv[1]}")


if __name__ == "__main__":
    main()
