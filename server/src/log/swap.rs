//! Crash-safe replacement of sealed segments by their compacted versions (the cleaner's last
//! step, `compaction`).
//!
//! Protocol, safe against a kill -9 at any point:
//! 1. the cleaner writes the new segments into `CLEAN_STAGING_DIR/<base>.log`, fsyncs each
//!    one, and builds their indexes there ([`create_staging`] starts empty);
//! 2. [`commit`] writes `CLEAN_STAGING_DIR/CLEAN_MANIFEST_FILE` (the base offsets of the segments
//!    being replaced and of the staged ones, with a CRC32C) and fsyncs it and the staging directory: from here on the
//!    swap is decided;
//! 3. [`finish_staged`] deletes every replaced segment's indexes, and its `.log` unless a staged
//!    file takes its name, then renames each staged `.log` over (a rename replaces a same-named
//!    old file atomically) and then its indexes, fsyncs the partition directory and removes the
//!    staging directory. Old indexes go before any new `.log` arrives, so an old index never
//!    pairs with a new segment; a new segment whose indexes did not arrive gets them rebuilt.
//!
//! A crash before step 2 leaves the old segments untouched: `Log::open` discards a staging
//! directory without a manifest. After it, `Log::open` redoes step 3, which is idempotent (a
//! file already deleted or already moved is skipped). So the log holds either the old segment
//! set or the new one, never both and never neither.
//!
//! Never: commit while a replaced segment could still change (the log checks, under its lock,
//! that every replaced segment is sealed and unchanged), or touch a live file before the
//! manifest is durable.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::format::{segment_file_name, CLEAN_MANIFEST_FILE, CLEAN_STAGING_DIR, INDEX_EXT, LOG_EXT, TIME_INDEX_EXT};

/// Step 1: a fresh, empty staging directory (a leftover one is removed). Returns its path.
pub(super) fn create_staging(dir: &Path) -> io::Result<PathBuf> {
    let staging = dir.join(CLEAN_STAGING_DIR);
    discard(dir)?;
    std::fs::create_dir(&staging)?;
    Ok(staging)
}

/// Removes the staging directory, if any (an abandoned cleaning).
pub(super) fn discard(dir: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(dir.join(CLEAN_STAGING_DIR)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Crash testing: `TIDELOG_CRASH_AT=<point>` in the environment makes the process abort at
/// that point of a swap (`staged`, `committed`, `renamed`), as a kill -9 there would. Read
/// once; costs one load per swap otherwise.
pub(super) fn crash_point(point: &str) {
    static AT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    if AT.get_or_init(|| std::env::var("TIDELOG_CRASH_AT").ok()).as_deref() == Some(point) {
        eprintln!("TIDELOG_CRASH_AT={point}: aborting");
        std::process::abort();
    }
}

/// Step 2: records durably that the segments `staged` (their base offsets) replace the
/// segments at `replaced`. Both lists are kept: a finish interrupted after some renames must
/// know which live files are already new ones.
pub(super) fn commit(dir: &Path, replaced: &[u64], staged: &[u64]) -> io::Result<()> {
    let staging = dir.join(CLEAN_STAGING_DIR);
    let mut body: Vec<u8> = (replaced.len() as u64).to_le_bytes().to_vec();
    body.extend(replaced.iter().chain(staged).flat_map(|b| b.to_le_bytes()));
    let crc = tidelog_proto::checksum::crc32c(&body);
    body.extend_from_slice(&crc.to_le_bytes());
    let mut f = File::create(staging.join(CLEAN_MANIFEST_FILE))?;
    f.write_all(&body)?;
    f.sync_all()?;
    File::open(&staging)?.sync_all()?;
    // The staging directory's own entry, for a power loss.
    File::open(dir)?.sync_all()
}

/// The manifest's (replaced, staged) base offsets; `None` if missing or damaged.
fn read_manifest(path: &Path) -> Option<(Vec<u64>, Vec<u64>)> {
    let bytes = std::fs::read(path).ok()?;
    let (body, crc) = bytes.split_at_checked(bytes.len().checked_sub(4)?)?;
    if body.len() % 8 != 0 || tidelog_proto::checksum::crc32c(body).to_le_bytes() != crc {
        return None;
    }
    let mut all = body.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()));
    let replaced_len = usize::try_from(all.next()?).ok()?;
    let all: Vec<u64> = all.collect();
    (replaced_len <= all.len()).then(|| (all[..replaced_len].to_vec(), all[replaced_len..].to_vec()))
}

