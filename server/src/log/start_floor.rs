//! The log start floor: the offset below which records were deleted on request (Kafka's
//! DeleteRecords), kept in one small file beside the segments (`format::LOG_START_FILE`).
//!
//! Deleting records never rewrites a segment: it moves the log start offset up. Reads below it
//! are out of range at once; whole segments below it are deleted by the next retention pass.
//! The floor is kept apart from the segments because it may lie inside one.
//!
//! Invariants:
//! - the file only ever holds a higher floor than before (callers pass the maximum);
//! - it is replaced atomically (written beside, fsynced, renamed, directory fsynced), so a
//!   crash leaves the old floor or the new one, never a torn one;
//! - a damaged or unreadable file reads as no floor (records reappear; none are lost).
//!
//! Never: let the floor count past the log end: `Log::log_start` caps it there, so a replica
//! whose log lags behind the floor starts where its log ends and catches up to the floor.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use super::format::LOG_START_FILE;

const LEN: usize = 12;

/// Reads the floor stored in `dir`; 0 when there is none (or it is damaged: logged).
pub fn load(dir: &Path) -> u64 {
    load_u64(dir, LOG_START_FILE)
}

/// Stores `floor` in `dir` durably (see the module invariants).
pub fn store(dir: &Path, floor: u64) -> std::io::Result<()> {
    store_u64(dir, LOG_START_FILE, floor)
}

/// Reads the offset kept in file `name` of `dir` in this module's format (the cleaner's
/// checkpoint uses it too); 0 when there is none or it is damaged (logged).
pub fn load_u64(dir: &Path, name: &str) -> u64 {
    let path = dir.join(name);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return 0,
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "cannot read the file; ignoring it");
            return 0;
        }
    };
    match decode(&bytes) {
        Some(floor) => floor,
        None => {
            tracing::error!(path = %path.display(), "damaged file; ignoring it");
            0
        }
    }
}

/// Replaces file `name` of `dir` with `value`, atomically and durably.
pub fn store_u64(dir: &Path, name: &str, value: u64) -> std::io::Result<()> {
    let path = dir.join(name);
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = File::create(&tmp)?;
    f.write_all(&encode(value))?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    File::open(dir)?.sync_all()
}

fn encode(floor: u64) -> [u8; LEN] {
    let value = floor.to_le_bytes();
    let mut out = [0u8; LEN];
    out[..8].copy_from_slice(&value);
    out[8..].copy_from_slice(&tidelog_proto::checksum::crc32c(&value).to_le_bytes());
    out
}

fn decode(bytes: &[u8]) -> Option<u64> {
    let bytes: &[u8; LEN] = bytes.try_into().ok()?;
    let (value, crc) = bytes.split_at(8);
    (tidelog_proto::checksum::crc32c(value).to_le_bytes() == crc)
        .then(|| u64::from_le_bytes(value.try_into().unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_damage_reads_as_no_floor() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()), 0);
        store(dir.path(), 42).unwrap();
        assert_eq!(load(dir.path()), 42);
        store(dir.path(), 7_000_000_000).unwrap();
        assert_eq!(load(dir.path()), 7_000_000_000);
        let mut bytes = std::fs::read(dir.path().join(LOG_START_FILE)).unwrap();
        bytes[0] ^= 1;
        std::fs::write(dir.path().join(LOG_START_FILE), &bytes).unwrap();
        assert_eq!(load(dir.path()), 0);
        std::fs::write(dir.path().join(LOG_START_FILE), b"short").unwrap();
        assert_eq!(load(dir.path()), 0);
    }
}
