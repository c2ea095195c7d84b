//! Hostile input for every decoder a client or a peer can reach, as seeded mutation fuzzing
//! (no nightly toolchain needed): produced batches (framing, CRC, declared counts and codecs),
//! LZ4 and Zstd frames including decompression bombs, the Raft RPC and log codecs, segment
//! files as a snapshot transfer delivers them, and bearer tokens. Each
//! target starts from real encodings, mutates them (bit flips, truncations, splices, random
//! lengths) and checks that the decoder returns a result or an error: never a panic, and never
//! more output than the configured limits.
//!
//! Bounded: `TIDELOG_FUZZ_SECS` seconds per target (default 2; the test command's budget), at
//! most a million inputs each. The seed is printed, and a failure names the seed and the input
//! (hex) to replay it: `TIDELOG_FUZZ_SEED=<seed> cargo test -p tidelog-server --test
//! hostile_input`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tidelog::batch::encode_records;
use tidelog::{Compression, Record};
use tidelog_server::partition::batch::{decompress, validate, Declared, MAX_DECOMPRESSED_BYTES};
use tidelog_server::raft::{codec, rpc_codec};

fn budget() -> Duration {
    let secs = std::env::var("TIDELOG_FUZZ_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(2.0);
    Duration::from_secs_f64(secs)
}

fn rng(target: &str) -> StdRng {
    let seed = std::env::var("TIDELOG_FUZZ_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("{target}: seed {seed} (TIDELOG_FUZZ_SEED={seed} replays it)");
    StdRng::seed_from_u64(seed)
}

/// One mutation of `seed`: flipped bits, a truncation, a splice of random bytes, an extended
/// tail, or a fresh random buffer.
fn mutate(rng: &mut StdRng, seed: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    match rng.gen_range(0..6) {
        0 => {
            for _ in 0..rng.gen_range(1..8) {
                if !v.is_empty() {
                    let i = rng.gen_range(0..v.len());
                    v[i] ^= 1 << rng.gen_range(0..8);
                }
            }
        }
        1 => v.truncate(rng.gen_range(0..=v.len())),
        2 if !v.is_empty() => {
            let at = rng.gen_range(0..v.len());
            let n = rng.gen_range(1..16).min(v.len() - at);
            for b in &mut v[at..at + n] {
                *b = rng.gen();
            }
        }
        3 => v.extend((0..rng.gen_range(1..64)).map(|_| rng.gen::<u8>())),
        4 if v.len() >= 4 => {
            // A length-like field set to something large.
            let at = rng.gen_range(0..v.len() - 3);
            v[at..at + 4].copy_from_slice(&rng.gen_range(u32::MAX - 1024..=u32::MAX).to_le_bytes());
        }
        _ => v = (0..rng.gen_range(0..256)).map(|_| rng.gen::<u8>()).collect(),
    }
    v
}

/// Runs `check` on mutations of `seeds` until the budget is spent; a panic fails the test with
/// the input that caused it.
fn fuzz(target: &str, seeds: &[Vec<u8>], mut check: impl FnMut(&[u8])) -> u64 {
    let mut rng = rng(target);
    let deadline = Instant::now() + budget();
    let mut n = 0u64;
    while Instant::now() < deadline && n < 1_000_000 {
        let seed = &seeds[rng.gen_range(0..seeds.len())];
        let input = mutate(&mut rng, seed);
        if catch_unwind(AssertUnwindSafe(|| check(&input))).is_err() {
            let hex: String = input.iter().map(|b| format!("{b:02x}")).collect();
            panic!("{target}: panicked on input {hex}");
        }
        n += 1;
    }
    eprintln!("{target}: {n} inputs, no panic");
    assert!(n > 0);
    n
}

fn record_batches() -> Vec<Vec<u8>> {
    let records = |n: usize| {
        (0..n)
            .map(|i| {
                Record::new(format!("value-{i}"))
                    .with_key(format!("key-{i}"))
                    .with_header("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
            })
            .collect::<Vec<_>>()
    };
    vec![encode_records(records(1)).0.to_vec(), encode_records(records(20)).0.to_vec(), Vec::new()]
}

#[test]
fn produced_batches_never_panic_the_validator() {
    let plain = record_batches();
    let lz4: Vec<Vec<u8>> = plain.iter().map(|b| Compression::Lz4.compress(b).unwrap().to_vec()).collect();
    let zstd: Vec<Vec<u8>> = plain.iter().map(|b| Compression::Zstd.compress(b).unwrap().to_vec()).collect();
    let seeds: Vec<Vec<u8>> = plain.into_iter().chain(lz4).chain(zstd).collect();
    let mut rng = rng("validate: declarations");
    fuzz("validate", &seeds, |input| {
        let codec = rng.gen_range(-1..4);
        let declared = Declared {
            compressed: codec > 0,
            codec,
            record_count: rng.gen_range(0..64),
            crc: if rng.gen_bool(0.5) { Some(tidelog_proto::checksum::crc32c(input)) } else { Some(rng.gen()) },
        };
        let _ = validate(input, declared, 1 << 20);
    });
}

#[test]
fn compressed_frames_never_panic_and_never_inflate_past_the_limit() {
    let plain = record_batches();
    let mut seeds: Vec<Vec<u8>> = Vec::new();
    for b in &plain {
        seeds.push(Compression::Lz4.compress(b).unwrap().to_vec());
        seeds.push(Compression::Zstd.compress(b).unwrap().to_vec());
    }
    fuzz("decompress", &seeds, |input| {
        for codec in [1u8, 2] {
            if let Ok(out) = decompress(codec, input) {
                assert!((out.len() as u64) <= MAX_DECOMPRESSED_BYTES);
            }
        }
    });
    // Bombs: 200 MiB of zeros compresses to well under a batch; decompressing stops at the
    // limit with a clear error instead of allocating it all.
    let zeros = vec![0u8; 200 << 20];
    for (codec, c) in [(1u8, Compression::Lz4), (2, Compression::Zstd)] {
        let bomb: Bytes = c.compress(&zeros).unwrap();
        assert!(bomb.len() < 2 << 20, "{c:?} bomb is {} bytes", bomb.len());
        let refused = decompress(codec, &bomb).unwrap_err().to_string();
        assert!(refused.contains("decompresses to more than"), "{refused}");
    }
}

#[test]
fn raft_codecs_never_panic() {
    // Real encodings of what peers send (votes, log ids, quiesce calls, verdicts), and random
    // bytes for the append-entries body.
    let mut rng = rng("raft seeds");
    let seeds: Vec<Vec<u8>> = (0..32)
        .map(|_| {
            let mut v: Vec<u8> = (0..rng.gen_range(0..96)).map(|_| rng.gen::<u8>()).collect();
            if rng.gen_bool(0.3) {
                v.truncate(8);
            }
            v
        })
        .collect();
    fuzz("raft codecs", &seeds, |input| {
        let body = Bytes::copy_from_slice(input);
        let _ = rpc_codec::decode_append_request(&body);
        let _ = rpc_codec::decode_append_response(input);
        let _ = rpc_codec::decode_stream_result(input);
        let _ = rpc_codec::decode_vote_request(input);
        let _ = rpc_codec::decode_vote_response(input);
        let _ = rpc_codec::decode_quiesce_request(input);
        let _ = rpc_codec::decode_quiesce_response(input);
        let _ = rpc_codec::decode_transfer_request(input);
        let _ = rpc_codec::decode_transfer_response(input);
        let _ = rpc_codec::decode_vote(input);
        let _ = codec::decode_control(input);
        let _ = codec::decode_outcome(input);
        let _ = codec::decode_vote(input);
        let _ = codec::decode_log_id(input);
        let _ = codec::decode_applied(input);
        let _ = codec::decode_snapshot_meta(input);
    });
}

/// What a snapshot transfer delivers is segment files, which the follower's log opens as its
/// own (`log/snapshot.rs`): a corrupt or truncated file from a peer must be truncated or
/// refused at open, never panic it or a later read.
#[test]
fn segment_files_from_a_peer_never_panic_the_log() {
    use tidelog_server::log::{AppendBatch, Log, LogConfig};
    let src = tempfile::tempdir().unwrap();
    let config = LogConfig { index_interval_bytes: 128, ..LogConfig::default() };
    let (mut log, _) = Log::open(src.path(), config).unwrap();
    for (i, payload) in record_batches().iter().enumerate().filter(|(_, p)| !p.is_empty()) {
        for _ in 0..8 {
            let batch = AppendBatch {
                payload,
                record_count: if i == 0 { 1 } else { 20 },
                compression: 0,
                payload_crc: tidelog_proto::checksum::crc32c(payload),
                raft: None,
                producer_id: -1,
                producer_epoch: -1,
                base_sequence: -1,
                flags: 0,
            };
            log.append(batch, 1_000).unwrap();
        }
    }
    log.sync().unwrap();
    drop(log);
    let name = std::fs::read_dir(src.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .find(|n| n.to_string_lossy().ends_with(".log"))
        .unwrap();
    let segment = std::fs::read(src.path().join(&name)).unwrap();
    let dst = tempfile::tempdir().unwrap();
    fuzz("segment files", &[segment], |input| {
        let dir = dst.path().join("p");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(&name), input).unwrap();
        if let Ok((log, _)) = Log::open(&dir, config) {
            let (mut next, end) = (log.log_start().0, log.log_end().0);
            while next < end {
                match log.read(next, end, 1 << 16) {
                    Ok(batches) if !batches.is_empty() => next = batches.last().unwrap().header.next_offset(),
                    _ => break,
                }
            }
        }
    });
}

/// Bearer tokens are the first thing an untrusted client sends: a mutated token never panics
/// the verifier and never verifies.
#[test]
fn bearer_tokens_never_panic_and_never_verify_when_mutated() {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    use tidelog_server::auth::token::JwtVerifier;
    use tidelog_server::auth::JwtSettings;
    let dir = tempfile::tempdir().unwrap();
    let pair = rcgen::KeyPair::generate().unwrap();
    std::fs::write(dir.path().join("k.pem"), pair.public_key_pem()).unwrap();
    let settings =
        JwtSettings { keys: dir.path().join("k.pem"), issuer: "https://issuer.test".into(), ..JwtSettings::default() };
    let verifier = JwtVerifier::new(&settings).unwrap();
    let key = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 600;
    let claims = serde_json::json!({"sub": "alice", "iss": "https://issuer.test", "exp": exp});
    let token = jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &key).unwrap();
    assert_eq!(verifier.verify(&token).unwrap(), "alice");
    // The same claims, unsigned ("none") or signed with HMAC keyed by the public key
    // (algorithm confusion), are refused.
    let unsigned = format!("{}.", token.rsplit_once('.').unwrap().0.replacen("ES256", "none", 1));
    assert!(verifier.verify(&unsigned).is_err());
    let hmac = EncodingKey::from_secret(pair.public_key_pem().as_bytes());
    let confused = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &hmac).unwrap();
    assert!(verifier.verify(&confused).is_err(), "HS256 with the public key as secret");
    fuzz("bearer tokens", &[token.clone().into_bytes()], |input| {
        let Ok(candidate) = std::str::from_utf8(input) else { return };
        if candidate != token {
            assert!(verifier.verify(candidate).is_err(), "a mutated token verified: {candidate}");
        }
    });
}

/// Group session messages: what a member sends (joins, syncs, heartbeats, leaves), in any
/// order, with any names, generations and assignments, from many sessions at once, never
/// panics the coordinator, and every member it describes is one that joined.
#[test]
fn group_session_messages_never_panic_the_coordinator() {
    use tidelog_proto::v1::{JoinGroup, MemberAssignment, TopicPartitions};
    use tidelog_server::broker::{Broker, BrokerOptions};
    use tidelog_server::group::Coordinator;
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::open(BrokerOptions {
        cleaner: Default::default(),
        data_dir: dir.path().to_path_buf(),
        node_id: 1,
        advertised_address: "127.0.0.1:0".into(),
        topic_defaults: Default::default(),
        retention_check_interval: Duration::from_secs(60),
        auth: Default::default(),
    })
    .unwrap();
    let coordinator = Coordinator::new(broker);
    let mut rng = rng("group sessions");
    let word = |rng: &mut StdRng| -> String {
        match rng.gen_range(0..5) {
            0 => String::new(),
            1 => "x".repeat(rng.gen_range(200..400)),
            2 => (0..rng.gen_range(1..8)).map(|_| char::from(rng.gen_range(0u8..128))).collect(),
            _ => format!("g{}", rng.gen_range(0..3)),
        }
    };
    let deadline = Instant::now() + budget();
    let (mut n, mut members): (u64, Vec<(String, String, u64)>) = (0, Vec::new());
    let mut receivers = Vec::new();
    while Instant::now() < deadline && n < 200_000 {
        n += 1;
        let session = rng.gen_range(1..16u64);
        let known = (!members.is_empty()).then(|| members[rng.gen_range(0..members.len())].clone());
        let step = catch_unwind(AssertUnwindSafe(|| match rng.gen_range(0..5) {
            0 | 1 => {
                let join = JoinGroup {
                    group: word(&mut rng),
                    topics: (0..rng.gen_range(0..3))
                        .map(|_| if rng.gen_bool(0.8) { format!("t{}", rng.gen_range(0..3)) } else { word(&mut rng) })
                        .collect(),
                    assignors: (0..rng.gen_range(0..3))
                        .map(|_| match rng.gen_range(0..5) {
                            0 => word(&mut rng),
                            1 => "roundrobin".into(),
                            2 => "sticky".into(),
                            _ => "range".into(),
                        })
                        .collect(),
                    session_timeout_ms: match rng.gen_range(0..4) {
                        0 => rng.gen(),
                        1 => 0,
                        _ => rng.gen_range(1000..300_000),
                    },
                    ..Default::default()
                };
                let group = join.group.clone();
                let id = known.as_ref().filter(|_| rng.gen_bool(0.3)).map(|(_, m, _)| m.clone());
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                receivers.push(rx);
                if let Ok(member) = coordinator.join(session, id.as_deref(), join, tx) {
                    members.push((group, member, session));
                }
            }
            2 => {
                let (g, m, _) = known.clone().unwrap_or_else(|| (word(&mut rng), word(&mut rng), 0));
                let assignments = (0..rng.gen_range(0..4))
                    .map(|_| MemberAssignment {
                        member_id: if rng.gen_bool(0.7) { m.clone() } else { word(&mut rng) },
                        partitions: vec![TopicPartitions {
                            topic: word(&mut rng),
                            partitions: (0..rng.gen_range(0..5)).map(|_| rng.gen()).collect(),
                        }],
                    })
                    .collect();
                let _ = coordinator.sync(&g, &m, rng.gen_range(0..4), assignments);
            }
            3 => {
                if let Some((g, m, _)) = &known {
                    let _ = coordinator.heartbeat(g, m);
                    let _ = coordinator.check_commit(g, rng.gen_range(0..4), m);
                }
            }
            _ => {
                if let Some((g, m, s)) = &known {
                    coordinator.remove(g, m, Some(*s), "fuzz");
                }
            }
        }));
        if step.is_err() {
            panic!("group sessions: panicked at step {n} (replay with the seed above)");
        }
        if receivers.len() > 256 {
            receivers.drain(..128);
        }
        if let Some((g, _, _)) = &known {
            if let Some(view) = coordinator.describe(g) {
                for m in &view.members {
                    assert!(members.iter().any(|(_, id, _)| *id == m.member_id), "unknown member {}", m.member_id);
                }
            }
        }
    }
    eprintln!("group sessions: {n} messages ({} joins accepted), no panic", members.len());
    assert!(members.len() > 100, "the fuzz must reach the coordinator past validation");
}
