//! Record framing, byte for byte what `tidelog._wire.encode_record` (and protobuf) produce.
//!
//! A record is framed as one `RecordBatch.records` element, so a batch is the concatenation of
//! its records. The length is computed first and the record written straight into its
//! destination (a batch buffer or a `bytes` object): the value is copied once.
//!
//! Invariant: [`Record::encoded_len`] is exactly the number of bytes [`Record::write`] appends.

/// Field tags (field number << 3 | wire type).
const TAG_BATCH_RECORD: u8 = 0x0a; // RecordBatch.records = 1
const TAG_KEY: u8 = 0x0a; // Record.key = 1
const TAG_VALUE: u8 = 0x12; // Record.value = 2
const TAG_HEADER: u8 = 0x1a; // Record.headers = 3
const TAG_TIMESTAMP: u8 = 0x20; // Record.timestamp_ms = 4 (varint)
const NULL_VALUE: [u8; 2] = [0x28, 0x01]; // Record.null_value = 5, true: a tombstone
const TAG_HEADER_KEY: u8 = 0x0a; // Header.key = 1
const TAG_HEADER_VALUE: u8 = 0x12; // Header.value = 2

pub fn varint_len(mut n: u64) -> usize {
    let mut len = 1;
    while n >= 0x80 {
        n >>= 7;
        len += 1;
    }
    len
}

pub fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// One record's parts, borrowed from the caller's Python objects.
pub struct Record<'a> {
    pub key: Option<&'a [u8]>,
    /// None: a tombstone (`null_value`), distinct from an empty value.
    pub value: Option<&'a [u8]>,
    pub headers: &'a [(&'a [u8], &'a [u8])],
    /// Milliseconds since the epoch; 0 or less: not sent.
    pub timestamp_ms: i64,
}

fn field_len(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

fn header_len(key: &[u8], value: &[u8]) -> usize {
    let k = if key.is_empty() { 0 } else { field_len(key.len()) };
    let v = if value.is_empty() { 0 } else { field_len(value.len()) };
    k + v
}

impl Record<'_> {
    fn body_len(&self) -> usize {
        let mut n = 0;
        if let Some(k) = self.key {
            n += field_len(k.len());
        }
        match self.value {
            Some(v) if !v.is_empty() => n += field_len(v.len()),
            Some(_) => {}
            None => n += NULL_VALUE.len(),
        }
        for (hk, hv) in self.headers {
            n += field_len(header_len(hk, hv));
        }
        if self.timestamp_ms > 0 {
            n += 1 + varint_len(self.timestamp_ms as u64);
        }
        n
    }

    /// The framed record's size in bytes.
    pub fn encoded_len(&self) -> usize {
        field_len(self.body_len())
    }

    /// Appends the framed record to `out` (fields in field-number order, as protobuf does).
    pub fn write(&self, out: &mut Vec<u8>) {
        out.push(TAG_BATCH_RECORD);
        put_varint(out, self.body_len() as u64);
        if let Some(k) = self.key {
            out.push(TAG_KEY);
            put_varint(out, k.len() as u64);
            out.extend_from_slice(k);
        }
        if let Some(v) = self.value.filter(|v| !v.is_empty()) {
            out.push(TAG_VALUE);
            put_varint(out, v.len() as u64);
            out.extend_from_slice(v);
        }
        for (hk, hv) in self.headers {
            out.push(TAG_HEADER);
            put_varint(out, header_len(hk, hv) as u64);
            if !hk.is_empty() {
                out.push(TAG_HEADER_KEY);
                put_varint(out, hk.len() as u64);
                out.extend_from_slice(hk);
            }
            if !hv.is_empty() {
                out.push(TAG_HEADER_VALUE);
                put_varint(out, hv.len() as u64);
                out.extend_from_slice(hv);
            }
        }
        if self.timestamp_ms > 0 {
            out.push(TAG_TIMESTAMP);
            put_varint(out, self.timestamp_ms as u64);
        }
        if self.value.is_none() {
            out.extend_from_slice(&NULL_VALUE);
        }
    }
}

/// Kafka's murmur2 (seed 0x9747b28c) as a signed 32-bit integer, as `partitioner.murmur2`.
pub fn murmur2(data: &[u8]) -> i32 {
    const M: u32 = 0x5bd1_e995;
    let mut h: u32 = 0x9747_b28c ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M) ^ k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition Kafka's default partitioner picks for `key` among `count` (> 0).
pub fn partition_for_key(key: &[u8], count: u32) -> u32 {
    (murmur2(key) as u32 & 0x7fff_ffff) % count
}
