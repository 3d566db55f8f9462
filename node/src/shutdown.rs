//! The one shutdown primitive of a node: a [`Trigger`] raised once, and any number of [`Shutdown`]
//! handles that every long-lived task takes and waits on (mini-redis's `Shutdown`, on a `watch`).
//!
//! The node has one for the whole process; the listener manager makes one per listener (stop
//! accepting) and the HTTP proxy one per listener for the forced close after the grace period.

use tokio::sync::watch;

/// Raises the signal; dropping it also releases every waiter (nobody could raise it any more).
#[derive(Debug)]
pub struct Trigger(watch::Sender<bool>);

/// Waits for the signal. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

/// A new signal, not raised.
pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (Trigger(tx), Shutdown(rx))
}

impl Trigger {
    /// Raise the signal (idempotent).
    pub fn trigger(&self) {
        self.0.send_replace(true);
    }

    /// Another handle on this signal.
    pub fn subscribe(&self) -> Shutdown {
        Shutdown(self.0.subscribe())
    }
}

impl Shutdown {
    /// Resolves once the signal is (or becomes) raised, or its trigger is gone.
    pub async fn wait(&mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn waiters_wake_on_trigger_and_when_the_trigger_is_dropped() {
        let (t, mut s) = channel();
        let mut other = t.subscribe();
        let early = tokio::time::timeout(std::time::Duration::from_secs(60), s.wait()).await;
        assert!(early.is_err(), "nothing may wake before the trigger");
        t.trigger();
        s.wait().await;
        other.wait().await;
        let (t, mut s) = channel();
        drop(t);
        s.wait().await;
    }
}
