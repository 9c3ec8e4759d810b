//! Fault switches of the simulated station (`GET/POST /_sim/faults`):
//! latency, random 500s, a burst of 429s, expired tokens, malformed or
//! truncated bodies, a runtime that answers 503, a full outage, and a hung
//! station (connections accepted, requests never answered).

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Deserializer, Serialize};

/// The fault switches. Setting them replaces all of them; `Faults::default()`
/// means no fault.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Every station request waits this long before it is handled.
    pub latency_ms: u64,
    /// Fraction (0..=1) of station requests answered 500.
    pub error_rate: f64,
    /// The next `count` station requests get 429 with `Retry-After`.
    pub too_many_requests: Option<TooManyRequests>,
    /// One shot: every session token expires now.
    pub expire_tokens: bool,
    /// The next N read answers (tags, values, alarms, users) are invalid JSON.
    /// JSON `true` means every read until the faults are reset.
    #[serde(deserialize_with = "count_or_bool")]
    pub malformed_body: u32,
    /// The next N read answers are cut off halfway: the connection closes
    /// before the announced `Content-Length` was sent. `true`: until reset.
    #[serde(deserialize_with = "count_or_bool")]
    pub truncated_body: u32,
    /// Full outage for this many seconds: the listener is closed (new
    /// connections are refused), open connections are dropped, then the
    /// same port is bound again. 0 ends an outage that is going on.
    pub outage_s: f64,
    /// The runtime is stopped: every station request gets 503.
    pub unavailable: bool,
    /// A hung station (an IIS that stopped answering): connections are
    /// accepted, every station request is held unanswered (for
    /// [`HANG`]), so a client only ever sees its own timeout.
    pub hang: bool,
    /// wincc-v7 quirk: the next N batch reads leave out every second row
    /// (the 2nd, 4th, ... name asked for). `true`: until reset.
    #[serde(deserialize_with = "count_or_bool")]
    pub drop_rows: u32,
    /// wincc-v7 quirk: the next N batch reads answer 200 with an empty body.
    /// `true`: until reset.
    #[serde(deserialize_with = "count_or_bool")]
    pub empty_body: u32,
    /// wincc-v7 quirk: row keys in varying case (`VariableName`, `QUALITYCODE`, ...).
    pub mixed_key_case: bool,
    /// wincc-v7 quirk: every value is sent as a JSON string (`"21.5"`, `"true"`).
    pub values_as_strings: bool,
    /// wincc-v7 quirk: a batch read of at least `slow_batch_min_names`
    /// names waits this much longer (large batches timing out in the field).
    pub slow_batch_ms: u64,
    /// See `slow_batch_ms`.
    pub slow_batch_min_names: usize,
}

/// How long a request is held while `hang` is set (far beyond any client
/// timeout; the request then fails as it is answered 503).
pub const HANG: Duration = Duration::from_secs(600);

/// The wincc-v7 quirks that apply to one batch read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchQuirks {
    pub drop_rows: bool,
    pub empty_body: bool,
    pub mixed_key_case: bool,
    pub values_as_strings: bool,
    pub delay: Duration,
}

/// A burst of 429 answers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TooManyRequests {
    pub count: u32,
    pub retry_after_s: u64,
}

fn count_or_bool<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum CountOrBool {
        Bool(bool),
        Count(u32),
    }
    Ok(match CountOrBool::deserialize(d)? {
        CountOrBool::Bool(true) => u32::MAX,
        CountOrBool::Bool(false) => 0,
        CountOrBool::Count(n) => n,
    })
}

impl Faults {
    /// Checks the switches; the error says which one is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.error_rate) {
            return Err(format!(
                "error_rate must be within 0..=1, got {}",
                self.error_rate
            ));
        }
        if !(0.0..=3600.0).contains(&self.outage_s) {
            return Err(format!(
                "outage_s must be within 0..=3600, got {}",
                self.outage_s
            ));
        }
        if self.slow_batch_ms > 600_000 {
            return Err(format!(
                "slow_batch_ms must be at most 600000, got {}",
                self.slow_batch_ms
            ));
        }
        if self.latency_ms > 600_000 {
            return Err(format!(
                "latency_ms must be at most 600000, got {}",
                self.latency_ms
            ));
        }
        Ok(())
    }

    /// The outage duration, if one is asked for.
    pub fn outage(&self) -> Option<Duration> {
        (self.outage_s > 0.0).then(|| Duration::from_secs_f64(self.outage_s))
    }
}

/// How a request is refused before it reaches its handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// 503: the runtime is stopped.
    Unavailable,
    /// 429 with `Retry-After`.
    TooMany { retry_after_s: u64 },
    /// 500.
    ServerError,
}

/// How a read answer's body is spoiled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFault {
    Malformed,
    Truncated,
}

/// The current switches plus the seeded random source for `error_rate`.
#[derive(Debug)]
pub struct FaultState {
    faults: Faults,
    rng: StdRng,
}

impl FaultState {
    pub fn new(seed: u64) -> Self {
        FaultState {
            faults: Faults::default(),
            rng: StdRng::seed_from_u64(seed ^ 0x6661_756c_7473),
        }
    }

