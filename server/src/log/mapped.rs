//! Segment bytes handed out without a copy: a read-only, shared mapping of the file range a
//! consumer read covers, owned by the `Bytes` its batch payloads are slices of. The socket
//! write then copies straight from the page cache; a `pread` into a buffer was one more copy
//! of every byte served (docs/PERFORMANCE.md, "Consume: mapped reads").
//!
//! A mapping is safe to touch only where the file still has bytes: a page past the end of the
//! file is a SIGBUS. Files shrink in one place at run time, `Segment::truncate_at_position`
//! (a Raft follower dropping an uncommitted suffix). The append rollback cuts back only bytes
//! no reader was given, and recovery runs before any reader exists; everything else replaces
//! files by rename or unlinks them, which leaves a mapping's pages in place. Hence:
//!
//! Invariants:
//! - [`ShrinkGate`]: a truncation holds it exclusively while it shrinks the file; a mapped read
//!   holds it shared from the mapping until it has read every header it looks at. No header
//!   past the end of the file is ever touched;
//! - after that, only the payloads handed out are read, and a mapped read hands out only
//!   batches below a committed bound (the high watermark or the last stable offset): Raft never
//!   truncates a committed entry, so those bytes stay in the file for as long as the mapping
//!   lives, whatever it spans beyond them;
//! - a mapping is unmapped exactly once, when the last `Bytes` of it is dropped.
//!
//! A disk read error under a mapping is a SIGBUS, not an error answer: the broker stops, and
//! recovery at the next start finds the log as a kill -9 would leave it. A mapping the kernel
//! refuses (`vm.max_map_count`: each read in flight holds one) makes the read copy instead.
//!
//! Never: map for a read that hands out uncommitted bytes (replication, compaction): a
//! follower's truncation could remove them under a payload still being sent.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use bytes::Bytes;

/// Reads smaller than this are copied (`pread`): for a few pages a mapping's two system calls
/// and its unmap (which flushes the TLB of every core running the broker) cost more than the
/// copy.
pub const MAP_MIN_BYTES: usize = 64 << 10;

/// Held shared while a mapped read looks at headers, exclusively while the file shrinks.
#[derive(Debug, Clone, Default)]
pub struct ShrinkGate(Arc<RwLock<()>>);

impl ShrinkGate {
    pub fn reading(&self) -> RwLockReadGuard<'_, ()> {
        self.0.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn shrinking(&self) -> RwLockWriteGuard<'_, ()> {
        self.0.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// `len` bytes of `file` from `position` (which must be within the file, as must be
/// `position + len`), mapped read-only and shared: the page cache's own pages.
#[allow(unsafe_code)]
pub fn map(file: &File, position: u64, len: usize) -> io::Result<Bytes> {
    if len == 0 {
        return Ok(Bytes::new());
    }
    let page = page_size();
    let start = position / page * page;
    let skip = (position - start) as usize;
    let offset = libc::off_t::try_from(start)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "map position past off_t"))?;
    let map_len = skip + len;
    // SAFETY: a new mapping at an address the kernel picks, of a file we hold open; it aliases
    // no Rust object. MAP_POPULATE maps the pages the page cache holds now, so reading them
    // later takes no page fault.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            map_len,
            libc::PROT_READ,
            libc::MAP_SHARED | libc::MAP_POPULATE,
            file.as_raw_fd(),
            offset,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(Bytes::from_owner(Mapping { ptr: ptr.cast::<u8>().cast_const(), len: map_len }).slice(skip..))
}

/// The system's page size, asked once.
fn page_size() -> u64 {
    static PAGE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *PAGE.get_or_init(|| {
        // SAFETY: sysconf only reads a system constant.
        #[allow(unsafe_code)]
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        u64::try_from(page).ok().filter(|p| *p > 0).unwrap_or(4096)
    })
}

/// One mapping, unmapped when dropped.
struct Mapping {
    ptr: *const u8,
    len: usize,
}

// SAFETY: the mapping is read-only and owned by this value alone; the pages it shows may be
// read from any thread.
#[allow(unsafe_code)]
unsafe impl Send for Mapping {}
#[allow(unsafe_code)]
unsafe impl Sync for Mapping {}

impl AsRef<[u8]> for Mapping {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `ptr` is a live mapping of `len` readable bytes until `drop`; the module's
        // invariants keep every page of it that is read within the file.
        #[allow(unsafe_code)]
        unsafe {
            std::slice::from_raw_parts(self.ptr, self.len)
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, unmapped once; no slice of it outlives its owner.
        #[allow(unsafe_code)]
        unsafe {
            libc::munmap(self.ptr.cast_mut().cast::<libc::c_void>(), self.len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A mapping shows the file's bytes from any position, page-aligned or not, and lives as
    /// long as a slice of it, after the file is closed and unlinked.
    #[test]
    fn a_mapping_shows_the_files_bytes_and_outlives_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seg");
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::File::create(&path).unwrap().write_all(&data).unwrap();
        let file = File::open(&path).unwrap();
        for (pos, len) in [(0usize, 1usize), (1, 4095), (4095, 2), (4096, 4096), (12_345, 200_000), (299_999, 1)] {
            let bytes = map(&file, pos as u64, len).unwrap();
            assert_eq!(&bytes[..], &data[pos..pos + len], "at {pos}, {len} bytes");
        }
        let kept = map(&file, 70_000, 100_000).unwrap().slice(10..20);
        drop(file);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(&kept[..], &data[70_010..70_020]);
        assert!(map(&File::open(dir.path()).unwrap(), 0, 10).is_err(), "a directory cannot be mapped");
    }
}
