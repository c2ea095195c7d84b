//! Raft snapshots of a partition log. A partition's snapshot IS its retained segments up to the
//! last applied entry (docs/RAFT_PLAN.md §3): nothing is serialised, a lagging follower gets the
//! leader's segment files. This module cuts such a prefix out of a live log (as open file
//! handles, so retention may unlink the files while a transfer runs) and installs a prefix in
//! place of a log.
//!
//! Install protocol, crash-safe at every step:
//! 1. copy every slice into `SNAPSHOT_STAGING_DIR/<segment>.log` and fsync each file;
//! 2. write and fsync `SNAPSHOT_COMPLETE_FILE`, then fsync the staging directory;
//! 3. delete every live segment file (and the producer snapshot and cleaner checkpoint, which
//!    describe the old log),
//!    move the staged files in, fsync the partition directory;
//! 4. remove the staging directory.
//!
//! A crash before step 2 leaves the old log whole (`Log::open` discards an incomplete staging
//! directory); after it, `Log::open` finishes steps 3–4, which are idempotent. So a log is never
//! half old and half new. Indexes are not copied: `Segment::open` rebuilds them, checking every
//! batch's CRC on the way.
//!
//! Never: read a source file past its slice's `len` (the source's active segment keeps
//! growing), or touch a live segment before the staged copy is durable.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use super::format::{
    parse_log_file_name, segment_file_name, CLEANER_CHECKPOINT_FILE, INDEX_EXT, LOG_EXT, PRODUCER_SNAPSHOT_FILE,
    SNAPSHOT_COMPLETE_FILE, SNAPSHOT_STAGING_DIR, TIME_INDEX_EXT,
};

/// The first `len` bytes of a segment's log file, whose first batch has `base_offset`. A
/// snapshot is a list of these in offset order; `len` always ends at a batch boundary.
#[derive(Clone, Debug)]
pub struct SegmentSlice {
    pub base_offset: u64,
    pub file: Arc<File>,
    pub len: u64,
}

/// Copy unit: bounded memory whatever the segment size.
const COPY_CHUNK: usize = 1 << 20;

/// Steps 1–2: makes a durable, complete copy of `slices` in the staging directory (replacing
/// any leftover one).
pub(super) fn stage(dir: &Path, slices: &[SegmentSlice]) -> io::Result<()> {
    let staging = dir.join(SNAPSHOT_STAGING_DIR);
    if staging.exists() {
        std::fs::remove_dir_all(&staging)?;
    }
    std::fs::create_dir(&staging)?;
    let mut buf = vec![0u8; COPY_CHUNK];
    for slice in slices {
        let mut out = File::create(staging.join(segment_file_name(slice.base_offset, LOG_EXT)))?;
        let mut pos = 0u64;
        while pos < slice.len {
            let n = usize::try_from(slice.len - pos).unwrap_or(COPY_CHUNK).min(COPY_CHUNK);
            slice.file.read_exact_at(&mut buf[..n], pos)?;
            out.write_all(&buf[..n])?;
            pos += n as u64;
        }
        out.sync_all()?;
    }
    File::create(staging.join(SNAPSHOT_COMPLETE_FILE))?.sync_all()?;
    File::open(&staging)?.sync_all()
}

/// Steps 3–4 if a complete staged snapshot is waiting (returns true), else removes any
/// incomplete staging directory (returns false). Called by `Log::open` before it reads the
/// segments, and by the install itself.
pub(super) fn finish_staged(dir: &Path) -> io::Result<bool> {
    let staging = dir.join(SNAPSHOT_STAGING_DIR);
    if !staging.exists() {
        return Ok(false);
    }
    if !staging.join(SNAPSHOT_COMPLETE_FILE).exists() {
        std::fs::remove_dir_all(&staging)?;
        return Ok(false);
    }
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_segment_file = [LOG_EXT, INDEX_EXT, TIME_INDEX_EXT].iter().any(|ext| {
            name.strip_suffix(ext)
                .and_then(|stem| stem.strip_suffix('.'))
                .is_some_and(|stem| parse_log_file_name(&format!("{stem}.{LOG_EXT}")).is_some())
        });
        // The cleaner's checkpoint describes the old log too.
        if is_segment_file || name == PRODUCER_SNAPSHOT_FILE || name == CLEANER_CHECKPOINT_FILE {
            std::fs::remove_file(entry.path())?;
        }
    }
    for entry in std::fs::read_dir(&staging)? {
        let entry = entry?;
        let name = entry.file_name();
        if parse_log_file_name(&name.to_string_lossy()).is_some() {
            std::fs::rename(entry.path(), dir.join(&name))?;
        }
    }
    File::open(dir)?.sync_all()?;
    std::fs::remove_dir_all(&staging)?;
    Ok(true)
}
