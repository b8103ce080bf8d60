//! When a pipeline runs on its own (PLATFORM P3): `[trigger]` and `[retry]` of
//! `pipeline.toml`, checked at deploy, and the cron arithmetic the scheduler needs (which
//! slots are due, which of them a catch-up runs, when the next one is).
//!
//! ```toml
//! [trigger]
//! schedule = "*/15 * * * *"      # cron: 5 fields, or 6 with seconds first
//! timezone = "Europe/Berlin"     # IANA name; UTC when absent
//! catchup = "latest"             # missed slots: latest | all | none
//! on_upstream_change = true      # also run when a source table moved
//! poll_interval_secs = 30
//! max_concurrent_runs = 1        # a slot due while this many run is skipped_overlap
//!
//! [retry]
//! retries = 2                    # extra attempts per failed model
//! backoff_secs = 10              # doubled each attempt, with jitter, up to max_backoff_secs
//! max_backoff_secs = 600
//! ```

use std::time::Duration;

use chrono::{DateTime, Utc};
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

const DEFAULT_POLL_SECS: u64 = 30;
const MAX_RETRIES: u32 = 10;

/// `[trigger]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TriggerDef {
    /// A cron pattern: 5 fields (minute hour day-of-month month day-of-week), or 6 with
    /// seconds first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// The IANA time zone the pattern is read in (`Europe/Berlin`); UTC when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// What happens to slots missed while no replica led (or the pipeline was paused for
    /// them, which never catches up): run them `all` (in order, at most
    /// `[scheduler] max_catchup_runs`), only the `latest`, or `none`.
    #[serde(default)]
    pub catchup: Catchup,
    /// Run when a table the pipeline reads has moved past what its models consumed.
    #[serde(default)]
    pub on_upstream_change: bool,
    /// How often the leader looks at the sources' versions (`on_upstream_change`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poll_interval_secs: Option<u64>,
    /// Runs of this pipeline at once (default 1); a slot due beyond it is recorded as
    /// `skipped_overlap`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent_runs: Option<u32>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Catchup {
    #[default]
    Latest,
    All,
    None,
}

/// `[retry]`: a failed model is tried again (its own commits are atomic, so a retry starts
/// from its watermarks) before its downstream models are marked `upstream_failed`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryDef {
    /// Extra attempts per model (0..=10).
    #[serde(default)]
    pub retries: u32,
    /// The wait before the first retry; doubled each attempt, jittered by ±25%.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_secs: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_backoff_secs: Option<f64>,
}

impl RetryDef {
    pub(crate) fn check(&self) -> Result<()> {
        if self.retries > MAX_RETRIES {
            return Err(Error::invalid(format!(
                "[retry] retries = {} is above {MAX_RETRIES}",
                self.retries
            )));
        }
        for (name, v) in [
            ("backoff_secs", self.backoff_secs),
            ("max_backoff_secs", self.max_backoff_secs),
        ] {
            if let Some(v) = v
                && !(0.0..=86_400.0).contains(&v)
            {
                return Err(Error::invalid(format!(
                    "[retry] {name} = {v} must lie in 0..=86400"
                )));
            }
        }
        Ok(())
    }

    /// The wait before attempt `attempt` (2 = the first retry), `jitter` in [0, 1).
    pub(crate) fn backoff(&self, attempt: u32, jitter: f64) -> Duration {
        let base = self.backoff_secs.unwrap_or(10.0);
        let cap = self.max_backoff_secs.unwrap_or(600.0).max(base);
        let exp = base * 2f64.powi(i32::try_from(attempt.saturating_sub(2)).unwrap_or(30));
        let secs = exp.min(cap) * (0.75 + 0.5 * jitter.clamp(0.0, 1.0));
        Duration::from_secs_f64(secs.clamp(0.0, 86_400.0))
    }
}

/// A parsed `[trigger] schedule`.
#[derive(Debug, Clone)]
pub(crate) struct Schedule {
    cron: Cron,
    tz: chrono_tz::Tz,
}

