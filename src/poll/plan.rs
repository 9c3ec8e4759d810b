//! Which tags each poll group polls, and how fast it may poll them.
//!
//! Each station tag goes to the FIRST poll group (in file order) whose globs
//! match it, so no tag is read twice per cycle. The rate budget is shared:
//! when the groups together would need more requests per second than the
//! rate limit leaves (after the alarm poll's share), every group slows by
//! the same factor instead of some groups starving.

use std::sync::Arc;
use std::time::Duration;

use crate::config::{PollMode, Settings};
use crate::glob::TagPatterns;
use crate::model::TagInfo;

use super::diff::ChangeRules;

/// Share of the rate limit left to polling after the alarm poll; the rest
/// is headroom for logins, discovery and writes.
pub const POLL_SHARE: f64 = 0.9;

/// A poll group as the poller runs it.
#[derive(Debug, Clone)]
pub struct GroupSpec {
    pub name: Arc<str>,
    pub patterns: TagPatterns,
    pub interval: Duration,
    pub rules: ChangeRules,
    /// `poll`, or `subscribe`: subscribe where the station can, and poll
    /// (on `interval`) whenever there is no subscription.
    pub mode: PollMode,
}

impl GroupSpec {
    /// Every poll group of the settings, in file order (subscribe groups
    /// too: they are polled while they have no subscription). A glob that
    /// does not compile (config validation rejects those) is logged and
    /// left out.
    pub fn from_settings(settings: &Settings) -> Vec<GroupSpec> {
        let mut out = Vec::new();
        for g in &settings.poll_groups {
            let mut good = Vec::new();
            for p in &g.tags {
                match TagPatterns::new(std::slice::from_ref(p)) {
                    Ok(_) => good.push(p.clone()),
                    Err(e) => tracing::error!(group = %g.name, error = %e, "glob ignored"),
                }
            }
            let patterns = TagPatterns::new(&good).expect("each pattern compiled alone");
            out.push(GroupSpec {
                name: Arc::from(g.name.as_str()),
                patterns,
                interval: Duration::from_millis(g.interval_ms.max(1)),
                rules: ChangeRules::from_group(g),
                mode: g.mode,
            });
        }
        out
    }
}

/// The result of matching the station's tags against the groups.
#[derive(Debug, Default)]
pub struct Resolution {
    /// Per group (same order as the specs), its tags sorted by name.
    pub per_group: Vec<Vec<TagInfo>>,
    /// `(group, pattern)` for every pattern that matched no station tag.
    pub unmatched: Vec<(Arc<str>, String)>,
    /// Tags matched by more than one group (polled by the first only).
    pub overlaps: usize,
}

/// Assigns each tag to the first group that matches it.
pub fn resolve(groups: &[GroupSpec], tags: &[TagInfo]) -> Resolution {
    let mut per_group: Vec<Vec<TagInfo>> = vec![Vec::new(); groups.len()];
    let mut hits: Vec<Vec<bool>> = groups
        .iter()
        .map(|g| vec![false; g.patterns.patterns().len()])
        .collect();
    let mut overlaps = 0;
    for t in tags {
        let mut owner = None;
        for (gi, g) in groups.iter().enumerate() {
            let m = g.patterns.matching(&t.name);
            if m.is_empty() {
                continue;
            }
            for pi in m {
                hits[gi][pi] = true;
            }
            if owner.is_none() {
                owner = Some(gi);
            } else {
                overlaps += 1;
            }
        }
        if let Some(gi) = owner {
            per_group[gi].push(t.clone());
        }
    }
    for list in &mut per_group {
        list.sort_by(|a, b| a.name.cmp(&b.name));
        list.dedup_by(|a, b| a.name == b.name);
    }
    let mut unmatched = Vec::new();
    for (gi, g) in groups.iter().enumerate() {
        for (pi, p) in g.patterns.patterns().iter().enumerate() {
            if !hits[gi][pi] {
                unmatched.push((g.name.clone(), p.clone()));
            }
        }
    }
    Resolution {
        per_group,
        unmatched,
        overlaps,
    }
}

/// Requests one cycle of `tags` tags needs with `batch` tags per request.
pub fn requests_per_cycle(tags: usize, batch: usize) -> usize {
    tags.div_ceil(batch.max(1))
}