    /// The switches as they stand (one-shots already applied read as off).
    pub fn get(&self) -> Faults {
        self.faults.clone()
    }

    /// Replaces the switches. The one-shot `expire_tokens` is left for the
    /// caller to apply and reads back as `false`.
    pub fn set(&mut self, mut faults: Faults) -> Result<(), String> {
        faults.validate()?;
        faults.expire_tokens = false;
        self.faults = faults;
        Ok(())
    }

    /// Called when an outage has ended by itself.
    pub fn outage_over(&mut self) {
        self.faults.outage_s = 0.0;
    }

    /// Decides, for one station request, the latency and whether it is refused.
    pub fn before_request(&mut self) -> (Duration, Option<Refusal>) {
        if self.faults.hang {
            return (HANG, Some(Refusal::Unavailable));
        }
        let latency = Duration::from_millis(self.faults.latency_ms);
        let f = &mut self.faults;
        let refusal = if f.unavailable {
            Some(Refusal::Unavailable)
        } else if let Some(tm) = f.too_many_requests.as_mut().filter(|t| t.count > 0) {
            tm.count -= 1;
            let retry_after_s = tm.retry_after_s;
            if tm.count == 0 {
                f.too_many_requests = None;
            }
            Some(Refusal::TooMany { retry_after_s })
        } else if f.error_rate > 0.0 && self.rng.random_bool(f.error_rate) {
            Some(Refusal::ServerError)
        } else {
            None
        };
        (latency, refusal)
    }

    /// The wincc-v7 quirks for one batch read of `names` names; counted
    /// switches run down by one.
    pub fn batch_quirks(&mut self, names: usize) -> BatchQuirks {
        let f = &mut self.faults;
        let take = |n: &mut u32| {
            let on = *n > 0;
            if on && *n != u32::MAX {
                *n -= 1;
            }
            on
        };
        let empty_body = take(&mut f.empty_body);
        let drop_rows = !empty_body && take(&mut f.drop_rows);
        let slow = f.slow_batch_ms > 0 && names >= f.slow_batch_min_names;
        BatchQuirks {
            drop_rows,
            empty_body,
            mixed_key_case: f.mixed_key_case,
            values_as_strings: f.values_as_strings,
            delay: Duration::from_millis(if slow { f.slow_batch_ms } else { 0 }),
        }
    }

    /// Whether the body of a successful read answer is to be spoiled.
    pub fn body_fault(&mut self) -> Option<BodyFault> {
        let f = &mut self.faults;
        if f.malformed_body > 0 {
            if f.malformed_body != u32::MAX {
                f.malformed_body -= 1;
            }
            Some(BodyFault::Malformed)
        } else if f.truncated_body > 0 {
            if f.truncated_body != u32::MAX {
                f.truncated_body -= 1;
            }
            Some(BodyFault::Truncated)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_counts_and_bools_and_rejects_unknown_switches() {
        let f: Faults =
            serde_json::from_str(r#"{"malformed_body":true,"truncated_body":2}"#).unwrap();
        assert_eq!(f.malformed_body, u32::MAX);
        assert_eq!(f.truncated_body, 2);
        assert!(serde_json::from_str::<Faults>(r#"{"latency":5}"#).is_err());
        let f: Faults = serde_json::from_str(r#"{"error_rate":1.5}"#).unwrap();
        assert!(f.validate().is_err());
    }

    #[test]
    fn one_shot_and_counted_faults_run_out() {
        let mut s = FaultState::new(1);
        s.set(Faults {
            too_many_requests: Some(TooManyRequests {
                count: 2,
                retry_after_s: 3,
            }),
            truncated_body: 1,
            expire_tokens: true,
            ..Faults::default()
        })
        .unwrap();
        assert!(!s.get().expire_tokens);
        assert_eq!(
            s.before_request().1,
            Some(Refusal::TooMany { retry_after_s: 3 })
        );
        assert_eq!(
            s.before_request().1,
            Some(Refusal::TooMany { retry_after_s: 3 })
        );
        assert_eq!(s.before_request().1, None);
        assert_eq!(s.get().too_many_requests, None);
        assert_eq!(s.body_fault(), Some(BodyFault::Truncated));
        assert_eq!(s.body_fault(), None);
    }

    #[test]
    fn a_hung_station_holds_every_request_far_beyond_any_timeout() {
        let mut s = FaultState::new(3);
        let f: Faults = serde_json::from_str(r#"{"hang":true}"#).unwrap();
        s.set(f).unwrap();
        let (latency, refusal) = s.before_request();
        assert!(latency >= Duration::from_secs(600));
        assert_eq!(refusal, Some(Refusal::Unavailable));
        s.set(Faults::default()).unwrap();
        assert_eq!(s.before_request(), (Duration::ZERO, None));
    }

    #[test]
    fn error_rate_is_roughly_honoured() {
        let mut s = FaultState::new(2);
        s.set(Faults {
            error_rate: 0.25,
            ..Faults::default()
        })
        .unwrap();
        let errors = (0..4000).filter(|_| s.before_request().1.is_some()).count();
        assert!((800..1200).contains(&errors), "{errors}");
    }
}
