//! sled disk use under consumer-group commit churn (STACK.md flags sled's growth under churn).
//! Commits the same 12 partitions of one group over and over, as a busy group does, and prints
//! the store's size on disk as it goes. Run: `cargo bench -p tidelog-server --bench meta_churn`.
#![allow(clippy::expect_used)] // a measurement that cannot set up should stop loudly

use tidelog_server::meta::{MetaStore, StoredOffset};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = MetaStore::open(dir.path()).expect("open sled");
    let commits: u64 = std::env::var("COMMITS").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    let start = std::time::Instant::now();
    println!("commits  size_on_disk_bytes  live_data_bytes");
    for i in 1..=commits {
        let offsets: Vec<StoredOffset> = (0..12)
            .map(|p| StoredOffset {
                partition: p,
                offset: i * 100 + u64::from(p),
                commit_time_ms: i as i64,
                metadata: String::new(),
            })
            .collect();
        store.commit_offsets("churn-group", "events", &offsets).await.expect("commit");
        if i.is_power_of_two() || i == commits {
            // 12 keys of ~20 bytes and 16-byte values are all the live data there is.
            println!("{i:>7}  {:>18}  {:>15}", store.size_on_disk(), 12 * (20 + 16));
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!("{commits} commits (each fsynced) in {secs:.1} s: {:.0} commits/s", commits as f64 / secs);
}