impl TriggerDef {
    pub(crate) fn check(&self) -> Result<()> {
        self.schedule()?;
        if self.timezone.is_some() && self.schedule.is_none() {
            return Err(Error::invalid(
                "[trigger] timezone needs a schedule to apply to",
            ));
        }
        if self.poll_interval_secs == Some(0) {
            return Err(Error::invalid(
                "[trigger] poll_interval_secs must be at least 1",
            ));
        }
        if self.max_concurrent_runs == Some(0) {
            return Err(Error::invalid(
                "[trigger] max_concurrent_runs must be at least 1",
            ));
        }
        Ok(())
    }

    /// The schedule, when the pipeline has one.
    pub(crate) fn schedule(&self) -> Result<Option<Schedule>> {
        let Some(pattern) = &self.schedule else {
            return Ok(None);
        };
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build()
            .parse(pattern)
            .map_err(|e| {
                Error::invalid(format!(
                    "[trigger] schedule = {pattern:?} is not a cron pattern (5 fields, or 6 with seconds first): {e}"
                ))
            })?;
        let tz = match &self.timezone {
            None => chrono_tz::UTC,
            Some(name) => name.parse().map_err(|_| {
                Error::invalid(format!(
                    "[trigger] timezone = {name:?} is not an IANA time zone (e.g. \"Europe/Berlin\", \"UTC\")"
                ))
            })?,
        };
        Ok(Some(Schedule { cron, tz }))
    }

    pub(crate) fn poll_interval(&self) -> Duration {
        Duration::from_secs(self.poll_interval_secs.unwrap_or(DEFAULT_POLL_SECS).max(1))
    }

    pub(crate) fn max_concurrent_runs(&self) -> usize {
        self.max_concurrent_runs.unwrap_or(1).max(1) as usize
    }
}

impl Schedule {
    /// The first slot after `t`.
    pub(crate) fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_next_occurrence(&t.with_timezone(&self.tz), false)
            .ok()
            .map(|s| s.with_timezone(&Utc))
    }

    /// The slots in `(after, upto]`, oldest first, at most the newest `max` of them, and
    /// whether older ones were left out.
    pub(crate) fn due(
        &self,
        after: DateTime<Utc>,
        upto: DateTime<Utc>,
        max: usize,
    ) -> (Vec<DateTime<Utc>>, bool) {
        let mut out = Vec::new();
        let mut t = upto.with_timezone(&self.tz);
        let mut inclusive = true;
        let mut more = false;
        while let Ok(prev) = self.cron.find_previous_occurrence(&t, inclusive) {
            if prev.with_timezone(&Utc) <= after {
                break;
            }
            if out.len() == max {
                more = true;
                break;
            }
            out.push(prev.with_timezone(&Utc));
            t = prev;
            inclusive = false;
        }
        out.reverse();
        (out, more)
    }
}

/// Which of the due slots a catch-up claims (oldest first). `late` is how long after its
/// time a slot still counts as on time (not missed) for `catchup = "none"`.
pub(crate) fn to_claim(
    catchup: Catchup,
    due: &[DateTime<Utc>],
    now: DateTime<Utc>,
    late: chrono::Duration,
) -> Vec<DateTime<Utc>> {
    match (catchup, due.last()) {
        (_, None) => Vec::new(),
        (Catchup::All, _) => due.to_vec(),
        (Catchup::Latest, Some(&last)) => vec![last],
        (Catchup::None, Some(&last)) if now - last <= late => vec![last],
        (Catchup::None, Some(_)) => Vec::new(),
    }
}

