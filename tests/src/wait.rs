//! The one wait helper: poll a condition until it holds or a deadline passes.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};

/// Time between two probes of [`wait_until`].
pub const POLL: Duration = Duration::from_millis(50);

/// Probe until `probe` returns `Ok`, every [`POLL`], and return its value; after `timeout`, fail with an
/// error naming `what` and the last observation (the last probe's error, so a probe should say what it
/// saw: `ensure!(n == 4, "{n} in flight")`).
///
/// The first probe runs at once. A probe still running when the deadline passes may finish (and succeed).
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let deadline = Instant::now() + timeout;
    let mut last = anyhow!("never probed");
    loop {
        match probe().await {
            Ok(v) => return Ok(v),
            Err(e) => last = e,
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}; last seen: {last:#}");
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::ensure;

    #[tokio::test]
    async fn returns_the_value_once_the_condition_holds() {
        let mut n = 0;
        let got = wait_until("three probes", Duration::from_secs(10), || {
            n += 1;
            let seen = n;
            async move {
                ensure!(seen >= 3, "probe {seen}");
                Ok(seen)
            }
        })
        .await
        .unwrap();
        assert_eq!(got, 3);
    }

    #[tokio::test]
    async fn a_timeout_names_what_was_awaited_and_the_last_observation() {
        let mut probes = 0;
        let e = wait_until("a fourth probe", Duration::from_millis(120), || {
            probes += 1;
            let seen = probes.min(3);
            async move {
                ensure!(seen > 3, "probe {seen}");
                Ok(())
            }
        })
        .await
        .unwrap_err()
        .to_string();
        assert_eq!(e, "timed out after 120ms waiting for a fourth probe; last seen: probe 3");
    }
}
