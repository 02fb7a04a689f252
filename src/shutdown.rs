//! One shutdown signal shared by every service, and a tracker of live connections so that a
//! graceful stop can wait for in-flight requests (up to a bound).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, watch};

/// Fires the shutdown signal.
#[derive(Debug)]
pub struct ShutdownTrigger {
    sender: watch::Sender<bool>,
}

/// Observes the shutdown signal. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Shutdown {
    receiver: watch::Receiver<bool>,
}

pub fn channel() -> (ShutdownTrigger, Shutdown) {
    let (sender, receiver) = watch::channel(false);
    (ShutdownTrigger { sender }, Shutdown { receiver })
}

impl ShutdownTrigger {
    pub fn trigger(&self) {
        let _ = self.sender.send(true);
    }

    pub fn subscribe(&self) -> Shutdown {
        Shutdown {
            receiver: self.sender.subscribe(),
        }
    }
}

impl Shutdown {
    /// A signal that never fires, for callers that stop by dropping tasks.
    pub fn never() -> Self {
        let (sender, receiver) = watch::channel(false);
        // Keep the sender alive forever so `changed()` never errors out as "closed".
        std::mem::forget(sender);
        Self { receiver }
    }

    pub fn is_triggered(&self) -> bool {
        *self.receiver.borrow()
    }

    /// Resolves once shutdown is triggered (immediately if it already was). A dropped trigger
    /// counts as a shutdown.
    pub async fn wait(&mut self) {
        let _ = self.receiver.wait_for(|stop| *stop).await;
    }
}

/// Counts live connections; [`Tracker::wait_idle`] waits until none is left.
#[derive(Debug, Clone, Default)]
pub struct Tracker {
    inner: Arc<TrackerInner>,
}

#[derive(Debug, Default)]
struct TrackerInner {
    live: AtomicUsize,
    idle: Notify,
}

/// Held by a connection task while it runs.
#[derive(Debug)]
pub struct TrackerGuard {
    inner: Arc<TrackerInner>,
}

impl Tracker {
    pub fn enter(&self) -> TrackerGuard {
        self.inner.live.fetch_add(1, Ordering::SeqCst);
        TrackerGuard {
            inner: self.inner.clone(),
        }
    }

    pub fn live(&self) -> usize {
        self.inner.live.load(Ordering::SeqCst)
    }

    /// Waits until no connection is live, or `bound` passes; returns whether it became idle.
    pub async fn wait_idle(&self, bound: Duration) -> bool {
        let wait = async {
            loop {
                let notified = self.inner.idle.notified();
                if self.live() == 0 {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(bound, wait).await.is_ok()
    }
}

impl Drop for TrackerGuard {
    fn drop(&mut self) {
        if self.inner.live.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.inner.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wait_resolves_after_trigger_and_for_late_subscribers() {
        let (trigger, mut shutdown) = channel();
        assert!(!shutdown.is_triggered());
        trigger.trigger();
        shutdown.wait().await;
        let mut late = trigger.subscribe();
        late.wait().await;
        assert!(late.is_triggered());
    }

    #[tokio::test]
    async fn tracker_waits_for_guards() {
        let tracker = Tracker::default();
        let guard = tracker.enter();
        assert!(!tracker.wait_idle(Duration::from_millis(20)).await);
        let t = tracker.clone();
        let waiter = tokio::spawn(async move { t.wait_idle(Duration::from_secs(5)).await });
        drop(guard);
        assert!(waiter.await.unwrap());
        assert_eq!(tracker.live(), 0);
    }
}
