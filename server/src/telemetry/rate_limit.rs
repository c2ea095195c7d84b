//! Log volume stays bounded under any fault: at most [`BURST`] warnings or errors from one
//! place in the code (a tracing callsite) per [`WINDOW`]; the rest are counted, and the count
//! is logged when the window ends and that place logs again. A saturated cluster whose Raft
//! heartbeats fail used to write the same warning thousands of times a second.
//!
//! Never: drop INFO and below (they are filtered by `RUST_LOG`, and rare), or hold the lock
//! while writing.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use tracing::callsite::Identifier;
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata};
use tracing_subscriber::layer::{Context, Filter};

/// Warnings and errors one callsite may log per window.
pub const BURST: u32 = 10;
/// The window.
pub const WINDOW: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct Window {
    start: Instant,
    logged: u32,
    suppressed: u64,
}

/// A per-layer filter: see the module docs.
#[derive(Debug, Default)]
pub struct RateLimit {
    windows: Mutex<HashMap<Identifier, Window>>,
}

/// What to say about a callsite's suppressed events, if anything.
enum Note {
    None,
    Starts,
    Ended(u64),
}

impl RateLimit {
    /// Whether this event is logged; says so on stderr when a callsite starts or stops being
    /// suppressed.
    fn allow(&self, meta: &Metadata<'_>) -> bool {
        let now = Instant::now();
        let (allow, note) = {
            let mut windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
            let w = windows.entry(meta.callsite()).or_insert(Window { start: now, logged: 0, suppressed: 0 });
            let mut note = Note::None;
            if now.duration_since(w.start) >= WINDOW {
                if w.suppressed > 0 {
                    note = Note::Ended(w.suppressed);
                }
                *w = Window { start: now, logged: 0, suppressed: 0 };
            }
            if w.logged < BURST {
                w.logged += 1;
                (true, note)
            } else {
                w.suppressed += 1;
                (false, if w.suppressed == 1 { Note::Starts } else { note })
            }
        };
        let place = format!("{} ({}:{})", meta.target(), meta.file().unwrap_or("?"), meta.line().unwrap_or(0));
        match note {
            Note::None => {}
            Note::Starts => eprintln!(
                "{} tidelog: more than {BURST} messages in {WINDOW:?} from {place}; the rest of this window are counted, not logged",
                meta.level()
            ),
            Note::Ended(n) => eprintln!("{} tidelog: {n} messages from {place} were not logged (rate limit)", meta.level()),
        }
        allow
    }
}

impl<S> Filter<S> for RateLimit {
    fn enabled(&self, _meta: &Metadata<'_>, _cx: &Context<'_, S>) -> bool {
        true
    }

    fn callsite_enabled(&self, meta: &'static Metadata<'static>) -> Interest {
        if meta.is_event() && *meta.level() <= Level::WARN {
            Interest::sometimes()
        } else {
            Interest::always()
        }
    }

    fn event_enabled(&self, event: &Event<'_>, _cx: &Context<'_, S>) -> bool {
        let meta = event.metadata();
        *meta.level() > Level::WARN || self.allow(meta)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::Arc;

    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::Layer;

    use super::*;

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap_or_else(PoisonError::into_inner).extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_repeated_warning_is_logged_at_most_burst_times_and_other_places_and_info_are_not_limited() {
        let out = Lines::default();
        let writer = out.clone();
        let layer = tracing_subscriber::fmt::layer()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_filter(RateLimit::default());
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            for i in 0..1000 {
                tracing::warn!(i, "the same place, over and over");
            }
            for i in 0..3 {
                tracing::warn!(i, "another place");
            }
            for i in 0..50 {
                tracing::info!(i, "info is not limited");
            }
        });
        let text = String::from_utf8(out.0.lock().unwrap_or_else(PoisonError::into_inner).clone()).unwrap_or_default();
        assert_eq!(text.matches("over and over").count(), BURST as usize, "{text}");
        assert_eq!(text.matches("another place").count(), 3);
        assert_eq!(text.matches("info is not limited").count(), 50);
    }
}
