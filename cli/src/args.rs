//! Argument types shared by several subcommands.

use tidelog::proto::v1::FsyncPolicy;
use tidelog_server::topic_config::FsyncSetting;

/// A topic's fsync policy on the command line (`always`, `interval`, `never`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FsyncArg {
    /// fsync before acknowledging each batch.
    Always,
    /// fsync every `fsync_interval_ms` in the background.
    Interval,
    /// Never fsync explicitly.
    Never,
}

impl From<FsyncArg> for FsyncSetting {
    fn from(f: FsyncArg) -> Self {
        match f {
            FsyncArg::Always => Self::Always,
            FsyncArg::Interval => Self::Interval,
            FsyncArg::Never => Self::Never,
        }
    }
}

impl From<FsyncArg> for FsyncPolicy {
    fn from(f: FsyncArg) -> Self {
        FsyncSetting::from(f).into()
    }
}
