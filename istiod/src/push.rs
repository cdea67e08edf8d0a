//! The push queue's debounce, as istiod's: after a config event, wait until
//! no new event has come for `quiet` (Istio `PILOT_DEBOUNCE_AFTER`, 100 ms),
//! but no longer than `max` after the first (`PILOT_DEBOUNCE_MAX`, 10 s);
//! then everything that arrived is merged into one push.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};

/// Debounce timing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DebounceConfig {
    /// Quiet period after the last event.
    pub quiet: Duration,
    /// Longest delay after the first event.
    pub max: Duration,
}

impl Default for DebounceConfig {
    fn default() -> Self {
        DebounceConfig {
            quiet: Duration::from_millis(100),
            max: Duration::from_secs(10),
        }
    }
}

/// Merges bursts of events from a channel.
#[derive(Debug)]
pub struct Debouncer {
    events: mpsc::Receiver<()>,
    config: DebounceConfig,
    closed: bool,
}

impl Debouncer {
    /// Debounces `events` with `config`.
    pub fn new(events: mpsc::Receiver<()>, config: DebounceConfig) -> Self {
        Debouncer {
            events,
            config,
            closed: false,
        }
    }

    /// Waits for the next burst to settle; returns how many events it
    /// merged and when the first came, or `None` once the channel is closed
    /// and drained.
    pub async fn next(&mut self) -> Option<(usize, Instant)> {
        if self.closed {
            return None;
        }
        self.events.recv().await?;
        let start = Instant::now();
        let mut last = start;
        let mut merged = 1;
        loop {
            let deadline = (last + self.config.quiet).min(start + self.config.max);
            tokio::select! {
                ev = self.events.recv() => match ev {
                    Some(()) => {
                        merged += 1;
                        last = Instant::now();
                    }
                    None => {
                        self.closed = true;
                        return Some((merged, start));
                    }
                },
                _ = sleep_until(deadline) => return Some((merged, start)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn merges_a_burst_after_the_quiet_period() {
        let (tx, rx) = mpsc::channel(16);
        let mut d = Debouncer::new(rx, DebounceConfig::default());
        let start = Instant::now();
        tokio::spawn(async move {
            for _ in 0..5 {
                tx.send(()).await.unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // keep the sender alive past the quiet period
            tokio::time::sleep(Duration::from_secs(60)).await;
        });
        assert_eq!(d.next().await.map(|(n, _)| n), Some(5));
        // last event at 200 ms, then 100 ms of quiet
        assert_eq!(start.elapsed(), Duration::from_millis(300));
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_stream_still_fires_at_max() {
        let (tx, rx) = mpsc::channel(16);
        let mut d = Debouncer::new(rx, DebounceConfig::default());
        let start = Instant::now();
        tokio::spawn(async move {
            loop {
                if tx.send(()).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        let (merged, first) = d.next().await.unwrap();
        assert_eq!(first, start);
        assert_eq!(start.elapsed(), Duration::from_secs(10));
        assert!(merged >= 200, "merged {merged}");
    }

    #[tokio::test(start_paused = true)]
    async fn closed_channel_ends() {
        let (tx, rx) = mpsc::channel(16);
        let mut d = Debouncer::new(rx, DebounceConfig::default());
        tx.send(()).await.unwrap();
        drop(tx);
        assert_eq!(d.next().await.map(|(n, _)| n), Some(1));
        assert_eq!(d.next().await, None);
    }
}
