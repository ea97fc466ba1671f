//! Concurrency limits per Exchange server and per account, account-wide pauses after
//! `ErrorServerBusy`, and jittered exponential back-off that honours the server's
//! `BackOffMilliseconds` / `Retry-After`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Per-server and per-account semaphores (EWSMaxConcurrency is charged per account; with
/// impersonation Exchange charges the impersonated mailbox, so the account key is the mailbox).
///
/// Exchange charges an `ErrorServerBusy` back-off to the account's budget, not to the one
/// request: anything else that account sends during it is refused again and lengthens the
/// wait. So a throttled answer pauses the whole account ([`Limiter::pause`]); every request of
/// that account, whichever folder or mailbox task sends it, waits the pause out before it goes.
#[derive(Debug)]
pub struct Limiter {
    server: Arc<Semaphore>,
    per_account: usize,
    accounts: Mutex<HashMap<String, Arc<Account>>>,
}

/// Every value behind these locks is whole after each statement, so a poisoned lock is still
/// safe to use.
fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn permit(s: &Arc<Semaphore>) -> OwnedSemaphorePermit {
    // The limiter never closes its semaphores, so acquiring cannot fail.
    s.clone()
        .acquire_owned()
        .await
        .unwrap_or_else(|_| unreachable!("limiter semaphores are never closed"))
}

#[derive(Debug)]
struct Account {
    permits: Arc<Semaphore>,
    paused_until: Mutex<Option<Instant>>,
}

impl Account {
    /// When the account may send again, if that is still in the future.
    fn pause_left(&self) -> Option<Instant> {
        let until = *locked(&self.paused_until);
        until.filter(|u| *u > Instant::now())
    }
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
    /// A pause is checked once the account permit is held and again once the server permit
    /// is: a pause that began while this request queued for a server slot still holds it back,
    /// and it never sits on a server slot while its account is paused.
    pub async fn acquire(&self, account: &str) -> Permits {
        let acc = self.account(account);
        let account_permit = permit(&acc.permits).await;
        loop {
            while let Some(until) = acc.pause_left() {
                tokio::time::sleep_until(until).await;
            }
            let server_permit = permit(&self.server).await;
            if acc.pause_left().is_none() {
                return Permits {
                    _account: account_permit,
                    _server: server_permit,
                };
            }
        }
    }

    /// Holds back every request of `account` for `back_off` from now (a longer pause already
    /// set is kept). Call it before the permits of the throttled request are released, so no
    /// request of the account slips in between the answer and the pause.
    pub fn pause(&self, account: &str, back_off: Duration) {
        let acc = self.account(account);
        let until = Instant::now() + back_off;
        let mut p = locked(&acc.paused_until);
        if p.is_none_or(|old| old < until) {
            *p = Some(until);
        }
    }

    fn account(&self, account: &str) -> Arc<Account> {
        let mut map = locked(&self.accounts);
        map.entry(account.to_ascii_lowercase())
            .or_insert_with(|| {
                Arc::new(Account {
                    permits: Arc::new(Semaphore::new(self.per_account)),
                    paused_until: Mutex::new(None),
                })
            })
            .clone()
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

    #[tokio::test(start_paused = true)]
    async fn a_pause_holds_back_every_request_of_the_account_only() {
        let l = Arc::new(Limiter::new(4, 4));
        let start = Instant::now();
        l.pause("A", Duration::from_millis(250));
        // Another account is not held back.
        drop(l.acquire("b").await);
        assert_eq!(start.elapsed(), Duration::ZERO);
        drop(l.acquire("a").await);
        assert!(start.elapsed() >= Duration::from_millis(250));
        // A shorter pause does not cut a longer one short.
        let t = Instant::now();
        l.pause("a", Duration::from_millis(500));
        l.pause("a", Duration::from_millis(10));
        drop(l.acquire("a").await);
        assert!(t.elapsed() >= Duration::from_millis(500));
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_set_while_queued_for_a_server_slot_still_applies() {
        let l = Arc::new(Limiter::new(1, 2));
        let held = l.acquire("other").await;
        let l2 = l.clone();
        let queued = tokio::spawn(async move {
            let _p = l2.acquire("a").await;
            Instant::now()
        });
        // Let it take the account permit and queue for the server slot.
        tokio::task::yield_now().await;
        let paused_at = Instant::now();
        l.pause("a", Duration::from_millis(300));
        drop(held);
        let sent = queued.await.expect("join");
        assert!(sent >= paused_at + Duration::from_millis(300));
    }
}
