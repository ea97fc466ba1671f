//! How every service stops: the first SIGTERM or SIGINT starts a drain (the service finishes
//! and acknowledges what it holds), and the process exits within a bound whatever its
//! dependencies do. A second signal, or the drain outliving its deadline, ends the process at
//! once: whatever it had not acknowledged is redelivered by JetStream to the next consumer,
//! which is the same outcome as a crash and never a loss.

use std::time::Duration;

/// Exit status when a second signal cut the drain short (128 + SIGINT, as shells report).
pub const EXIT_SECOND_SIGNAL: i32 = 130;
/// Exit status when the drain outlived its deadline.
pub const EXIT_DRAIN_DEADLINE: i32 = 124;

/// Waits for SIGTERM or SIGINT; returns which one. Pending forever where neither can be had.
pub async fn signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = tokio::signal::ctrl_c() => "SIGINT",
            },
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                "SIGINT"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "SIGINT"
    }
}

/// Spawns the signal watcher of `component`: on the first signal `drain` is called (cancel a
/// token, send on a channel), then the process exits with [`EXIT_SECOND_SIGNAL`] on a second
/// signal or with [`EXIT_DRAIN_DEADLINE`] once `deadline` has passed, if it is still running.
pub fn on_signals(
    component: &'static str,
    deadline: Duration,
    drain: impl FnOnce() + Send + 'static,
) {
    tokio::spawn(async move {
        let first = signal().await;
        tracing::info!(
            component,
            signal = first,
            deadline_s = deadline.as_secs_f64(),
            then = "draining; a second signal exits at once",
            "shutdown requested"
        );
        drain();
        tokio::select! {
            second = signal() => {
                tracing::warn!(
                    component,
                    signal = second,
                    "second signal: exiting now; unacknowledged messages are redelivered"
                );
                std::process::exit(EXIT_SECOND_SIGNAL);
            }
            () = tokio::time::sleep(deadline) => {
                tracing::error!(
                    component,
                    deadline_s = deadline.as_secs_f64(),
                    "drain outlived its deadline (a dependency is gone or stuck): exiting now; \
                     unacknowledged messages are redelivered"
                );
                std::process::exit(EXIT_DRAIN_DEADLINE);
            }
        }
    });
}