/// Step 3 if a committed swap is waiting (returns true). Without a (valid) manifest the
/// staging directory is discarded (returns false). Called by `Log::open` before it reads the
/// segments, and by the swap itself.
pub(super) fn finish_staged(dir: &Path) -> io::Result<bool> {
    let staging = dir.join(CLEAN_STAGING_DIR);
    if !staging.exists() {
        return Ok(false);
    }
    let Some((replaced, staged)) = read_manifest(&staging.join(CLEAN_MANIFEST_FILE)) else {
        // Not committed (or a torn manifest, which fsync ordering makes impossible): the old
        // segments are intact.
        discard(dir)?;
        return Ok(false);
    };
    for &base in &replaced {
        let mut doomed = vec![INDEX_EXT, TIME_INDEX_EXT];
        if staged.binary_search(&base).is_err() {
            doomed.push(LOG_EXT);
        }
        for ext in doomed {
            match std::fs::remove_file(dir.join(segment_file_name(base, ext))) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
    }
    for &base in &staged {
        for ext in [LOG_EXT, INDEX_EXT, TIME_INDEX_EXT] {
            let name = segment_file_name(base, ext);
            // Already moved by an interrupted finish: skip it.
            match std::fs::rename(staging.join(&name), dir.join(&name)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            crash_point("renamed");
        }
    }
    File::open(dir)?.sync_all()?;
    discard(dir)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, body: &[u8]) {
        std::fs::write(dir.join(name), body).unwrap();
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".log"))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn an_uncommitted_swap_leaves_the_old_segments_and_a_committed_one_finishes_twice() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for b in [0u64, 10, 20] {
            write(d, &segment_file_name(b, LOG_EXT), format!("old{b}").as_bytes());
            write(d, &segment_file_name(b, INDEX_EXT), b"i");
        }
        // Staged but not committed: discarded, old files untouched.
        let staging = create_staging(d).unwrap();
        write(&staging, &segment_file_name(0, LOG_EXT), b"new0");
        assert!(!finish_staged(d).unwrap());
        assert!(!staging.exists());
        assert_eq!(std::fs::read(d.join(segment_file_name(0, LOG_EXT))).unwrap(), b"old0");

        // Committed: 0 and 10 become one new segment named 0; 20 stays.
        let staging = create_staging(d).unwrap();
        write(&staging, &segment_file_name(0, LOG_EXT), b"new0");
        commit(d, &[0, 10], &[0]).unwrap();
        assert!(finish_staged(d).unwrap());
        assert_eq!(files(d), [segment_file_name(0, LOG_EXT), segment_file_name(20, LOG_EXT)]);
        assert_eq!(std::fs::read(d.join(segment_file_name(0, LOG_EXT))).unwrap(), b"new0");
        assert!(!d.join(segment_file_name(0, INDEX_EXT)).exists(), "indexes are rebuilt");
        assert!(d.join(segment_file_name(20, INDEX_EXT)).exists());
        assert!(!finish_staged(d).unwrap(), "nothing left to do");
    }

    #[test]
    fn a_finish_interrupted_after_some_renames_completes_on_the_next_open() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for b in [0u64, 10] {
            write(d, &segment_file_name(b, LOG_EXT), b"old");
        }
        let staging = create_staging(d).unwrap();
        write(&staging, &segment_file_name(0, LOG_EXT), b"new0");
        write(&staging, &segment_file_name(10, LOG_EXT), b"new10");
        commit(d, &[0, 10], &[0, 10]).unwrap();
        // A crash after the first rename: redo the rest.
        std::fs::rename(staging.join(segment_file_name(0, LOG_EXT)), d.join(segment_file_name(0, LOG_EXT))).unwrap();
        assert!(finish_staged(d).unwrap());
        assert_eq!(std::fs::read(d.join(segment_file_name(0, LOG_EXT))).unwrap(), b"new0");
        assert_eq!(std::fs::read(d.join(segment_file_name(10, LOG_EXT))).unwrap(), b"new10");
        // The same with a merge (0 and 10 into one segment 0): the already-moved new 0 must
        // not be taken for an old one.
        for b in [10u64, 20] {
            write(d, &segment_file_name(b, LOG_EXT), b"old");
        }
        let staging = create_staging(d).unwrap();
        write(&staging, &segment_file_name(10, LOG_EXT), b"merged");
        commit(d, &[10, 20], &[10]).unwrap();
        std::fs::rename(staging.join(segment_file_name(10, LOG_EXT)), d.join(segment_file_name(10, LOG_EXT))).unwrap();
        assert!(finish_staged(d).unwrap());
        assert_eq!(std::fs::read(d.join(segment_file_name(10, LOG_EXT))).unwrap(), b"merged");
        assert!(!d.join(segment_file_name(20, LOG_EXT)).exists());
        // A damaged manifest reads as uncommitted.
        let staging = create_staging(d).unwrap();
        write(&staging, CLEAN_MANIFEST_FILE, b"garbage!!");
        write(&staging, &segment_file_name(0, LOG_EXT), b"x");
        assert!(!finish_staged(d).unwrap());
        assert_eq!(std::fs::read(d.join(segment_file_name(0, LOG_EXT))).unwrap(), b"new0");
    }
}
