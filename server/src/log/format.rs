//! Every on-disk name and byte layout of the log, in one place (see docs/LOG_FORMAT.md).
//!
//! A partition directory holds segments. A segment is three files sharing a base offset:
//!
//! ```text
//! 00000000000000001234.log        batches, each = 72-byte header + producer's payload bytes
//! 00000000000000001234.index      sparse offset index: (u32 offset - base, u32 file position)
//! 00000000000000001234.timeindex  sparse time index: (i64 append time ms, u32 offset - base)
//! producers.snapshot              idempotent-producer state as of an offset (broker-owned)
//! .snapshot-staging/              a Raft snapshot's segments being installed (transient)
//! ```
//!
//! All integers are little-endian. The layout is versioned by `BATCH_MAGIC`; a reader must
//! refuse a magic it does not know rather than guess.
//!
//! Invariants:
//! - `batch_len` counts the header and the payload, so a reader can skip a batch without
//!   parsing its payload.
//! - `header_crc` covers header bytes `[0, 4)` and `[8, 72)` (everything but itself, including
//!   `batch_len` and `payload_crc`); `payload_crc` covers the payload. A batch is valid only if both match; recovery truncates at the first
//!   batch that is not.

use bytes::{Buf, BufMut};

/// Extension of the file that holds batches.
pub const LOG_EXT: &str = "log";
/// Extension of the sparse offset index.
pub const INDEX_EXT: &str = "index";
/// Extension of the sparse time index.
pub const TIME_INDEX_EXT: &str = "timeindex";
/// Idempotent-producer state of a partition as of some offset (JSON; rebuilt from batch headers
/// if missing). Written by the broker beside the segments.
pub const PRODUCER_SNAPSHOT_FILE: &str = "producers.snapshot";
/// Directory (inside a partition directory) where a Raft snapshot's segments are staged before
/// they replace the log; see `log/snapshot.rs`.
pub const SNAPSHOT_STAGING_DIR: &str = ".snapshot-staging";
/// Written (and fsynced) into the staging directory once every staged segment is durable: from
/// then on the swap is finished by `Log::open` after a crash instead of being discarded.
pub const SNAPSHOT_COMPLETE_FILE: &str = "complete";
/// The log start offset set by DeleteRecords when it lies above the first segment's base
/// (`log/start_floor.rs`): 8 bytes little-endian and their CRC32C. Replaced atomically.
pub const LOG_START_FILE: &str = "log-start";
/// Directory of a cleaning's rewritten segments until they replace the old ones (`swap.rs`).
pub const CLEAN_STAGING_DIR: &str = ".clean-staging";
/// In [`CLEAN_STAGING_DIR`]: the replaced segments' base offsets; written last, it marks the
/// staged segments complete.
pub const CLEAN_MANIFEST_FILE: &str = "replaces";
/// The cleaner's checkpoint: the offset below which the log was compacted.
pub const CLEANER_CHECKPOINT_FILE: &str = "cleaner-checkpoint";
/// Width of the zero-padded base offset in segment file names (fits any u64).
pub const BASE_OFFSET_DIGITS: usize = 20;

/// Current batch format version.
pub const BATCH_MAGIC: u8 = 1;
/// Fixed size of the broker's batch header.
pub const BATCH_HEADER_LEN: usize = 72;
/// `header_crc` is stored at `[4, 8)` and covers every other header byte.
const HEADER_CRC_AT: usize = 4;

fn header_crc(h: &[u8]) -> u32 {
    tidelog_proto::checksum::crc32c_of_two(&h[..HEADER_CRC_AT], &h[HEADER_CRC_AT + 4..BATCH_HEADER_LEN])
}

/// Size of one offset index entry: relative offset u32, file position u32.
pub const INDEX_ENTRY_LEN: usize = 8;
/// Size of one time index entry: append time i64, relative offset u32.
pub const TIME_INDEX_ENTRY_LEN: usize = 12;

/// Segments are capped below 4 GiB so that index positions fit in a u32.
pub const MAX_SEGMENT_BYTES: u64 = u32::MAX as u64;

/// Compression codec of a stored payload (the value the producer declared).
pub type CompressionCodec = u8;

