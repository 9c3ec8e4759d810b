//! The one rate limiter in front of a station (contract §2 `[wincc.rate_limit]`,
//! §7 "every station request counts").
//!
//! Every request a station client makes — login, browse, reads, writes,
//! alarm polls — first takes a [`Permit`]: a slot of the in-flight semaphore
//! (`max_in_flight`) and then a token of the GCRA rate limiter
//! (`requests_per_second`, bucket `burst`). The slot is taken first so that a
//! token is only drawn right before the request goes out; drawing tokens and
//! then queueing on the semaphore would let delayed requests bunch up and
//! exceed the rate. A `Retry-After` from the station pauses every request
//! until the given instant ([`Limiter::pause_for`]).
//!
//! Writes have a deadline (`wincc.write_timeout_ms`, contract §7): while a
//! write runs, [`WRITE_DEADLINE`] holds the instant by which its requests
//! must have their permit; [`Limiter::acquire_by`] refuses a request that
//! cannot get one in time (at once when a `Retry-After` pause outlasts the
//! deadline), so a write is never sent late.
//!
//! Each time a request has to wait, `wincc_gateway_rate_limit_waits_total`
//! counts it, labelled with what it waited for (`in_flight`, `rate`,
//! `retry_after`).

use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;

use governor::clock::Clock;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::Instant;

use crate::config::RateLimit;
use crate::wincc::StationError;

tokio::task_local! {
    /// The instant by which the requests of the write running in this task
    /// must have their permit (set by the station monitor around writes).
    pub static WRITE_DEADLINE: Instant;
}

/// Longest pause a single `Retry-After` may impose (a hostile or broken
/// header must not silence the gateway for days).
pub const MAX_PAUSE: Duration = Duration::from_secs(600);

/// Shared by every request to one station.
pub struct Limiter {
    rate: DefaultDirectRateLimiter,
    in_flight: Semaphore,
    paused_until: Mutex<Option<Instant>>,
    requests_per_second: u32,
    burst: u32,
    max_in_flight: u32,
}

/// Held while one request is in flight; dropping it frees the slot.
pub struct Permit<'a> {
    _slot: SemaphorePermit<'a>,
}

impl Limiter {
    /// A limiter for the given settings; zeros (rejected by config
    /// validation) are raised to 1.
    pub fn new(settings: &RateLimit) -> Self {
        let rps = NonZeroU32::new(settings.requests_per_second.max(1)).expect("max(1)");
        let burst = NonZeroU32::new(settings.burst.max(1)).expect("max(1)");
        let max_in_flight = settings.max_in_flight.max(1);
        Limiter {
            rate: RateLimiter::direct(Quota::per_second(rps).allow_burst(burst)),
            in_flight: Semaphore::new(max_in_flight as usize),
            paused_until: Mutex::new(None),
            requests_per_second: rps.get(),
            burst: burst.get(),
            max_in_flight,
        }
    }

    /// The steady rate in requests per second.
    pub fn requests_per_second(&self) -> u32 {
        self.requests_per_second
    }

    /// The bucket size.
    pub fn burst(&self) -> u32 {
        self.burst
    }

    /// How many requests may be in flight at once.
    pub fn max_in_flight(&self) -> u32 {
        self.max_in_flight
    }

