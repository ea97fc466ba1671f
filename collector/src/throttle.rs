//! Concurrency limits per Exchange server and per account, and jittered exponential back-off
//! that honours the server's `BackOffMilliseconds` / `Retry-After`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Per-server and per-account semaphores (EWSMaxConcurrency is charged per account; with
/// impersonation Exchange charges the impersonated mailbox, so the account key is the mailbox).
#[derive(Debug)]
pub struct Limiter {
    server: Arc<Semaphore>,
    per_account: usize,
    accounts: Mutex<HashMap<String, Arc<Semaphore>>>,
}

/// Both permits; dropping releases them.
#[derive(Debug)]
pub struct Permits {
    _account: OwnedSemaphorePermit,
    _server: OwnedSemaphorePermit,
}

impl Limiter {
    pub fn new(per_server: usize, per_account: usize) -> Self {
        Self {
            server: Arc::new(Semaphore::new(per_server.max(1))),
            per_account: per_account.max(1),
            accounts: Mutex::new(HashMap::new()),
        }
    }

    /// Waits for an account permit, then a server permit (account first, so one busy account
    /// cannot hold server slots while it waits for itself).
    pub async fn acquire(&self, account: &str) -> Permits {
        let acc = {
            let mut map = self
                .accounts
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            map.entry(account.to_ascii_lowercase())
                .or_insert_with(|| Arc::new(Semaphore::new(self.per_account)))
                .clone()
        };
        // The semaphores are never closed, so acquire cannot fail.
        let account_permit = acc
            .acquire_owned()
            .await
            .unwrap_or_else(|_| unreachable!("limiter semaphores are never closed"));
        let server_permit = self
            .server
            .clone()
            .acquire_owned()
            .await
            .unwrap_or_else(|_| unreachable!("limiter semaphores are never closed"));
        Permits {
            _account: account_permit,
            _server: server_permit,
        }
    }

    /// Free server slots (for tests and status).
    pub fn server_available(&self) -> usize {
        self.server.available_permits()
    }
}

/// Retry policy: full-jitter exponential back-off, never shorter than the server's hint.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
    pub max_retries: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(500),
            max: Duration::from_secs(120),
            max_retries: 8,
        }
    }
}

impl Backoff {
    /// Delay before retry number `attempt` (0-based). `hint` is what the server asked for.
    pub fn delay(&self, attempt: u32, hint: Option<Duration>) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX))
            .min(self.max);
        let half = exp / 2;
        let jitter = rand::random_range(0..=half.as_millis().max(1) as u64);
        let ours = half + Duration::from_millis(jitter);
        match hint {
            // Honour the server's value, plus a little jitter so clients do not return in step.
            Some(h) => {
                h + Duration::from_millis(rand::random_range(
                    0..=self.base.as_millis().max(1) as u64 / 4,
                ))
            }
            None => ours,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_honours_hint() {
        let b = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(2),
            max_retries: 5,
        };
        for attempt in 0..30 {
            let d = b.delay(attempt, None);
            assert!(d <= Duration::from_secs(2), "attempt {attempt}: {d:?}");
            let exp = (100u64 << attempt.min(20)).min(2000);
            assert!(
                d >= Duration::from_millis(exp / 2),
                "attempt {attempt}: {d:?}"
            );
        }
        let hint = Duration::from_millis(7000);
        let d = b.delay(0, Some(hint));
        assert!(d >= hint && d <= hint + Duration::from_millis(25));
    }

    #[tokio::test]
    async fn limiter_bounds_per_account_and_server() {
        let l = Arc::new(Limiter::new(3, 2));
        let a1 = l.acquire("a").await;
        let _a2 = l.acquire("A").await;
        // Third permit for "a" must wait; "b" still gets one.
        let l2 = l.clone();
        let waiting = tokio::spawn(async move { l2.acquire("a").await });
        let _b1 = l.acquire("b").await;
        assert_eq!(l.server_available(), 0);
        assert!(!waiting.is_finished());
        drop(a1);
        let _a3 = waiting.await.expect("join");
    }
}
