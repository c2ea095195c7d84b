//! The cleaner's I/O throttle: a token bucket over bytes read, so a cleaning does not starve
//! produce and consume of disk bandwidth. The cleaner runs on a blocking thread, so waiting is
//! a thread sleep.

use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Throttle {
    /// Bytes per second; `None` = unthrottled.
    rate: Option<u64>,
    start: Instant,
    consumed: u64,
}

impl Throttle {
    pub fn new(rate: Option<u64>) -> Self {
        Self { rate: rate.filter(|r| *r > 0), start: Instant::now(), consumed: 0 }
    }

    /// Counts `bytes`; sleeps while the average since the start is above the rate.
    pub fn consume(&mut self, bytes: u64) {
        let Some(rate) = self.rate else { return };
        self.consumed += bytes;
        let due = Duration::from_secs_f64(self.consumed as f64 / rate as f64);
        let elapsed = self.start.elapsed();
        if due > elapsed {
            std::thread::sleep(due - elapsed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_the_average_rate() {
        let mut t = Throttle::new(Some(1_000_000));
        let start = Instant::now();
        for _ in 0..10 {
            t.consume(10_000);
        }
        // 100 kB at 1 MB/s: about 100 ms.
        assert!(start.elapsed() >= Duration::from_millis(95), "{:?}", start.elapsed());
        let mut free = Throttle::new(None);
        free.consume(u64::MAX / 2);
    }
}
