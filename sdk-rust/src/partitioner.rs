//! Key → partition, exactly as Kafka's default partitioner: `toPositive(murmur2(key)) %
//! partitions`, so a key lands where a Kafka client would put it. Records without a key use
//! sticky partitioning (one partition per batch, chosen by the producer).

/// Kafka's murmur2 (seed 0x9747b28c), as in `org.apache.kafka.common.utils.Utils.murmur2`.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h: u32 = SEED ^ (len as u32);
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition Kafka's default partitioner picks for `key`.
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    assert!(partitions > 0, "a topic has at least one partition");
    ((murmur2(key) & 0x7fff_ffff) as u32) % partitions
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_kafka_reference_values() {
        // From Kafka's UtilsTest.testMurmur2.
        let cases: [(&[u8], i32); 4] = [
            (b"21", -973932308),
            (b"foobar", -790332482),
            (b"a-little-bit-long-string", -985981536),
            (b"a-little-bit-longer-string", -1486304829),
        ];
        for (key, want) in cases {
            assert_eq!(murmur2(key), want, "murmur2({:?})", String::from_utf8_lossy(key));
        }
        assert_eq!(murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8"), -58897971);
        assert_eq!(murmur2(b"abc"), 479470107);
    }

    #[test]
    fn partition_is_stable_and_in_range() {
        for n in [1, 3, 12, 100] {
            for i in 0..1000 {
                let key = format!("key-{i}");
                let p = partition_for_key(key.as_bytes(), n);
                assert!(p < n);
                assert_eq!(p, partition_for_key(key.as_bytes(), n));
            }
        }
    }
}

#[cfg(test)]
mod shared_vectors {
    //! The cross-SDK test vectors in proto/testdata/partitioner.json.
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    /// The file is small and flat; a few string searches read it without a JSON dependency.
    fn field<'a>(obj: &'a str, name: &str) -> &'a str {
        let start = obj.find(&format!("\"{name}\":")).unwrap() + name.len() + 3;
        obj[start..].trim_start().split([',', '}', '\n']).next().unwrap().trim().trim_matches('"')
    }

    #[test]
    fn matches_the_shared_vectors() {
        let text = include_str!("../../proto/testdata/partitioner.json");
        let cases = &text[text.find("\"cases\"").unwrap()..];
        let mut checked = 0;
        for case in cases.split("\"key_hex\"").skip(1) {
            let case = format!("\"key_hex\"{case}");
            let key = unhex(field(&case, "key_hex"));
            let hash: i32 = field(&case, "murmur2").parse().unwrap();
            assert_eq!(murmur2(&key), hash, "murmur2 of {key:?}");
            let parts = &case[case.find("\"partitions\"").unwrap()..];
            for (count, want) in
                parts.split(['{', '}']).nth(1).unwrap().split(',').map(|kv| kv.split_once(':').unwrap())
            {
                let count: u32 = count.trim().trim_matches('"').parse().unwrap();
                let want: u32 = want.trim().parse().unwrap();
                assert_eq!(partition_for_key(&key, count), want, "key {key:?} over {count} partitions");
                checked += 1;
            }
        }
        assert!(checked >= 100, "only {checked} vectors checked");
    }
}