/// The broker's header in front of every stored batch.
///
/// Byte layout (offset: field):
/// `0 batch_len u32 | 4 header_crc u32 | 8 magic u8 | 9 compression u8 | 10 flags u16 |
///  12 record_count u32 | 16 base_offset u64 | 24 raft_term u64 | 32 raft_index u64 |
///  40 append_time_ms i64 | 48 producer_id i64 | 56 producer_epoch i16 | 58 reserved u16 |
///  60 base_sequence i32 | 64 payload_crc u32 | 68 delete_horizon_s u32`
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchHeader {
    /// Header plus payload, in bytes.
    pub batch_len: u32,
    pub compression: CompressionCodec,
    /// [`FLAG_CONTROL`] and future bits; unknown bits make the header invalid.
    pub flags: u16,
    pub record_count: u32,
    pub base_offset: u64,
    /// Raft term of the leader that appended the batch (0 on a single node without Raft).
    pub raft_term: u64,
    /// Raft log index of the batch: one batch is one Raft entry.
    pub raft_index: u64,
    pub append_time_ms: i64,
    /// Idempotent producer id, or -1.
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    /// CRC32C of the payload bytes.
    pub payload_crc: u32,
    /// Compacted topics: when the cleaner may drop this batch's tombstones (or this
    /// transaction marker), in seconds since the Unix epoch; 0 = not yet reached by the
    /// cleaner. Set once, when a cleaning pass first keeps the batch (`compaction`).
    pub delete_horizon_s: u32,
}

/// Flag bit: a **control batch** — a Raft entry that is not a record batch (a leader's blank
/// entry, a membership change). It has `record_count == 0`, takes no offset (its base offset is
/// the log end, which the next data batch shares), is never indexed and never served to
/// consumers; only the Raft layer reads it. Its payload is the Raft layer's encoding.
pub const FLAG_CONTROL: u16 = 0x0001;
/// Flag bit: a record batch written inside a transaction (Kafka's `isTransactional`). Its
/// producer id and epoch name the transaction; its records are committed or aborted by the
/// next transaction marker of that producer on this partition. Until then the partition's last
/// stable offset stays at or below the first such batch (docs/TRANSACTIONS.md).
pub const FLAG_TRANSACTIONAL: u16 = 0x0002;
/// Flag bit: a **transaction marker** (Kafka's control record COMMIT/ABORT), written by the
/// transaction coordinator. It ends the open transaction of its producer id on this partition.
/// It takes one offset (`record_count == 1`, so offsets of a transactional partition increase
/// but have gaps where markers are), is indexed like a data batch, and is never served to
/// consumers. Its payload is the coordinator's short note (`b"commit"`/`b"abort"`), never read
/// back: the outcome is in the flags, so a header scan rebuilds the transaction state.
pub const FLAG_TXN_MARKER: u16 = 0x0004;
/// With [`FLAG_TXN_MARKER`]: the transaction aborted (without: it committed).
pub const FLAG_TXN_ABORT: u16 = 0x0008;
/// Every flag bit this version understands.
const KNOWN_FLAGS: u16 = FLAG_CONTROL | FLAG_TRANSACTIONAL | FLAG_TXN_MARKER | FLAG_TXN_ABORT;

/// Why a byte range is not a valid batch header.
#[derive(Debug, PartialEq, Eq)]
pub enum HeaderError {
    /// Fewer than `BATCH_HEADER_LEN` bytes.
    Short,
    UnknownMagic(u8),
    BadLength(u32),
    CrcMismatch,
    /// Flag bits this version does not know (written by a newer version).
    UnknownFlags(u16),
    /// A control batch that claims records.
    ControlWithRecords(u32),
}

impl BatchHeader {
    pub fn payload_len(&self) -> usize {
        self.batch_len as usize - BATCH_HEADER_LEN
    }

    /// Whether this is a control batch ([`FLAG_CONTROL`]).
    pub fn is_control(&self) -> bool {
        self.flags & FLAG_CONTROL != 0
    }

    /// Whether this is a transaction marker ([`FLAG_TXN_MARKER`]).
    pub fn is_txn_marker(&self) -> bool {
        self.flags & FLAG_TXN_MARKER != 0
    }

    /// Whether this record batch belongs to a transaction ([`FLAG_TRANSACTIONAL`]).
    pub fn is_transactional(&self) -> bool {
        self.flags & FLAG_TRANSACTIONAL != 0
    }

    /// Whether consumers are ever served this batch: it holds records (not a Raft control
    /// batch, not a compacted log's empty batch).
    pub fn is_served(&self) -> bool {
        self.record_count > 0 && !self.is_control()
    }

    /// Offset one past the batch's last record.
    pub fn next_offset(&self) -> u64 {
        self.base_offset + u64::from(self.record_count)
    }