/// The factor (>= 1) by which every group's interval is stretched so that
/// all groups together stay within `rps` (less the alarm poll's share).
/// `load` is `(requests per cycle, interval)` per group.
pub fn slowdown(load: &[(usize, Duration)], rps: f64, reserved_rps: f64) -> f64 {
    let demand: f64 = load
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, t)| *n as f64 / t.as_secs_f64().max(1e-3))
        .sum();
    let available = ((rps - reserved_rps) * POLL_SHARE).max(rps * 0.1).max(1e-3);
    (demand / available).max(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TagType;

    fn spec(name: &str, globs: &[&str]) -> GroupSpec {
        GroupSpec {
            name: name.into(),
            patterns: TagPatterns::new(globs).unwrap(),
            interval: Duration::from_secs(1),
            rules: ChangeRules {
                deadband_abs: 0.0,
                deadband_pct: 0.0,
                heartbeat: None,
            },
            mode: PollMode::Poll,
        }
    }

    fn tag(n: &str) -> TagInfo {
        TagInfo {
            name: n.into(),
            ty: TagType::Double,
            writable: false,
        }
    }

    #[test]
    fn first_group_wins_and_unmatched_globs_are_reported() {
        let groups = [spec("fast", &["Line1/*", "Nope/**"]), spec("slow", &["**"])];
        let tags = [
            tag("Line1/B"),
            tag("Line1/A"),
            tag("Line1/Sub/C"),
            tag("Mixer.Speed"),
        ];
        let r = resolve(&groups, &tags);
        let names = |v: &Vec<TagInfo>| v.iter().map(|t| t.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&r.per_group[0]), ["Line1/A", "Line1/B"]);
        assert_eq!(names(&r.per_group[1]), ["Line1/Sub/C", "Mixer.Speed"]);
        assert_eq!(r.overlaps, 2);
        assert_eq!(
            r.unmatched,
            vec![(Arc::from("fast"), "Nope/**".to_string())]
        );
    }

    #[test]
    fn subscribe_groups_are_kept_so_their_tags_are_read() {
        use crate::config::{PollGroup, WinccSettings};
        let group = |name: &str, mode| PollGroup {
            name: name.into(),
            interval_ms: 250,
            tags: vec!["Line1/**".into()],
            deadband_abs: 0.0,
            deadband_pct: 0.0,
            heartbeat_s: 0,
            mode,
        };
        let settings = Settings {
            wincc: WinccSettings::default(),
            poll_groups: vec![
                group("sub", PollMode::Subscribe),
                group("poll", PollMode::Poll),
            ],
            alarms: Default::default(),
            mqtt: Default::default(),
            opcua: Default::default(),
            sparkplug: Default::default(),
            http: Default::default(),
            log: Default::default(),
        };
        let specs = GroupSpec::from_settings(&settings);
        let modes: Vec<_> = specs.iter().map(|g| (&*g.name, g.mode)).collect();
        assert_eq!(
            modes,
            [("sub", PollMode::Subscribe), ("poll", PollMode::Poll)]
        );
        assert_eq!(specs[0].interval, Duration::from_millis(250));
        let r = resolve(&specs, &[tag("Line1/A")]);
        assert_eq!(r.per_group[0].len(), 1, "the subscribe group owns the tag");
    }

    #[test]
    fn slowdown_is_even_and_only_when_needed() {
        assert_eq!(requests_per_cycle(1001, 500), 3);
        assert_eq!(requests_per_cycle(0, 500), 0);
        // 2 groups × 5 req / 1 s = 10 req/s; 20 rps × 0.9 = 18 available.
        let load = [(5, Duration::from_secs(1)), (5, Duration::from_secs(1))];
        assert_eq!(slowdown(&load, 20.0, 0.0), 1.0);
        // 40 req/s wanted from 18: stretch by 40/18.
        let load = [
            (20, Duration::from_secs(1)),
            (10, Duration::from_millis(500)),
        ];
        let f = slowdown(&load, 20.0, 0.0);
        assert!((f - 40.0 / 18.0).abs() < 1e-9, "{f}");
        // The alarm poll's share is taken off first.
        let f = slowdown(&[(9, Duration::from_secs(1))], 11.0, 1.0);
        assert!((f - 1.0).abs() < 1e-9, "{f}");
        assert!(slowdown(&[(10, Duration::from_secs(1))], 11.0, 1.0) > 1.0);
    }
}