/// A period (`optimize_every`, `vacuum_every`, `quarantine_retention`, an audit's `max_age`,
/// freshness limits): a number and `s`, `m`, `h` or `d`.
pub(crate) fn parse_every(key: &str, text: &str) -> Result<std::time::Duration> {
    let bad = || {
        Error::invalid(format!(
            "{key} = {text:?}: give a period like \"30m\", \"6h\" or \"1d\" (at least a minute)"
        ))
    };
    let text = text.trim();
    let unit = text.chars().last().ok_or_else(bad)?;
    let n: u64 = text[..text.len() - unit.len_utf8()]
        .trim()
        .parse()
        .map_err(|_| bad())?;
    let secs = match unit {
        's' => n,
        'm' => n.saturating_mul(60),
        'h' => n.saturating_mul(3600),
        'd' => n.saturating_mul(86_400),
        _ => return Err(bad()),
    };
    if !(60..=366 * 86_400).contains(&secs) {
        return Err(bad());
    }
    Ok(std::time::Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn trigger(schedule: &str, tz: Option<&str>) -> TriggerDef {
        TriggerDef {
            schedule: Some(schedule.into()),
            timezone: tz.map(str::to_string),
            ..TriggerDef::default()
        }
    }

    #[test]
    fn due_slots_are_the_newest_in_the_window_oldest_first() {
        let s = trigger("* * * * *", None).schedule().unwrap().unwrap();
        let (due, more) = s.due(at("2026-01-01T00:00:00Z"), at("2026-01-01T00:03:30Z"), 10);
        assert_eq!(
            due,
            vec![
                at("2026-01-01T00:01:00Z"),
                at("2026-01-01T00:02:00Z"),
                at("2026-01-01T00:03:00Z")
            ]
        );
        assert!(!more);
        // A slot exactly at `upto` is due; one at `after` was claimed already.
        let (due, _) = s.due(at("2026-01-01T00:01:00Z"), at("2026-01-01T00:02:00Z"), 10);
        assert_eq!(due, vec![at("2026-01-01T00:02:00Z")]);
        let (due, more) = s.due(at("2025-01-01T00:00:00Z"), at("2026-01-01T00:03:00Z"), 2);
        assert_eq!(
            due,
            vec![at("2026-01-01T00:02:00Z"), at("2026-01-01T00:03:00Z")]
        );
        assert!(more);
        assert_eq!(
            s.next_after(at("2026-01-01T00:03:00Z")),
            Some(at("2026-01-01T00:04:00Z"))
        );
    }

    #[test]
    fn seconds_and_time_zones_are_read() {
        let s = trigger("*/10 * * * * *", None).schedule().unwrap().unwrap();
        assert_eq!(
            s.next_after(at("2026-01-01T00:00:01Z")),
            Some(at("2026-01-01T00:00:10Z"))
        );
        // 02:00 in Berlin is 01:00 UTC in winter.
        let s = trigger("0 2 * * *", Some("Europe/Berlin"))
            .schedule()
            .unwrap()
            .unwrap();
        assert_eq!(
            s.next_after(at("2026-01-01T00:00:00Z")),
            Some(at("2026-01-01T01:00:00Z"))
        );
    }

    #[test]
    fn bad_patterns_and_zones_are_refused_with_the_field() {
        for (t, expect) in [
            (trigger("61 * * * *", None), "schedule"),
            (trigger("* * *", None), "schedule"),
            (trigger("* * * * * * *", None), "schedule"),
            (trigger("* * * * *", Some("Mars/Olympus")), "timezone"),
            (
                TriggerDef {
                    max_concurrent_runs: Some(0),
                    ..TriggerDef::default()
                },
                "max_concurrent_runs",
            ),
        ] {
            let e = t.check().unwrap_err().to_string();
            assert!(e.contains(expect), "{e}");
        }
    }

    #[test]
    fn catchup_policies_pick_their_slots() {
        let due = [
            at("2026-01-01T00:01:00Z"),
            at("2026-01-01T00:02:00Z"),
            at("2026-01-01T00:03:00Z"),
        ];
        let now = at("2026-01-01T00:03:05Z");
        let late = chrono::Duration::seconds(15);
        assert_eq!(to_claim(Catchup::All, &due, now, late), due.to_vec());
        assert_eq!(to_claim(Catchup::Latest, &due, now, late), vec![due[2]]);
        assert_eq!(to_claim(Catchup::None, &due, now, late), vec![due[2]]);
        let later = at("2026-01-01T00:03:30Z");
        assert!(to_claim(Catchup::None, &due, later, late).is_empty());
    }

    #[test]
    fn backoff_doubles_up_to_its_cap_within_the_jitter() {
        let r = RetryDef {
            retries: 3,
            backoff_secs: Some(2.0),
            max_backoff_secs: Some(5.0),
        };
        assert_eq!(r.backoff(2, 0.5), Duration::from_secs(2));
        assert_eq!(r.backoff(3, 0.5), Duration::from_secs(4));
        assert_eq!(r.backoff(4, 0.5), Duration::from_secs(5));
        assert_eq!(r.backoff(2, 0.0), Duration::from_millis(1500));
        assert_eq!(r.backoff(2, 0.999_999).as_millis(), 2499);
        assert!(
            RetryDef {
                retries: 11,
                ..RetryDef::default()
            }
            .check()
            .is_err()
        );
    }
}