    /// Waits until a request may be sent: no pause in force, a free
    /// in-flight slot and a rate token. Cancel-safe.
    pub async fn acquire(&self) -> Permit<'_> {
        self.wait_pause().await;
        let slot = match self.in_flight.try_acquire() {
            Ok(s) => s,
            Err(_) => {
                count_wait("in_flight");
                self.in_flight
                    .acquire()
                    .await
                    .expect("the semaphore is never closed")
            }
        };
        // governor's own `until_ready` sleeps on futures-timer's helper
        // thread (a thread wake-up per waiting request); the tokio timer
        // wheel is already running on the workers.
        let mut counted = false;
        while let Err(not_until) = self.rate.check() {
            if !counted {
                count_wait("rate");
                counted = true;
            }
            let wait = not_until.wait_time_from(self.rate.clock().now());
            tokio::time::sleep(wait.max(Duration::from_micros(100))).await;
        }
        // A Retry-After may have arrived while we queued: honour it too.
        self.wait_pause().await;
        Permit { _slot: slot }
    }

    /// [`acquire`](Self::acquire), but refused when no permit can be had by
    /// `deadline` (`None`: waits as long as it takes). The refusal says why.
    pub async fn acquire_by(&self, deadline: Option<Instant>) -> Result<Permit<'_>, StationError> {
        let Some(deadline) = deadline else {
            return Ok(self.acquire().await);
        };
        let refused = |why: String| StationError::Refused {
            code: "write_deadline".into(),
            message: format!("not sent: {why} (wincc.write_timeout_ms)"),
        };
        if let Some(until) = self.paused_until().filter(|u| *u > deadline) {
            metrics::counter!("wincc_gateway_write_deadline_refusals_total").increment(1);
            return Err(refused(format!(
                "the station asked to pause all requests for {:.0} s more (Retry-After), longer than the write may wait",
                (until - Instant::now()).as_secs_f64().ceil()
            )));
        }
        match tokio::time::timeout_at(deadline, self.acquire()).await {
            Ok(p) => Ok(p),
            Err(_) => {
                metrics::counter!("wincc_gateway_write_deadline_refusals_total").increment(1);
                Err(refused(
                    "no rate-limit permit within the write deadline (rate limit, requests in flight or a Retry-After pause)".into(),
                ))
            }
        }
    }

    /// Pauses every request until `now + d` (never shortens a pause already
    /// in force; capped at [`MAX_PAUSE`]).
    pub fn pause_for(&self, d: Duration) {
        let until = Instant::now() + d.min(MAX_PAUSE);
        let mut p = self.paused_until.lock().unwrap_or_else(|e| e.into_inner());
        if p.is_none_or(|old| old < until) {
            *p = Some(until);
        }
    }

    /// When requests may flow again, if a pause is in force.
    pub fn paused_until(&self) -> Option<Instant> {
        let p = *self.paused_until.lock().unwrap_or_else(|e| e.into_inner());
        p.filter(|u| *u > Instant::now())
    }

    async fn wait_pause(&self) {
        let mut counted = false;
        while let Some(until) = self.paused_until() {
            if !counted {
                count_wait("retry_after");
                counted = true;
            }
            tokio::time::sleep_until(until).await;
        }
    }
}

fn count_wait(reason: &'static str) {
    metrics::counter!("wincc_gateway_rate_limit_waits_total", "reason" => reason).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    fn limiter(rps: u32, burst: u32, in_flight: u32) -> Arc<Limiter> {
        Arc::new(Limiter::new(&RateLimit {
            requests_per_second: rps,
            burst,
            max_in_flight: in_flight,
        }))
    }

    #[tokio::test]
    async fn burst_then_steady_rate() {
        let l = limiter(50, 3, 10);
        let start = std::time::Instant::now();
        for _ in 0..3 {
            assert!(l.rate.check().is_ok(), "the burst is available at once");
        }
        for _ in 0..5 {
            drop(l.acquire().await);
        }
        let total = start.elapsed();
        // 5 more at 50/s: one every 20 ms, so at least ~80 ms in all.
        assert!(total >= Duration::from_millis(80), "{total:?}");
    }

    #[tokio::test]
    async fn in_flight_is_bounded() {
        let l = limiter(1000, 1000, 2);
        let now = Arc::new(AtomicUsize::new(0));
        let max = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..10 {
            let (l, now, max) = (l.clone(), now.clone(), max.clone());
            tasks.push(tokio::spawn(async move {
                let _p = l.acquire().await;
                let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                max.fetch_max(n, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
                now.fetch_sub(1, Ordering::SeqCst);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(max.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_write_that_cannot_get_a_permit_in_time_is_refused_not_sent_late() {
        let l = limiter(1000, 1000, 1);
        l.pause_for(Duration::from_secs(600));
        let start = Instant::now();
        let e = l
            .acquire_by(Some(start + Duration::from_millis(200)))
            .await
            .err()
            .expect("refused");
        assert!(e.to_string().contains("Retry-After"), "{e}");
        assert!(
            start.elapsed() < Duration::from_millis(100),
            "refused at once"
        );
        // Without a pause, but with the only slot taken: refused at the deadline.
        let l = limiter(1000, 1000, 1);
        let held = l.acquire().await;
        let e = l
            .acquire_by(Some(Instant::now() + Duration::from_millis(50)))
            .await
            .err()
            .expect("refused");
        assert!(e.to_string().contains("within the write deadline"), "{e}");
        drop(held);
        assert!(l
            .acquire_by(Some(Instant::now() + Duration::from_millis(50)))
            .await
            .is_ok());
    }

    #[tokio::test]
    async fn a_pause_holds_every_request_and_never_shrinks() {
        let l = limiter(1000, 1000, 4);
        l.pause_for(Duration::from_millis(80));
        l.pause_for(Duration::from_millis(10));
        let start = std::time::Instant::now();
        drop(l.acquire().await);
        assert!(start.elapsed() >= Duration::from_millis(75));
        assert!(l.paused_until().is_none());
    }
}
