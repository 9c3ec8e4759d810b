//! Request statistics of the simulated station (`GET /_sim/stats`): counts
//! per endpoint, the highest rate in any one-second window (exact sliding
//! window over arrival times), the highest concurrency, and status counts.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// A snapshot of the statistics, as served by `GET /_sim/stats`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SimStats {
    /// Station requests received (everything except `/_sim/*`).
    pub total_requests: u64,
    /// Requests per endpoint, keyed like `"POST /tags/values"`.
    pub requests: BTreeMap<String, u64>,
    /// Tag names asked for in reads (batch and single).
    pub tags_read: u64,
    /// Tag values accepted by writes.
    pub tags_written: u64,
    /// Successful logins.
    pub logins: u64,
    /// Refused logins.
    pub login_failures: u64,
    /// Most requests that arrived within any one second.
    pub max_requests_per_second: u64,
    /// Requests being handled right now.
    pub in_flight: u64,
    /// Highest number of requests handled at the same time.
    pub max_in_flight: u64,
    /// Answers with status 401.
    pub unauthorized: u64,
    /// Answers with status 429.
    pub too_many_requests: u64,
    /// Answers with status 500.
    pub server_errors: u64,
    /// Answers with status 503.
    pub unavailable: u64,
    /// Answers per HTTP status code.
    pub statuses: BTreeMap<String, u64>,
}

#[derive(Debug, Default)]
struct Inner {
    total: u64,
    per_endpoint: HashMap<&'static str, u64>,
    tags_read: u64,
    tags_written: u64,
    logins: u64,
    login_failures: u64,
    window: VecDeque<Instant>,
    max_rate: u64,
    statuses: BTreeMap<u16, u64>,
}

/// Live counters; cheap to update from every request.
#[derive(Debug, Default)]
pub struct Stats {
    inner: Mutex<Inner>,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
}

/// Held while a request is being handled; counts it as in flight.
#[derive(Debug)]
pub struct InFlight<'a> {
    stats: &'a Stats,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.stats.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

const WINDOW: Duration = Duration::from_secs(1);

impl Stats {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a request arriving now at `endpoint`; it stays in flight until
    /// the guard is dropped.
    pub fn begin(&self, endpoint: &'static str) -> InFlight<'_> {
        let now = Instant::now();
        {
            let mut g = self.lock();
            g.total += 1;
            *g.per_endpoint.entry(endpoint).or_default() += 1;
            // Every window of one second that holds the most arrivals can be
            // slid to end at an arrival, so checking at each arrival is exact.
            while g
                .window
                .front()
                .is_some_and(|t| now.duration_since(*t) >= WINDOW)
            {
                g.window.pop_front();
            }
            g.window.push_back(now);
            let n = g.window.len() as u64;
            g.max_rate = g.max_rate.max(n);
        }
        let cur = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(cur, Ordering::SeqCst);
        InFlight { stats: self }
    }

    /// Counts the status of an answer.
    pub fn status(&self, status: u16) {
        *self.lock().statuses.entry(status).or_default() += 1;
    }

    pub fn tags_read(&self, n: usize) {
        self.lock().tags_read += n as u64;
    }

    pub fn tags_written(&self, n: usize) {
        self.lock().tags_written += n as u64;
    }

    pub fn login(&self, ok: bool) {
        let mut g = self.lock();
        if ok {
            g.logins += 1;
        } else {
            g.login_failures += 1;
        }
    }

    /// Starts counting afresh (requests in flight stay in flight).
    pub fn reset(&self) {
        *self.lock() = Inner::default();
        self.max_in_flight
            .store(self.in_flight.load(Ordering::SeqCst), Ordering::SeqCst);
    }

    pub fn snapshot(&self) -> SimStats {
        let g = self.lock();
        let status = |s: u16| g.statuses.get(&s).copied().unwrap_or(0);
        SimStats {
            total_requests: g.total,
            requests: g
                .per_endpoint
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            tags_read: g.tags_read,
            tags_written: g.tags_written,
            logins: g.logins,
            login_failures: g.login_failures,
            max_requests_per_second: g.max_rate,
            in_flight: self.in_flight.load(Ordering::SeqCst),
            max_in_flight: self.max_in_flight.load(Ordering::SeqCst),
            unauthorized: status(401),
            too_many_requests: status(429),
            server_errors: status(500),
            unavailable: status(503),
            statuses: g
                .statuses
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_endpoints_rate_and_concurrency() {
        let s = Stats::default();
        {
            let _a = s.begin("GET /tags");
            let _b = s.begin("POST /tags/values");
            let _c = s.begin("POST /tags/values");
            assert_eq!(s.snapshot().in_flight, 3);
        }
        s.status(401);
        s.status(200);
        s.tags_read(500);
        let snap = s.snapshot();
        assert_eq!(snap.total_requests, 3);
        assert_eq!(snap.requests["POST /tags/values"], 2);
        assert_eq!(snap.max_in_flight, 3);
        assert_eq!(snap.in_flight, 0);
        assert_eq!(snap.max_requests_per_second, 3);
        assert_eq!(snap.unauthorized, 1);
        assert_eq!(snap.statuses["200"], 1);
        assert_eq!(snap.tags_read, 500);
        s.reset();
        assert_eq!(s.snapshot(), SimStats::default());
    }

    #[test]
    fn the_window_forgets_arrivals_older_than_a_second() {
        let s = Stats::default();
        drop(s.begin("a"));
        drop(s.begin("a"));
        std::thread::sleep(Duration::from_millis(1050));
        drop(s.begin("a"));
        let snap = s.snapshot();
        assert_eq!(snap.max_requests_per_second, 2);
        assert_eq!(snap.total_requests, 3);
    }
}
