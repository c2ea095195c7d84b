//! A real small filesystem for full-disk tests: a tmpfs of a given size, mounted for the
//! test's life (lazily unmounted on drop, so a broker still holding files does not keep it).
//! Mounting needs root (as on CI); a test that cannot mount fails with that reason, unless
//! `TIDELOG_SKIP_DISK_FULL` is set ([`skip_disk_full`]).

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` (`mount -o size=`, e.g. "6m") on `dir`, created if missing.
    pub fn mount(dir: &Path, size: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .unwrap_or_else(|e| panic!("cannot run mount: {e}"));
        assert!(
            out.status.success(),
            "cannot mount tmpfs (need root; or set TIDELOG_SKIP_DISK_FULL=1): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self(dir.to_path_buf())
    }

    /// Grows (or shrinks) the mounted filesystem to `size`, keeping its files.
    pub fn resize(&self, size: &str) {
        let status = Command::new("mount").args(["-o", &format!("remount,size={size}")]).arg(&self.0).status().unwrap();
        assert!(status.success(), "remount of {} failed", self.0.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Whether to skip a full-disk test knowingly (`TIDELOG_SKIP_DISK_FULL` set: a machine
/// without permission to mount).
pub fn skip_disk_full() -> bool {
    let skip = std::env::var_os("TIDELOG_SKIP_DISK_FULL").is_some();
    if skip {
        eprintln!("skipped: TIDELOG_SKIP_DISK_FULL is set");
    }
    skip
}
