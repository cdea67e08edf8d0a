//! The push queue's debounce, as istiod's: after a config event, wait until
//! no new event has come for `quiet` (Istio `PILOT_DEBOUNCE_AFTER`, 100 ms),
//! but no longer than `max` after the first (`PILOT_DEBOUNCE_MAX`, 10 s);
//! then everything that arrived is merged into one push. The next
//! snapshot is prepared while the burst settles
//! ([`Debouncer::next_prepared`]).

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

/// A settled burst of events, from [`Debouncer::next_prepared`].
#[derive(Debug, PartialEq, Eq)]
pub struct Burst<T> {
    /// How many events it merged.
    pub merged: usize,
    /// When the first of them came.
    pub first: Instant,
    /// What the preparation gave, begun after the burst's last event.
    pub prepared: T,
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
        self.next_prepared(|| std::future::ready(()))
            .await
            .map(|b| (b.merged, b.first))
    }

    /// As [`Debouncer::next`], and runs `prepare` (the daemon reads the
    /// source and builds the next snapshot) while the burst settles, so
    /// that its result is ready when the debounce fires rather than begun
    /// then.
    ///
    /// A preparation begins a third of `quiet` before the debounce would
    /// fire (33 ms at the default). An event that comes after it began
    /// makes it stale, and another begins a third of `quiet` before the new
    /// deadline, so what is returned always began after the burst's last
    /// event, as if it had begun when the debounce fired. At most one runs
    /// at a time; one that outlasts the rest of the quiet period is waited
    /// for, so a burst is never returned earlier than [`Debouncer::next`]
    /// would return it. Past `max`, events are left in the channel for the
    /// next burst, so that a steady stream cannot keep every preparation
    /// stale. `None` once the channel is closed and drained.
    pub async fn next_prepared<T, F, Fut>(&mut self, mut prepare: F) -> Option<Burst<T>>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = T>,
    {
        if self.closed {
            return None;
        }
        self.events.recv().await?;
        let start = Instant::now();
        let mut last = start;
        let mut merged = 1;
        let lead = self.config.quiet / 3;
        // The preparation running, and the events merged when it began.
        let mut running: Option<(usize, std::pin::Pin<Box<Fut>>)> = None;
        // The last one done, and the events merged when it began.
        let mut done: Option<(usize, T)> = None;
        loop {
            // Past `max` no more events are taken into this burst: those
            // that come wait in the channel for the next one.
            let now = Instant::now();
            let capped = self.closed || now >= start + self.config.max;
            let deadline = if capped {
                now
            } else {
                (last + self.config.quiet).min(start + self.config.max)
            };
            let begin = deadline.checked_sub(lead).unwrap_or(deadline).max(last);
            let fresh = matches!(&done, Some((m, _)) if *m == merged);
            let idle = running.is_none();
            if fresh && idle && deadline <= now {
                return done.map(|(_, prepared)| Burst {
                    merged,
                    first: start,
                    prepared,
                });
            }
            let finished = async {
                match running.as_mut() {
                    Some((_, p)) => Some(p.as_mut().await),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                ev = self.events.recv(), if !capped => match ev {
                    Some(()) => {
                        merged += 1;
                        last = Instant::now();
                    }
                    None => self.closed = true,
                },
                out = finished => {
                    if let (Some((m, _)), Some(out)) = (running.take(), out) {
                        done = Some((m, out));
                    }
                }
                _ = sleep_until(begin), if idle && !fresh => {
                    running = Some((merged, Box::pin(prepare())));
                }
                _ = sleep_until(deadline), if idle && fresh => {}
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

    /// Counts the preparations `next_prepared` begins, each giving when it
    /// began, after taking `takes`.
    fn preparations(
        takes: Duration,
    ) -> (
        std::sync::Arc<std::sync::atomic::AtomicUsize>,
        impl FnMut() -> std::pin::Pin<Box<dyn std::future::Future<Output = Instant>>>,
    ) {
        let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = count.clone();
        let prepare = move || {
            counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let began = Instant::now();
            Box::pin(async move {
                tokio::time::sleep(takes).await;
                began
            }) as std::pin::Pin<Box<dyn std::future::Future<Output = Instant>>>
        };
        (count, prepare)
    }

    #[tokio::test(start_paused = true)]
    async fn the_next_snapshot_is_prepared_before_the_debounce_fires() {
        let (tx, rx) = mpsc::channel(16);
        let mut d = Debouncer::new(rx, DebounceConfig::default());
        let (count, prepare) = preparations(Duration::from_millis(10));
        let start = Instant::now();
        tx.send(()).await.unwrap();
        let burst = d.next_prepared(prepare).await.unwrap();
        // Begun a third of the quiet period before it ends (the timer
        // rounds up to the millisecond), done by then, and returned when
        // the debounce fires, not a preparation later.
        let quiet = Duration::from_millis(100);
        assert_eq!(burst.prepared - start, Duration::from_millis(67));
        assert_eq!(start.elapsed(), quiet);
        assert_eq!((burst.merged, burst.first), (1, start));
        assert_eq!(count.load(std::sync::atomic::Ordering::Relaxed), 1);
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn an_event_after_a_preparation_began_makes_it_stale() {
        let (tx, rx) = mpsc::channel(16);
        let mut d = Debouncer::new(rx, DebounceConfig::default());
        let (count, prepare) = preparations(Duration::from_millis(5));
        let start = Instant::now();
        tokio::spawn(async move {
            tx.send(()).await.unwrap();
            // After the first preparation began (at ~67 ms).
            tokio::time::sleep(Duration::from_millis(80)).await;
            tx.send(()).await.unwrap();
            tokio::time::sleep(Duration::from_secs(60)).await;
        });
        let burst = d.next_prepared(prepare).await.unwrap();
        assert_eq!(burst.merged, 2);
        assert_eq!(count.load(std::sync::atomic::Ordering::Relaxed), 2);
        // What is given began after the last event.
        assert!(burst.prepared >= start + Duration::from_millis(80));
        assert_eq!(start.elapsed(), Duration::from_millis(180));
    }

    #[tokio::test(start_paused = true)]
    async fn a_preparation_longer_than_the_lead_is_waited_for() {
        let (tx, rx) = mpsc::channel(16);
        let mut d = Debouncer::new(rx, DebounceConfig::default());
        let (count, prepare) = preparations(Duration::from_millis(50));
        let start = Instant::now();
        tx.send(()).await.unwrap();
        let burst = d.next_prepared(prepare).await.unwrap();
        assert_eq!(burst.prepared - start, Duration::from_millis(67));
        assert_eq!(start.elapsed(), Duration::from_millis(67 + 50));
        assert_eq!(count.load(std::sync::atomic::Ordering::Relaxed), 1);
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn past_max_events_wait_for_the_next_burst() {
        let (tx, rx) = mpsc::channel(1);
        let mut d = Debouncer::new(rx, DebounceConfig::default());
        // Each preparation outlasts the gap between events: without the
        // cap every one would be stale before it was done.
        let (_, prepare) = preparations(Duration::from_millis(30));
        let start = Instant::now();
        tokio::spawn(async move {
            loop {
                if tx.send(()).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        // Without the cap, every preparation would be stale and this
        // would never return.
        let burst = tokio::time::timeout(Duration::from_secs(11), d.next_prepared(prepare))
            .await
            .expect("a burst returned soon after max")
            .unwrap();
        let max = Duration::from_secs(10);
        // Prepared once the cap was reached, from everything taken in.
        assert!(
            burst.prepared >= start + max,
            "{:?}",
            burst.prepared - start
        );
        assert!(start.elapsed() <= max + Duration::from_millis(60));
        assert!(burst.merged <= 1001, "merged {}", burst.merged);
        // What came after the cap starts the next burst at once.
        let (_, next) = preparations(Duration::ZERO);
        let second = d.next_prepared(next).await.unwrap();
        assert!(second.first <= start + max + Duration::from_millis(60));
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
