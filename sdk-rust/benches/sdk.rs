//! The SDK's per-record and per-batch costs, no network: the murmur2 partitioner, the
//! accumulator (append + seal, as `Producer::send` does) and the batch codec (encode, decode
//! with CRC check, LZ4/Zstd). Run with `cargo bench -p tidelog --bench sdk`.

#![allow(clippy::expect_used)] // a benchmark that cannot set up should stop loudly
use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use tidelog::batch::{decode_batch, encode_records, Record};
use tidelog::partitioner::{murmur2, partition_for_key};
use tidelog::producer::bench_accumulate;
use tidelog::proto::wire;
use tidelog::Compression;

/// Text-like values (like `tidelog bench`'s), so compression has realistic work.
fn records(n: usize, size: usize) -> Vec<Record> {
    (0..n)
        .map(|i| {
            let text: String = (0..)
                .map(|j| format!("order:{} user:{} status:paid,", i * 31 + j, (i + j) % 997))
                .take(size / 8)
                .collect();
            Record::new(Bytes::from(text.into_bytes()[..size].to_vec())).with_key(format!("user-{i}"))
        })
        .collect()
}

fn partitioner(c: &mut Criterion) {
    let mut g = c.benchmark_group("partitioner");
    let key = b"user-1234567890ab";
    g.throughput(Throughput::Elements(1));
    g.bench_function("murmur2_17B_key", |b| b.iter(|| murmur2(black_box(key))));
    g.bench_function("partition_for_key_12", |b| b.iter(|| partition_for_key(black_box(key), 12)));
    g.finish();
}

fn accumulator(c: &mut Criterion) {
    let mut g = c.benchmark_group("accumulator");
    for (n, size) in [(1000usize, 100usize), (1000, 1024)] {
        let input = records(n, size);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(format!("append_seal_{n}x{size}B"), |b| {
            b.iter_batched(
                || input.clone(),
                |r| bench_accumulate(r, 256 * 1024, Compression::None),
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec");
    let input = records(256, 1024);
    let (payload, crc) = encode_records(input.clone());
    g.throughput(Throughput::Bytes(payload.len() as u64));
    g.bench_function("encode_256x1KiB", |b| b.iter_batched(|| input.clone(), encode_records, BatchSize::LargeInput));
    // The checksum alone, over an encoded batch in cache (part of encode and of decode).
    g.bench_function("crc32c_256KiB", |b| b.iter(|| tidelog_proto::checksum::crc32c(black_box(&payload))));
    let served = |payload: Bytes, crc: u32, compression: Compression| wire::Batch {
        base_offset: 0,
        record_count: 256,
        append_time_ms: 1,
        compression: compression.codec(),
        payload: Some(if compression == Compression::None {
            wire::batch::Payload::Records(payload)
        } else {
            wire::batch::Payload::CompressedRecords(payload)
        }),
        crc32c: crc,
    };
    g.bench_function("decode_256x1KiB", |b| {
        b.iter(|| decode_batch("t", 0, served(payload.clone(), crc, Compression::None), 0).expect("decode"))
    });
    for compression in [Compression::Lz4, Compression::Zstd] {
        g.bench_function(format!("{compression:?}_compress_256KiB").to_lowercase(), |b| {
            b.iter(|| compression.compress(black_box(&payload)).expect("compress"))
        });
        let packed = compression.compress(&payload).expect("compress");
        let packed_crc = tidelog_proto::checksum::crc32c(&packed);
        g.bench_function(format!("{compression:?}_decode_256KiB").to_lowercase(), |b| {
            b.iter(|| decode_batch("t", 0, served(packed.clone(), packed_crc, compression), 0).expect("decode"))
        });
    }
    g.finish();
}

criterion_group!(benches, partitioner, accumulator, codec);
criterion_main!(benches);
