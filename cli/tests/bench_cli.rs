//! `tidelog bench` stays runnable: each mode runs briefly against a real broker and its
//! `--json` result is checked for completeness, never for speed (benchmarks are not timed
//! tests; `scripts/bench.sh` measures).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Command;

use support::{BrokerProcess, BIN};

fn bench(addr: &str, args: &[&str]) -> serde_json::Value {
    let out = Command::new(BIN)
        .args(["bench"])
        .args(args)
        .args(["--broker", addr, "--json", "--quiet", "--duration", "60"])
        .output()
        .expect("run tidelog bench");
    assert!(out.status.success(), "bench {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("one JSON object on stdout")
}

#[test]
fn every_bench_mode_runs_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("data"), &[]);
    let addr = broker.addr.as_str();

    let common = ["--partitions", "2", "--record-size", "100", "--batch-records", "50"];
    let p = bench(addr, &[&["produce", "--topic", "t", "--records", "2000", "--producers", "2"], &common[..]].concat());
    assert_eq!(p["records"], 2000);
    assert!(p["latency"]["p99_us"].as_u64().unwrap() > 0);
    assert_eq!(p["corrected_for_coordinated_omission"], false);

    // Reuses the produced topic (no pre-fill needed), then a fresh one that it pre-fills.
    let c = bench(addr, &[&["consume", "--topic", "t", "--records", "2000", "--consumers", "2"], &common[..]].concat());
    assert_eq!(c["records"], 2000);
    let c = bench(addr, &[&["consume", "--topic", "fresh", "--records", "1000", "--decode"], &common[..]].concat());
    assert_eq!(c["records"], 1000);
    assert_eq!(c["partitions"], 2);

    let r =
        bench(addr, &[&["produce", "--topic", "paced", "--records", "1000", "--rate", "5000"], &common[..]].concat());
    assert_eq!(r["records"], 1000);
    assert_eq!(r["corrected_for_coordinated_omission"], true);

    let s = bench(
        addr,
        &[&["produce", "--sdk", "--topic", "sdk", "--records", "1000", "--acks", "all"], &common[..]].concat(),
    );
    assert_eq!(s["records"], 1000);
    assert_eq!(s["client"], "sdk");

    for extra in [&[][..], &["--sdk", "--linger-ms", "1"][..]] {
        let topic = format!("e2e{}", extra.len());
        let args =
            [&["e2e", "--topic", &topic, "--records", "2000", "--rate", "2000", "--warmup", "0"], &common[..], extra];
        let e = bench(addr, &args.concat());
        assert_eq!(e["records"], 2000, "every acknowledged record is delivered: {e}");
        assert_eq!(e["latency"]["count"], 2000);
    }
}
