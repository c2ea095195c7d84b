//! Log throughput: append (page cache, no fsync) and sequential read, for small and large
//! batches, plus the offset lookup a subscriber does when it starts. Run with
//! `cargo bench -p tidelog-server --bench log`.

#![allow(clippy::expect_used)] // a benchmark that cannot set up should stop loudly
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use tidelog_server::log::{AppendBatch, Log, LogConfig};

fn batch(payload: &[u8]) -> AppendBatch<'_> {
    AppendBatch {
        payload,
        record_count: 16,
        compression: 0,
        payload_crc: tidelog_proto::checksum::crc32c(payload),
        raft: None,
        producer_id: -1,
        producer_epoch: -1,
        base_sequence: -1,
        flags: 0,
    }
}

fn append(c: &mut Criterion) {
    let mut g = c.benchmark_group("log_append");
    for size in [1024usize, 16 * 1024, 256 * 1024] {
        let payload = vec![0x5au8; size];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(format!("{size}B_batch"), |b| {
            let dir = tempfile::tempdir().expect("tempdir");
            let config = LogConfig { segment_bytes: 256 << 20, ..LogConfig::default() };
            let (mut log, _) = Log::open(dir.path(), config).expect("open");
            b.iter(|| log.append(batch(&payload), 1).expect("append"));
        });
    }
    g.finish();
}

fn read(c: &mut Criterion) {
    let mut g = c.benchmark_group("log_read");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = LogConfig { segment_bytes: 64 << 20, ..LogConfig::default() };
    let (mut log, _) = Log::open(dir.path(), config).expect("open");
    let payload = vec![0x5au8; 16 * 1024];
    for _ in 0..8192 {
        log.append(batch(&payload), 1).expect("append");
    }
    let end = log.log_end().0;
    let max_bytes = 1 << 20;
    g.throughput(Throughput::Bytes(max_bytes as u64));
    g.bench_function("1MiB_response_from_page_cache", |b| {
        let mut next = 0;
        b.iter(|| {
            if next >= end {
                next = 0;
            }
            let got = log.read(next, end, max_bytes).expect("read");
            next = got.last().map_or(0, |b| b.header.next_offset());
        });
    });
    g.throughput(Throughput::Elements(1));
    g.bench_function("locate_random_offset", |b| {
        b.iter_batched(|| rand::random::<u64>() % end, |o| log.locate(o).expect("locate"), BatchSize::SmallInput);
    });
    g.finish();
}

criterion_group!(benches, append, read);
criterion_main!(benches);