    /// Encodes the header, computing `header_crc`.
    pub fn encode(&self) -> [u8; BATCH_HEADER_LEN] {
        let mut out = [0u8; BATCH_HEADER_LEN];
        {
            let mut b = &mut out[..];
            b.put_u32_le(self.batch_len);
            b.put_u32_le(0); // header_crc, filled below
            b.put_u8(BATCH_MAGIC);
            b.put_u8(self.compression);
            b.put_u16_le(self.flags);
            b.put_u32_le(self.record_count);
            b.put_u64_le(self.base_offset);
            b.put_u64_le(self.raft_term);
            b.put_u64_le(self.raft_index);
            b.put_i64_le(self.append_time_ms);
            b.put_i64_le(self.producer_id);
            b.put_i16_le(self.producer_epoch);
            b.put_u16_le(0);
            b.put_i32_le(self.base_sequence);
            b.put_u32_le(self.payload_crc);
            b.put_u32_le(self.delete_horizon_s);
        }
        let crc = header_crc(&out);
        out[HEADER_CRC_AT..HEADER_CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes and checks a header (magic, length, header CRC). The payload is not checked here.
    pub fn decode(bytes: &[u8]) -> Result<Self, HeaderError> {
        if bytes.len() < BATCH_HEADER_LEN {
            return Err(HeaderError::Short);
        }
        let mut b = &bytes[..BATCH_HEADER_LEN];
        let batch_len = b.get_u32_le();
        let stored_crc = b.get_u32_le();
        let magic = b.get_u8();
        if magic != BATCH_MAGIC {
            return Err(HeaderError::UnknownMagic(magic));
        }
        if (batch_len as usize) < BATCH_HEADER_LEN || u64::from(batch_len) > MAX_SEGMENT_BYTES {
            return Err(HeaderError::BadLength(batch_len));
        }
        if header_crc(bytes) != stored_crc {
            return Err(HeaderError::CrcMismatch);
        }
        let compression = b.get_u8();
        let flags = b.get_u16_le();
        if flags & !KNOWN_FLAGS != 0 {
            return Err(HeaderError::UnknownFlags(flags));
        }
        let record_count = b.get_u32_le();
        if flags & FLAG_CONTROL != 0 && record_count != 0 {
            return Err(HeaderError::ControlWithRecords(record_count));
        }
        let base_offset = b.get_u64_le();
        let raft_term = b.get_u64_le();
        let raft_index = b.get_u64_le();
        let append_time_ms = b.get_i64_le();
        let producer_id = b.get_i64_le();
        let producer_epoch = b.get_i16_le();
        let _reserved = b.get_u16_le();
        let base_sequence = b.get_i32_le();
        let payload_crc = b.get_u32_le();
        let delete_horizon_s = b.get_u32_le();
        Ok(Self {
            batch_len,
            compression,
            flags,
            record_count,
            base_offset,
            raft_term,
            raft_index,
            append_time_ms,
            producer_id,
            producer_epoch,
            base_sequence,
            payload_crc,
            delete_horizon_s,
        })
    }
}

/// File name of a segment file: `{base_offset:020}.{ext}`.
pub fn segment_file_name(base_offset: u64, ext: &str) -> String {
    format!("{base_offset:0width$}.{ext}", width = BASE_OFFSET_DIGITS)
}

/// Parses `{base_offset:020}.log` back into its base offset; `None` for any other name.
pub fn parse_log_file_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(LOG_EXT)?.strip_suffix('.')?;
    if stem.len() != BASE_OFFSET_DIGITS || !stem.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> BatchHeader {
        BatchHeader {
            batch_len: 100,
            compression: 2,
            flags: 0,
            record_count: 3,
            base_offset: 1 << 40,
            raft_term: 7,
            raft_index: 99,
            append_time_ms: 1_700_000_000_000,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
            payload_crc: 0xdead_beef,
            delete_horizon_s: 0,
        }
    }

    #[test]
    fn header_round_trips() {
        let h = sample();
        assert_eq!(BatchHeader::decode(&h.encode()), Ok(h));
    }

    #[test]
    fn control_flag_round_trips_and_unknown_flags_are_refused() {
        let control = BatchHeader { flags: FLAG_CONTROL, record_count: 0, ..sample() };
        let back = BatchHeader::decode(&control.encode());
        assert!(back.as_ref().is_ok_and(BatchHeader::is_control), "{back:?}");
        let newer = BatchHeader { flags: 0x8000, ..sample() };
        assert_eq!(BatchHeader::decode(&newer.encode()), Err(HeaderError::UnknownFlags(0x8000)));
        let bad = BatchHeader { flags: FLAG_CONTROL, ..sample() };
        assert_eq!(BatchHeader::decode(&bad.encode()), Err(HeaderError::ControlWithRecords(3)));
    }

    #[test]
    fn any_flipped_bit_is_detected() {
        let enc = sample().encode();
        for byte in 0..BATCH_HEADER_LEN {
            for bit in 0..8 {
                let mut bad = enc;
                bad[byte] ^= 1 << bit;
                assert!(BatchHeader::decode(&bad).is_err(), "flip at byte {byte} bit {bit} went unnoticed");
            }
        }
    }

    #[test]
    fn file_names_round_trip() {
        let name = segment_file_name(1234, LOG_EXT);
        assert_eq!(name, "00000000000000001234.log");
        assert_eq!(parse_log_file_name(&name), Some(1234));
        assert_eq!(parse_log_file_name("00000000000000001234.index"), None);
        assert_eq!(parse_log_file_name("1234.log"), None);
    }
}
