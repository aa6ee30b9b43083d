//! Recurrence of a resident's schedules (welfare calls, reminders, the daily check-in window):
//! when, in UTC, a rule written in the resident's own time zone next happens.
//!
//! # Rules
//!
//! A [`Recurrence`] is an RFC 5545 `RRULE` subset, a start written as a local date-time (the
//! resident's wall clock, like `DTSTART;TZID=...`) and an IANA time-zone name:
//!
//! | part | accepted |
//! | --- | --- |
//! | `FREQ` | `DAILY`, `WEEKLY`, `MONTHLY` (required) |
//! | `INTERVAL` | 1 to [`MAX_INTERVAL`] |
//! | `BYDAY` | `MO,TH`; with `MONTHLY` also numbered: `1MO` (first Monday), `-1FR` (last Friday), -5 to 5 |
//! | `BYMONTHDAY` | 1 to 31 and -31 to -1 (`-1` is the last day of the month); not with `WEEKLY` |
//! | `BYHOUR`, `BYMINUTE` | 0 to 23, 0 to 59 |
//! | `COUNT` | 1 to [`MAX_COUNT`] |
//! | `UNTIL` | `20261231T235959Z` (an instant), `20261231T235959` or `20261231` (the resident's wall clock); inclusive |
//! | `WKST` | `MO` (default) to `SU`: where the weeks of `WEEKLY;INTERVAL=2` begin |
//!
//! Part names and values are case-insensitive and an `RRULE:` prefix is allowed. Anything else is
//! refused with a [`ScheduleError`] that names the part. `FREQ=HOURLY`, `MINUTELY` and `SECONDLY`
//! are refused on purpose: nobody is rung every hour, and a rule may give at most
//! [`MAX_TIMES_PER_DAY`] times a day (`BYHOUR` × `BYMINUTE`).
//!
//! As in RFC 5545, parts left out are taken from the start: the hour, minute and second, the
//! weekday for `WEEKLY` and the day of the month for `MONTHLY` without `BYDAY`/`BYMONTHDAY`. The
//! start is where the rule begins, not necessarily an occurrence: it is one only when it matches
//! the rule (as in python-dateutil and the `rrule` crate). `COUNT` counts occurrences from the
//! start. Sub-second parts of the start are dropped.
//!
//! # Time zones and daylight saving
//!
//! The rule is expanded in the resident's wall-clock time; each wall-clock occurrence then names
//! one instant:
//!
//! - A time that exists once is that instant. A daily 08:00 reminder stays at 08:00 local across
//!   a change, so its UTC instant moves by an hour.
//! - A time skipped when the clocks go forward (02:30 in America/New_York on 2026-03-08, 01:30 in
//!   Europe/London on 2026-03-29) happens at the first instant after the gap: 03:00 local
//!   (07:00Z in New York, 01:00Z in London). RFC 5545 would move it by the length of the gap
//!   (03:30); we take the earliest moment it can happen, so a reminder is late as little as
//!   possible.
//! - A time that happens twice when the clocks go back (01:30 in New York on 2026-11-01) happens
//!   once, at its first occurrence, in daylight time (05:30Z).
//! - If two wall-clock times name the same instant (02:30 and 03:00 on a spring-forward day), it
//!   is one occurrence, and `COUNT` counts it once.
//!
//! A zone without daylight saving (Asia/Shanghai) is simply a fixed offset.
//!
//! # Month ends
//!
//! `FREQ=MONTHLY;BYMONTHDAY=31` skips months without a 31st (RFC 5545); `BYMONTHDAY=-1` is the
//! last day of every month (31 January, 28 or 29 February, 31 March, 30 April, ...).
//!
//! # Cost
//!
//! [`Recurrence::occurrences_between`] returns at most [`MAX_OCCURRENCES_PER_CALL`] instants, the
//! earliest; callers page by asking again from the last one. Rules without `COUNT` skip straight
//! to the period of the query, so a query costs about the occurrences it returns however old the
//! rule; rules with `COUNT` are counted from their start (at most [`MAX_COUNT`]).
//!
//! The calendar work (which days and times match) is done by the `rrule` crate in "floating"
//! wall-clock time (it is handed UTC so that it never adjusts for daylight saving itself); this
//! module owns parsing, limits, time zones (`chrono-tz`), `COUNT` and `UNTIL`.

use chrono::{
    DateTime, Datelike, Months, NaiveDate, NaiveDateTime, NaiveTime, TimeDelta, TimeZone, Timelike,
    Utc, Weekday,
};
use chrono_tz::Tz;
use rrule::{NWeekday, RRule, RRuleSet};

/// The most instants [`Recurrence::occurrences_between`] returns in one call.
pub const MAX_OCCURRENCES_PER_CALL: usize = 1000;
/// The most times a day a rule may give (`BYHOUR` values × `BYMINUTE` values).
pub const MAX_TIMES_PER_DAY: usize = 24;
/// The largest `INTERVAL` accepted.
pub const MAX_INTERVAL: u16 = 366;
/// The largest `COUNT` accepted: rules with `COUNT` are counted from their start on every query.
pub const MAX_COUNT: u32 = 10_000;
/// The longest rule text accepted, in bytes.
pub const MAX_RULE_LENGTH: usize = 512;
/// The longest check-in window: two windows never overlap, even on a 23-hour day.
pub const MAX_WINDOW_LENGTH: TimeDelta = TimeDelta::hours(12);

/// Why a schedule was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error(
        "unknown time zone {0:?}: expected an IANA name such as Asia/Shanghai or Europe/London"
    )]
    UnknownTimeZone(String),
    #[error("the recurrence rule is empty")]
    EmptyRule,
    #[error("the recurrence rule is {length} bytes long; at most {MAX_RULE_LENGTH} are allowed")]
    RuleTooLong { length: usize },
    #[error("the recurrence rule has no FREQ part (FREQ=DAILY, WEEKLY or MONTHLY)")]
    MissingFrequency,
    #[error("recurrence rule part {part:?} is invalid: {reason}")]
    InvalidPart { part: String, reason: String },
    #[error("recurrence rule part {part:?} is not supported: {reason}")]
    UnsupportedPart { part: String, reason: String },
    #[error("recurrence rule part {name} is given more than once")]
    DuplicatePart { name: String },
    #[error(
        "FREQ={frequency} is too frequent for a care schedule: use FREQ=DAILY with BYHOUR and \
         BYMINUTE (at most {MAX_TIMES_PER_DAY} times a day)"
    )]
    TooFrequent { frequency: String },
    #[error(
        "the rule gives {times} times a day; a care schedule allows at most {MAX_TIMES_PER_DAY}"
    )]
    TooManyTimesPerDay { times: usize },
    #[error(
        "COUNT and UNTIL cannot both be given: a rule ends after a number of times or at a date"
    )]
    CountWithUntil,
    #[error("the recurrence rule never occurs from its start {start}")]
    NeverOccurs { start: NaiveDateTime },
    #[error("the recurrence rule was rejected: {0}")]
    RuleRejected(String),
    #[error(
        "a check-in window of {minutes} minutes is invalid: it must last at least 1 minute and \
         at most 12 hours"
    )]
    InvalidWindowLength { minutes: i64 },
}

pub type Result<T, E = ScheduleError> = std::result::Result<T, E>;

/// A recurrence rule anchored at a local start in a time zone; see the module docs for the rules.
#[derive(Debug, Clone)]
pub struct Recurrence {
    rule: String,
    start_local: NaiveDateTime,
    time_zone: Tz,
    parts: RuleParts,
}

impl Recurrence {
    /// Parses `rule` (e.g. `FREQ=WEEKLY;BYDAY=MO,TH;BYHOUR=10;BYMINUTE=0`), starting at
    /// `start_local` on the resident's wall clock in the IANA zone `tz` (e.g. `Europe/London`).
    ///
    /// Refuses a rule that never occurs from its start (e.g. `UNTIL` before the start, or
    /// `FREQ=MONTHLY;INTERVAL=12;BYMONTHDAY=31` starting in April).
    pub fn parse(rule: &str, start_local: NaiveDateTime, tz: &str) -> Result<Recurrence> {
        let time_zone = parse_time_zone(tz)?;
        // Occurrences are whole seconds; a stray fraction on the start would be carried into none.
        let start_local = start_local.with_nanosecond(0).unwrap_or(start_local);
        let parts = RuleParts::parse(rule, start_local)?;
        let recurrence = Recurrence {
            rule: rule.trim().to_owned(),
            start_local,
            time_zone,
            parts,
        };
        // Builds the expansion once so that anything `rrule` itself refuses is reported here,
        // never hidden as "no occurrences" later.
        recurrence
            .parts
            .expansion(start_local)
            .map_err(|error| ScheduleError::RuleRejected(error.to_string()))?;
        if recurrence.occurrences(start_local).next().is_none() {
            return Err(ScheduleError::NeverOccurs { start: start_local });
        }
        Ok(recurrence)
    }

    /// The rule as given (trimmed).
    pub fn rule(&self) -> &str {
        &self.rule
    }

    /// Where the rule begins, on the resident's wall clock.
    pub fn start_local(&self) -> NaiveDateTime {
        self.start_local
    }

    /// The IANA name of the resident's time zone.
    pub fn time_zone_name(&self) -> &'static str {
        self.time_zone.name()
    }

    /// The occurrences at or after `from` and before `to`, in order, at most
    /// [`MAX_OCCURRENCES_PER_CALL`] (the earliest ones).
    pub fn occurrences_between(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Vec<DateTime<Utc>> {
        if from >= to {
            return Vec::new();
        }
        self.occurrences(self.parts.anchor_before(self.start_local, from))
            .skip_while(|instant| *instant < from)
            .take_while(|instant| *instant < to)
            .take(MAX_OCCURRENCES_PER_CALL)
            .collect()
    }

    /// The first occurrence strictly after `after`, or `None` once the rule has ended (`COUNT`,
    /// `UNTIL`).
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.occurrences(self.parts.anchor_before(self.start_local, after))
            .find(|instant| *instant > after)
    }

    /// Every occurrence in order, expanding the calendar from `anchor` (the start, or the start of
    /// a later period that [`RuleParts::anchor_before`] proved to give the same occurrences).
    fn occurrences(&self, anchor: NaiveDateTime) -> impl Iterator<Item = DateTime<Utc>> + '_ {
        let time_zone = self.time_zone;
        let until = self.parts.until;
        let count = self.parts.count.map_or(usize::MAX, |count| {
            usize::try_from(count).unwrap_or(usize::MAX)
        });
        let mut previous: Option<DateTime<Utc>> = None;
        self.parts
            .expansion(anchor)
            .ok()
            .into_iter()
            // `limit` bounds the work `rrule` does looking for a next match (100,000 periods).
            .flat_map(|expansion| (&expansion.limit()).into_iter())
            .map(|wall_clock| wall_clock.naive_utc())
            .map(move |local| (local, instant_of_local(time_zone, local)))
            .take_while(move |(local, instant)| match until {
                None => true,
                Some(Until::Instant(until)) => *instant <= until,
                Some(Until::WallClock(until)) => *local <= until,
            })
            .map(|(_, instant)| instant)
            // Wall-clock order maps to non-decreasing instants, so equal instants are adjacent.
            .filter(move |instant| {
                let is_new = previous != Some(*instant);
                previous = Some(*instant);
                is_new
            })
            .take(count)
    }
}

/// Where a rule ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Until {
    /// `UNTIL=...Z`: an instant.
    Instant(DateTime<Utc>),
    /// `UNTIL=20261231T235959` or `UNTIL=20261231` (the whole day): the resident's wall clock.
    WallClock(NaiveDateTime),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Frequency {
    Daily,
    Weekly,
    Monthly,
}

/// A parsed rule with every default taken from the start made explicit, so that the expansion
/// is the same from the start and from any later period's first instant.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RuleParts {
    frequency: Frequency,
    interval: u16,
    count: Option<u32>,
    until: Option<Until>,
    by_day: Vec<NWeekday>,
    by_month_day: Vec<i8>,
    by_hour: Vec<u8>,
    by_minute: Vec<u8>,
    by_second: Vec<u8>,
    week_start: Weekday,
}

impl RuleParts {
    fn parse(rule: &str, start_local: NaiveDateTime) -> Result<RuleParts> {
        let text = rule.trim();
        if text.len() > MAX_RULE_LENGTH {
            return Err(ScheduleError::RuleTooLong { length: text.len() });
        }
        let text = match text.get(..6) {
            Some(prefix) if prefix.eq_ignore_ascii_case("RRULE:") => &text[6..],
            _ => text,
        };
        let mut frequency = None;
        let mut interval = None;
        let mut count = None;
        let mut until = None;
        let mut by_day: Option<Vec<NWeekday>> = None;
        let mut by_day_segment = "";
        let mut by_month_day: Option<Vec<i8>> = None;
        let mut by_hour: Option<Vec<u8>> = None;
        let mut by_minute: Option<Vec<u8>> = None;
        let mut week_start = None;
        let mut seen: Vec<String> = Vec::new();
        let mut n_parts = 0;

        for segment in text.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            n_parts += 1;
            let Some((name, value)) = segment.split_once('=') else {
                return Err(invalid(segment, "expected NAME=VALUE"));
            };
            let name = name.trim().to_ascii_uppercase();
            let value = value.trim().to_ascii_uppercase();
            if seen.contains(&name) {
                return Err(ScheduleError::DuplicatePart { name });
            }
            seen.push(name.clone());
            match name.as_str() {
                "FREQ" => frequency = Some(parse_frequency(segment, &value)?),
                "INTERVAL" => {
                    interval = Some(parse_number_in(
                        segment,
                        &value,
                        1..=MAX_INTERVAL,
                        "INTERVAL",
                    )?)
                }
                "COUNT" => count = Some(parse_number_in(segment, &value, 1..=MAX_COUNT, "COUNT")?),
                "UNTIL" => until = Some(parse_until(segment, &value)?),
                "BYDAY" => {
                    by_day = Some(parse_list(segment, &value, parse_weekday)?);
                    by_day_segment = segment;
                }
                "BYMONTHDAY" => by_month_day = Some(parse_list(segment, &value, parse_month_day)?),
                "BYHOUR" => {
                    by_hour = Some(parse_list(segment, &value, |segment, item| {
                        parse_number_in(segment, item, 0..=23, "an hour")
                    })?)
                }
                "BYMINUTE" => {
                    by_minute = Some(parse_list(segment, &value, |segment, item| {
                        parse_number_in(segment, item, 0..=59, "a minute")
                    })?)
                }
                "WKST" => week_start = Some(parse_plain_weekday(segment, &value)?),
                "BYSECOND" => {
                    return Err(unsupported(
                        segment,
                        "times are given to the minute (BYHOUR, BYMINUTE)",
                    ))
                }
                "BYSETPOS" | "BYMONTH" | "BYYEARDAY" | "BYWEEKNO" | "BYEASTER" | "RSCALE"
                | "SKIP" => {
                    return Err(unsupported(
                        segment,
                        "supported parts are FREQ, INTERVAL, BYDAY, BYMONTHDAY, BYHOUR, BYMINUTE, \
                         COUNT, UNTIL and WKST",
                    ))
                }
                _ => return Err(invalid(segment, "unknown rule part")),
            }
        }
        if n_parts == 0 {
            return Err(ScheduleError::EmptyRule);
        }
        let frequency = frequency.ok_or(ScheduleError::MissingFrequency)?;
        if count.is_some() && until.is_some() {
            return Err(ScheduleError::CountWithUntil);
        }

        let by_day = by_day.unwrap_or_default();
        let by_month_day = by_month_day.unwrap_or_default();
        if frequency != Frequency::Monthly
            && by_day.iter().any(|day| matches!(day, NWeekday::Nth(..)))
        {
            return Err(invalid(
                by_day_segment,
                "a numbered weekday (first Monday, last Friday) needs FREQ=MONTHLY",
            ));
        }
        if frequency == Frequency::Weekly && !by_month_day.is_empty() {
            return Err(invalid("BYMONTHDAY", "cannot be used with FREQ=WEEKLY"));
        }

        // RFC 5545 defaults, taken from the start once and for all.
        let by_hour = by_hour.unwrap_or_else(|| vec![start_hms(start_local.hour())]);
        let by_minute = by_minute.unwrap_or_else(|| vec![start_hms(start_local.minute())]);
        let by_second = vec![start_hms(start_local.second())];
        let times = by_hour.len() * by_minute.len();
        if times > MAX_TIMES_PER_DAY {
            return Err(ScheduleError::TooManyTimesPerDay { times });
        }
        let (by_day, by_month_day) = match frequency {
            Frequency::Weekly if by_day.is_empty() => {
                (vec![NWeekday::Every(start_local.weekday())], by_month_day)
            }
            Frequency::Monthly if by_day.is_empty() && by_month_day.is_empty() => {
                (by_day, vec![start_day_of_month(start_local.day())])
            }
            _ => (by_day, by_month_day),
        };

        Ok(RuleParts {
            frequency,
            interval: interval.unwrap_or(1),
            count,
            until,
            by_day,
            by_month_day,
            by_hour,
            by_minute,
            by_second,
            week_start: week_start.unwrap_or(Weekday::Mon),
        })
    }

    /// The calendar expansion from `anchor`, in floating wall-clock time (see the module docs).
    fn expansion(&self, anchor: NaiveDateTime) -> Result<RRuleSet, rrule::RRuleError> {
        let frequency = match self.frequency {
            Frequency::Daily => rrule::Frequency::Daily,
            Frequency::Weekly => rrule::Frequency::Weekly,
            Frequency::Monthly => rrule::Frequency::Monthly,
        };
        let mut rule = RRule::new(frequency)
            .interval(self.interval)
            .week_start(self.week_start)
            .by_hour(self.by_hour.clone())
            .by_minute(self.by_minute.clone())
            .by_second(self.by_second.clone());
        if !self.by_day.is_empty() {
            rule = rule.by_weekday(self.by_day.clone());
        }
        if !self.by_month_day.is_empty() {
            rule = rule.by_month_day(self.by_month_day.clone());
        }
        rule.build(rrule::Tz::UTC.from_utc_datetime(&anchor))
    }

    /// Where to begin expanding so that every occurrence at or after `instant` is still produced:
    /// the first moment of the last whole period (day, week from `WKST`, month), aligned on
    /// `INTERVAL` from the start, that begins at least two days before `instant` in wall-clock
    /// time, or the start itself. Every default is explicit in `RuleParts`, so from such a
    /// period the expansion is the same as from the start. Not for `COUNT`, which counts from
    /// the start.
    fn anchor_before(&self, start_local: NaiveDateTime, instant: DateTime<Utc>) -> NaiveDateTime {
        // An occurrence at or after `instant` is on the wall clock at least `instant` - 12 h
        // (UTC offsets are above -12 h, and the gap rule only moves instants later); two days
        // leaves room for any offset in the database.
        let Some(target) = instant.naive_utc().checked_sub_signed(TimeDelta::days(2)) else {
            return start_local;
        };
        if self.count.is_some() || target <= start_local {
            return start_local;
        }
        let interval = i64::from(self.interval);
        let start_date = start_local.date();
        let anchor_date = match self.frequency {
            Frequency::Daily => {
                let days = (target.date() - start_date).num_days();
                start_date.checked_add_signed(TimeDelta::days(days / interval * interval))
            }
            Frequency::Weekly => {
                let days_into_week = (7 + start_date.weekday().num_days_from_monday()
                    - self.week_start.num_days_from_monday())
                    % 7;
                let period = 7 * interval;
                start_date
                    .checked_sub_signed(TimeDelta::days(i64::from(days_into_week)))
                    .and_then(|first_week| {
                        let days = (target.date() - first_week).num_days();
                        first_week.checked_add_signed(TimeDelta::days(days / period * period))
                    })
            }
            Frequency::Monthly => {
                let months = i64::from(target.year() - start_date.year()) * 12
                    + i64::from(target.month())
                    - i64::from(start_date.month());
                let skipped = u32::try_from(months / interval * interval).unwrap_or(0);
                start_date
                    .with_day(1)
                    .and_then(|first| first.checked_add_months(Months::new(skipped)))
            }
        };
        match anchor_date {
            // Only a later period: the start's own period begins at the start, not at midnight.
            Some(date) if date > start_date => date.and_time(NaiveTime::MIN),
            _ => start_local,
        }
    }
}

/// The instant a wall-clock time names in `time_zone`, by the module's daylight-saving rules.
fn instant_of_local(time_zone: Tz, local: NaiveDateTime) -> DateTime<Utc> {
    match time_zone.from_local_datetime(&local).earliest() {
        Some(instant) => instant.with_timezone(&Utc),
        None => first_instant_after_gap(time_zone, local),
    }
}

/// The instant the clocks jumped over `local`, a wall-clock time skipped in `time_zone`.
///
/// Searches for the first instant whose wall-clock time is not before `local`. At `local`
/// taken as UTC minus 26 hours the wall clock is before it and at plus 26 hours after it,
/// whatever the offset (every offset in the database is within ±26 h); between, the wall
/// clock only goes backwards at a fall-back, never within a day of a spring-forward.
fn first_instant_after_gap(time_zone: Tz, local: NaiveDateTime) -> DateTime<Utc> {
    const TWENTY_SIX_HOURS: i64 = 26 * 3600;
    let wall_clock = |seconds: i64| {
        DateTime::from_timestamp(seconds, 0)
            .map(|instant| instant.with_timezone(&time_zone).naive_local())
    };
    // Whole seconds since the epoch, so that the answer is a whole second like every occurrence.
    let as_utc = local.and_utc().timestamp();
    let mut before = as_utc - TWENTY_SIX_HOURS;
    let mut after = as_utc + TWENTY_SIX_HOURS;
    while after - before > 1 {
        let middle = before + (after - before) / 2;
        match wall_clock(middle) {
            Some(wall_clock) if wall_clock < local => before = middle,
            _ => after = middle,
        }
    }
    DateTime::from_timestamp(after, 0).unwrap_or_else(|| local.and_utc())
}

fn parse_time_zone(name: &str) -> Result<Tz> {
    name.trim()
        .parse::<Tz>()
        .map_err(|_| ScheduleError::UnknownTimeZone(name.to_owned()))
}

/// A part of the rule as shown in an error: at most 60 characters of it.
fn shown(segment: &str) -> String {
    match segment.char_indices().nth(60) {
        Some((end, _)) => format!("{}...", &segment[..end]),
        None => segment.to_owned(),
    }
}

fn invalid(segment: &str, reason: impl Into<String>) -> ScheduleError {
    ScheduleError::InvalidPart {
        part: shown(segment),
        reason: reason.into(),
    }
}

fn unsupported(segment: &str, reason: &str) -> ScheduleError {
    ScheduleError::UnsupportedPart {
        part: shown(segment),
        reason: reason.to_owned(),
    }
}

fn parse_frequency(segment: &str, value: &str) -> Result<Frequency> {
    match value {
        "DAILY" => Ok(Frequency::Daily),
        "WEEKLY" => Ok(Frequency::Weekly),
        "MONTHLY" => Ok(Frequency::Monthly),
        "HOURLY" | "MINUTELY" | "SECONDLY" => Err(ScheduleError::TooFrequent {
            frequency: value.to_owned(),
        }),
        "YEARLY" => Err(unsupported(
            segment,
            "use FREQ=MONTHLY;INTERVAL=12 for once a year",
        )),
        _ => Err(invalid(segment, "FREQ must be DAILY, WEEKLY or MONTHLY")),
    }
}

fn parse_number_in<T>(
    segment: &str,
    value: &str,
    range: std::ops::RangeInclusive<T>,
    what: &str,
) -> Result<T>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display,
{
    let bad = || {
        invalid(
            segment,
            format!(
                "{what} must be a whole number from {} to {}",
                range.start(),
                range.end()
            ),
        )
    };
    let number = value.parse::<T>().map_err(|_| bad())?;
    if range.contains(&number) {
        Ok(number)
    } else {
        Err(bad())
    }
}

fn parse_list<T: PartialEq>(
    segment: &str,
    value: &str,
    parse_item: impl Fn(&str, &str) -> Result<T>,
) -> Result<Vec<T>> {
    let mut items = Vec::new();
    for item in value.split(',').map(str::trim) {
        if item.is_empty() {
            return Err(invalid(segment, "empty item in the list"));
        }
        let item = parse_item(segment, item)?;
        if !items.contains(&item) {
            items.push(item);
        }
    }
    Ok(items)
}

fn parse_plain_weekday(segment: &str, value: &str) -> Result<Weekday> {
    match value {
        "MO" => Ok(Weekday::Mon),
        "TU" => Ok(Weekday::Tue),
        "WE" => Ok(Weekday::Wed),
        "TH" => Ok(Weekday::Thu),
        "FR" => Ok(Weekday::Fri),
        "SA" => Ok(Weekday::Sat),
        "SU" => Ok(Weekday::Sun),
        _ => Err(invalid(
            segment,
            format!("{value:?} is not a weekday (MO, TU, WE, TH, FR, SA, SU)"),
        )),
    }
}

/// `MO`, or with a position in the month `1MO`, `+2TU`, `-1FR`.
fn parse_weekday(segment: &str, item: &str) -> Result<NWeekday> {
    let split = item.len().saturating_sub(2);
    let (position, day) = item.split_at_checked(split).unwrap_or(("", item));
    let weekday = parse_plain_weekday(segment, day)?;
    if position.is_empty() {
        return Ok(NWeekday::Every(weekday));
    }
    let position = parse_number_in(
        segment,
        position,
        -5..=5,
        "a weekday's position in the month",
    )?;
    if position == 0 {
        return Err(invalid(
            segment,
            "a weekday's position in the month cannot be 0",
        ));
    }
    Ok(NWeekday::Nth(position, weekday))
}

fn parse_month_day(segment: &str, item: &str) -> Result<i8> {
    let day = parse_number_in(segment, item, -31..=31, "a day of the month")?;
    if day == 0 {
        return Err(invalid(
            segment,
            "a day of the month is 1 to 31, or -1 (the last) to -31",
        ));
    }
    Ok(day)
}

/// `20261231T235959Z`, `20261231T235959` or `20261231`.
fn parse_until(segment: &str, value: &str) -> Result<Until> {
    let bad = || {
        invalid(
            segment,
            "UNTIL must be a date (20261231), a local date-time (20261231T235959) or a UTC one \
             (20261231T235959Z)",
        )
    };
    if let Some(utc) = value.strip_suffix('Z') {
        let until = NaiveDateTime::parse_from_str(utc, "%Y%m%dT%H%M%S").map_err(|_| bad())?;
        return Ok(Until::Instant(until.and_utc()));
    }
    if value.contains('T') {
        let until = NaiveDateTime::parse_from_str(value, "%Y%m%dT%H%M%S").map_err(|_| bad())?;
        return Ok(Until::WallClock(until));
    }
    let date = NaiveDate::parse_from_str(value, "%Y%m%d").map_err(|_| bad())?;
    // A date is inclusive: the whole day. Occurrences are whole seconds, so 23:59:59 is the last.
    let last_second = NaiveTime::from_hms_opt(23, 59, 59).unwrap_or(NaiveTime::MIN);
    Ok(Until::WallClock(date.and_time(last_second)))
}

/// An hour, minute or second of the start (0..=59 by `chrono`'s contract) as `rrule` takes it.
fn start_hms(value: u32) -> u8 {
    u8::try_from(value).unwrap_or(0)
}

/// A day of the month of the start (1..=31 by `chrono`'s contract) as `rrule` takes it.
fn start_day_of_month(day: u32) -> i8 {
    i8::try_from(day).unwrap_or(1)
}

/// A daily "I'm OK" check-in window: opens at a local time each day in the resident's zone and
/// stays open for a fixed length of real time.
///
/// The opening follows the same daylight-saving rules as [`Recurrence`] (a skipped time opens at
/// the end of the gap, a repeated one at its first occurrence). The closing is the opening plus
/// the length in elapsed time, so a resident always has the full time to answer, even when the
/// clocks change inside the window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckInWindow {
    opens_local: NaiveTime,
    length: TimeDelta,
    time_zone: Tz,
}

/// One day's check-in window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckInSlot {
    /// The resident's local date the window belongs to.
    pub date: NaiveDate,
    pub opens_at: DateTime<Utc>,
    pub closes_at: DateTime<Utc>,
}

impl CheckInSlot {
    /// Whether `instant` is inside the window (open at `opens_at`, closed at `closes_at`).
    pub fn contains(&self, instant: DateTime<Utc>) -> bool {
        self.opens_at <= instant && instant < self.closes_at
    }
}

impl CheckInWindow {
    /// A window opening at `opens_local` every day in the IANA zone `tz`, lasting `length`
    /// (1 minute to [`MAX_WINDOW_LENGTH`]). Seconds of `opens_local` are kept; fractions dropped.
    pub fn new(opens_local: NaiveTime, length: TimeDelta, tz: &str) -> Result<CheckInWindow> {
        let time_zone = parse_time_zone(tz)?;
        if length < TimeDelta::minutes(1) || length > MAX_WINDOW_LENGTH {
            return Err(ScheduleError::InvalidWindowLength {
                minutes: length.num_minutes(),
            });
        }
        Ok(CheckInWindow {
            opens_local: opens_local.with_nanosecond(0).unwrap_or(opens_local),
            length,
            time_zone,
        })
    }

    /// The window of the resident's local `date`.
    pub fn window_on(&self, date: NaiveDate) -> CheckInSlot {
        let opens_at = instant_of_local(self.time_zone, date.and_time(self.opens_local));
        CheckInSlot {
            date,
            opens_at,
            closes_at: opens_at + self.length,
        }
    }

    /// The window open at `instant`, or else the next one to open.
    pub fn current_or_next(&self, instant: DateTime<Utc>) -> CheckInSlot {
        let today = instant.with_timezone(&self.time_zone).date_naive();
        // Yesterday's window may still be open; tomorrow's opens after `instant`, which is today.
        for date in [today.pred_opt(), Some(today)].into_iter().flatten() {
            let window = self.window_on(date);
            if window.closes_at > instant {
                return window;
            }
        }
        self.window_on(today.succ_opt().unwrap_or(today))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NEW_YORK: &str = "America/New_York";
    const LONDON: &str = "Europe/London";
    const SHANGHAI: &str = "Asia/Shanghai";

    fn local(text: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M").expect("test date-time")
    }

    fn utc(text: &str) -> DateTime<Utc> {
        text.parse().expect("test instant")
    }

    fn shown(instants: &[DateTime<Utc>]) -> Vec<String> {
        instants
            .iter()
            .map(|instant| instant.format("%Y-%m-%dT%H:%M:%SZ").to_string())
            .collect()
    }

    /// The occurrences of `rule` from `start` in `tz` within [`from`, `to`), as RFC 3339 UTC text.
    fn occurrences(rule: &str, start: &str, tz: &str, from: &str, to: &str) -> Vec<String> {
        let recurrence = Recurrence::parse(rule, local(start), tz).expect("valid rule");
        shown(&recurrence.occurrences_between(utc(from), utc(to)))
    }

    fn error_of(rule: &str) -> ScheduleError {
        Recurrence::parse(rule, local("2026-04-01 09:00"), SHANGHAI).expect_err("rule is refused")
    }

    #[test]
    fn daily_reminder_stays_at_eight_local_across_new_york_spring_forward() {
        let instants = occurrences(
            "FREQ=DAILY",
            "2026-03-06 08:00",
            NEW_YORK,
            "2026-03-06T00:00:00Z",
            "2026-03-10T00:00:00Z",
        );
        assert_eq!(
            instants,
            [
                "2026-03-06T13:00:00Z",
                "2026-03-07T13:00:00Z",
                "2026-03-08T12:00:00Z",
                "2026-03-09T12:00:00Z"
            ]
        );
    }

    #[test]
    fn daily_reminder_stays_at_eight_local_across_new_york_fall_back() {
        let instants = occurrences(
            "FREQ=DAILY;BYHOUR=8;BYMINUTE=0",
            "2026-10-30 00:00",
            NEW_YORK,
            "2026-10-30T00:00:00Z",
            "2026-11-03T00:00:00Z",
        );
        assert_eq!(
            instants,
            [
                "2026-10-30T12:00:00Z",
                "2026-10-31T12:00:00Z",
                "2026-11-01T13:00:00Z",
                "2026-11-02T13:00:00Z"
            ]
        );
    }

    #[test]
    fn daily_reminder_stays_at_eight_local_across_both_london_changes() {
        let spring = occurrences(
            "FREQ=DAILY",
            "2026-03-27 08:00",
            LONDON,
            "2026-03-27T00:00:00Z",
            "2026-03-31T00:00:00Z",
        );
        assert_eq!(
            spring,
            [
                "2026-03-27T08:00:00Z",
                "2026-03-28T08:00:00Z",
                "2026-03-29T07:00:00Z",
                "2026-03-30T07:00:00Z"
            ]
        );
        let autumn = occurrences(
            "FREQ=DAILY",
            "2026-10-23 08:00",
            LONDON,
            "2026-10-23T00:00:00Z",
            "2026-10-27T00:00:00Z",
        );
        assert_eq!(
            autumn,
            [
                "2026-10-23T07:00:00Z",
                "2026-10-24T07:00:00Z",
                "2026-10-25T08:00:00Z",
                "2026-10-26T08:00:00Z"
            ]
        );
    }

    #[test]
    fn skipped_local_time_happens_when_the_clocks_resume_in_new_york() {
        // 02:30 does not exist on 2026-03-08: it happens at 03:00 EDT (07:00Z).
        let instants = occurrences(
            "FREQ=DAILY",
            "2026-03-07 02:30",
            NEW_YORK,
            "2026-03-07T00:00:00Z",
            "2026-03-10T00:00:00Z",
        );
        assert_eq!(
            instants,
            [
                "2026-03-07T07:30:00Z",
                "2026-03-08T07:00:00Z",
                "2026-03-09T06:30:00Z"
            ]
        );
    }

    #[test]
    fn repeated_local_time_happens_once_in_daylight_time_in_new_york() {
        // 01:30 happens twice on 2026-11-01 (EDT then EST): only the first counts.
        let recurrence =
            Recurrence::parse("FREQ=DAILY", local("2026-10-31 01:30"), NEW_YORK).expect("valid");
        let instants = recurrence
            .occurrences_between(utc("2026-10-31T00:00:00Z"), utc("2026-11-03T00:00:00Z"));
        assert_eq!(
            shown(&instants),
            [
                "2026-10-31T05:30:00Z",
                "2026-11-01T05:30:00Z",
                "2026-11-02T06:30:00Z"
            ]
        );
        assert_eq!(
            recurrence.next_after(utc("2026-11-01T05:30:00Z")),
            Some(utc("2026-11-02T06:30:00Z"))
        );
    }

    #[test]
    fn skipped_and_repeated_local_times_in_london() {
        let spring = occurrences(
            "FREQ=DAILY",
            "2026-03-28 01:30",
            LONDON,
            "2026-03-28T00:00:00Z",
            "2026-03-31T00:00:00Z",
        );
        assert_eq!(
            spring,
            [
                "2026-03-28T01:30:00Z",
                "2026-03-29T01:00:00Z",
                "2026-03-30T00:30:00Z"
            ]
        );
        let autumn = occurrences(
            "FREQ=DAILY",
            "2026-10-24 01:30",
            LONDON,
            "2026-10-24T00:00:00Z",
            "2026-10-27T00:00:00Z",
        );
        assert_eq!(
            autumn,
            [
                "2026-10-24T00:30:00Z",
                "2026-10-25T00:30:00Z",
                "2026-10-26T01:30:00Z"
            ]
        );
    }

    #[test]
    fn two_local_times_that_name_one_instant_are_one_occurrence_and_counted_once() {
        // On 2026-03-08 in New York 02:00, 02:30 and 03:00 all name 07:00Z.
        let instants = occurrences(
            "FREQ=DAILY;BYHOUR=2,3;BYMINUTE=0,30;COUNT=3",
            "2026-03-08 00:00",
            NEW_YORK,
            "2026-03-01T00:00:00Z",
            "2026-04-01T00:00:00Z",
        );
        assert_eq!(
            instants,
            [
                "2026-03-08T07:00:00Z",
                "2026-03-08T07:30:00Z",
                "2026-03-09T06:00:00Z"
            ]
        );
    }

    #[test]
    fn shanghai_has_no_daylight_saving() {
        let instants = occurrences(
            "FREQ=DAILY",
            "2026-03-07 09:00",
            SHANGHAI,
            "2026-03-07T00:00:00Z",
            "2026-03-10T00:00:00Z",
        );
        assert_eq!(
            instants,
            [
                "2026-03-07T01:00:00Z",
                "2026-03-08T01:00:00Z",
                "2026-03-09T01:00:00Z"
            ]
        );
        let autumn = occurrences(
            "FREQ=DAILY",
            "2026-10-24 09:00",
            SHANGHAI,
            "2026-10-31T00:00:00Z",
            "2026-11-03T00:00:00Z",
        );
        assert_eq!(
            autumn,
            [
                "2026-10-31T01:00:00Z",
                "2026-11-01T01:00:00Z",
                "2026-11-02T01:00:00Z"
            ]
        );
    }

    #[test]
    fn last_day_of_the_month_in_a_leap_year_and_a_common_year() {
        let leap = occurrences(
            "FREQ=MONTHLY;BYMONTHDAY=-1",
            "2028-01-01 09:00",
            SHANGHAI,
            "2028-01-01T00:00:00Z",
            "2028-05-01T00:00:00Z",
        );
        assert_eq!(
            leap,
            [
                "2028-01-31T01:00:00Z",
                "2028-02-29T01:00:00Z",
                "2028-03-31T01:00:00Z",
                "2028-04-30T01:00:00Z"
            ]
        );
        let common = occurrences(
            "FREQ=MONTHLY;BYMONTHDAY=-1",
            "2026-01-01 09:00",
            SHANGHAI,
            "2026-01-01T00:00:00Z",
            "2026-05-01T00:00:00Z",
        );
        assert_eq!(
            common,
            [
                "2026-01-31T01:00:00Z",
                "2026-02-28T01:00:00Z",
                "2026-03-31T01:00:00Z",
                "2026-04-30T01:00:00Z"
            ]
        );
    }

    #[test]
    fn thirty_first_of_the_month_skips_shorter_months() {
        let instants = occurrences(
            "FREQ=MONTHLY;BYMONTHDAY=31",
            "2028-01-01 09:00",
            SHANGHAI,
            "2028-01-01T00:00:00Z",
            "2028-08-01T00:00:00Z",
        );
        assert_eq!(
            instants,
            [
                "2028-01-31T01:00:00Z",
                "2028-03-31T01:00:00Z",
                "2028-05-31T01:00:00Z",
                "2028-07-31T01:00:00Z"
            ]
        );
    }

    #[test]
    fn monthly_without_a_day_keeps_the_start_day() {
        let instants = occurrences(
            "FREQ=MONTHLY",
            "2026-01-15 10:00",
            SHANGHAI,
            "2026-01-01T00:00:00Z",
            "2026-04-01T00:00:00Z",
        );
        assert_eq!(
            instants,
            [
                "2026-01-15T02:00:00Z",
                "2026-02-15T02:00:00Z",
                "2026-03-15T02:00:00Z"
            ]
        );
    }

    #[test]
    fn welfare_call_every_other_week_on_monday_and_thursday() {
        // 2026-03-02 is a Monday; London moves to BST on 29 March.
        let instants = occurrences(
            "FREQ=WEEKLY;INTERVAL=2;BYDAY=MO,TH",
            "2026-03-02 10:00",
            LONDON,
            "2026-03-01T00:00:00Z",
            "2026-04-05T00:00:00Z",
        );
        assert_eq!(
            instants,
            [
                "2026-03-02T10:00:00Z",
                "2026-03-05T10:00:00Z",
                "2026-03-16T10:00:00Z",
                "2026-03-19T10:00:00Z",
                "2026-03-30T09:00:00Z",
                "2026-04-02T09:00:00Z"
            ]
        );
    }

    #[test]
    fn every_other_week_stays_on_the_start_weeks_years_later() {
        // 2020-01-06 is a Monday; 2026-03-09 is 2254 days (161 fortnights) later.
        let instants = occurrences(
            "FREQ=WEEKLY;INTERVAL=2;BYDAY=MO,TH;BYHOUR=10;BYMINUTE=0",
            "2020-01-06 10:00",
            SHANGHAI,
            "2026-03-01T00:00:00Z",
            "2026-03-31T00:00:00Z",
        );
        assert_eq!(
            instants,
            [
                "2026-03-09T02:00:00Z",
                "2026-03-12T02:00:00Z",
                "2026-03-23T02:00:00Z",
                "2026-03-26T02:00:00Z"
            ]
        );
    }

    #[test]
    fn first_monday_and_last_friday_of_the_month() {
        let first_monday = occurrences(
            "FREQ=MONTHLY;BYDAY=1MO;BYHOUR=10;BYMINUTE=0",
            "2026-01-01 00:00",
            SHANGHAI,
            "2026-01-01T00:00:00Z",
            "2026-04-01T00:00:00Z",
        );
        assert_eq!(
            first_monday,
            [
                "2026-01-05T02:00:00Z",
                "2026-02-02T02:00:00Z",
                "2026-03-02T02:00:00Z"
            ]
        );
        let last_friday = occurrences(
            "FREQ=MONTHLY;BYDAY=-1FR;BYHOUR=10;BYMINUTE=0",
            "2026-01-01 00:00",
            SHANGHAI,
            "2026-01-01T00:00:00Z",
            "2026-04-01T00:00:00Z",
        );
        assert_eq!(
            last_friday,
            [
                "2026-01-30T02:00:00Z",
                "2026-02-27T02:00:00Z",
                "2026-03-27T02:00:00Z"
            ]
        );
    }

    #[test]
    fn medication_three_times_a_day_in_order() {
        let instants = occurrences(
            "FREQ=DAILY;BYHOUR=8,13,19;BYMINUTE=30",
            "2026-06-01 00:00",
            SHANGHAI,
            "2026-06-01T00:00:00Z",
            "2026-06-02T00:00:00Z",
        );
        assert_eq!(
            instants,
            [
                "2026-06-01T00:30:00Z",
                "2026-06-01T05:30:00Z",
                "2026-06-01T11:30:00Z"
            ]
        );
    }

    #[test]
    fn start_is_an_occurrence_only_when_it_matches_the_rule() {
        // 2026-03-01 is a Sunday.
        let instants = occurrences(
            "FREQ=WEEKLY;BYDAY=MO",
            "2026-03-01 10:00",
            SHANGHAI,
            "2026-02-01T00:00:00Z",
            "2026-03-10T00:00:00Z",
        );
        assert_eq!(instants, ["2026-03-02T02:00:00Z", "2026-03-09T02:00:00Z"]);
    }

    #[test]
    fn count_ends_the_rule() {
        let recurrence =
            Recurrence::parse("FREQ=DAILY;COUNT=3", local("2026-06-01 09:00"), SHANGHAI)
                .expect("valid");
        let instants = recurrence
            .occurrences_between(utc("2026-01-01T00:00:00Z"), utc("2027-01-01T00:00:00Z"));
        assert_eq!(
            shown(&instants),
            [
                "2026-06-01T01:00:00Z",
                "2026-06-02T01:00:00Z",
                "2026-06-03T01:00:00Z"
            ]
        );
        assert_eq!(recurrence.next_after(utc("2026-06-03T01:00:00Z")), None);
    }

    #[test]
    fn until_as_an_instant_is_inclusive() {
        let recurrence = Recurrence::parse(
            "FREQ=DAILY;UNTIL=20260603T010000Z",
            local("2026-06-01 09:00"),
            SHANGHAI,
        )
        .expect("valid");
        let instants = recurrence
            .occurrences_between(utc("2026-01-01T00:00:00Z"), utc("2027-01-01T00:00:00Z"));
        assert_eq!(
            shown(&instants),
            [
                "2026-06-01T01:00:00Z",
                "2026-06-02T01:00:00Z",
                "2026-06-03T01:00:00Z"
            ]
        );
        assert_eq!(
            recurrence.next_after(utc("2026-06-03T00:00:00Z")),
            Some(utc("2026-06-03T01:00:00Z"))
        );
        assert_eq!(recurrence.next_after(utc("2026-06-03T01:00:00Z")), None);
    }

    #[test]
    fn until_as_a_local_date_includes_that_whole_day() {
        let instants = occurrences(
            "FREQ=DAILY;BYHOUR=9,21;UNTIL=20260602",
            "2026-06-01 00:00",
            SHANGHAI,
            "2026-01-01T00:00:00Z",
            "2027-01-01T00:00:00Z",
        );
        assert_eq!(
            instants,
            [
                "2026-06-01T01:00:00Z",
                "2026-06-01T13:00:00Z",
                "2026-06-02T01:00:00Z",
                "2026-06-02T13:00:00Z"
            ]
        );
    }

    #[test]
    fn next_after_is_strictly_after() {
        let recurrence =
            Recurrence::parse("FREQ=DAILY", local("2026-06-01 09:00"), SHANGHAI).expect("valid");
        assert_eq!(
            recurrence.next_after(utc("2026-06-01T01:00:00Z")),
            Some(utc("2026-06-02T01:00:00Z"))
        );
        assert_eq!(
            recurrence.next_after(utc("2026-06-01T00:59:59Z")),
            Some(utc("2026-06-01T01:00:00Z"))
        );
        assert_eq!(
            recurrence.next_after(utc("2020-01-01T00:00:00Z")),
            Some(utc("2026-06-01T01:00:00Z"))
        );
    }

    #[test]
    fn range_is_half_open_and_empty_when_reversed() {
        let recurrence =
            Recurrence::parse("FREQ=DAILY", local("2026-06-01 09:00"), SHANGHAI).expect("valid");
        let instants = recurrence
            .occurrences_between(utc("2026-06-01T01:00:00Z"), utc("2026-06-02T01:00:00Z"));
        assert_eq!(shown(&instants), ["2026-06-01T01:00:00Z"]);
        assert!(recurrence
            .occurrences_between(utc("2026-06-05T00:00:00Z"), utc("2026-06-01T00:00:00Z"))
            .is_empty());
    }

    #[test]
    fn one_call_returns_at_most_the_cap_earliest_first() {
        let recurrence = Recurrence::parse(
            "FREQ=DAILY;BYHOUR=0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23",
            local("2026-01-01 00:00"),
            "UTC",
        )
        .expect("valid");
        let instants = recurrence
            .occurrences_between(utc("2026-01-01T00:00:00Z"), utc("2036-01-01T00:00:00Z"));
        assert_eq!(instants.len(), MAX_OCCURRENCES_PER_CALL);
        assert_eq!(instants[0], utc("2026-01-01T00:00:00Z"));
        assert!(instants
            .windows(2)
            .all(|pair| pair[1] - pair[0] == TimeDelta::hours(1)));
    }

    #[test]
    fn rule_accessors_and_prefix_and_lowercase() {
        let recurrence = Recurrence::parse(
            " RRULE:freq=weekly;byday=mo;wkst=su ",
            local("2026-03-02 10:00"),
            LONDON,
        )
        .expect("valid");
        assert_eq!(recurrence.rule(), "RRULE:freq=weekly;byday=mo;wkst=su");
        assert_eq!(recurrence.start_local(), local("2026-03-02 10:00"));
        assert_eq!(recurrence.time_zone_name(), LONDON);
        assert_eq!(
            recurrence.next_after(utc("2026-03-02T10:00:00Z")),
            Some(utc("2026-03-09T10:00:00Z"))
        );
    }

    #[test]
    fn unknown_time_zone_is_refused() {
        let error = Recurrence::parse("FREQ=DAILY", local("2026-04-01 09:00"), "Mars/Olympus")
            .expect_err("refused");
        assert_eq!(error, ScheduleError::UnknownTimeZone("Mars/Olympus".into()));
        assert!(error
            .to_string()
            .contains("unknown time zone \"Mars/Olympus\""));
        assert!(matches!(
            CheckInWindow::new(NaiveTime::MIN, TimeDelta::hours(1), "shanghai"),
            Err(ScheduleError::UnknownTimeZone(_))
        ));
    }

    #[test]
    fn empty_and_overlong_rules_are_refused() {
        assert_eq!(error_of(""), ScheduleError::EmptyRule);
        assert_eq!(error_of("RRULE:"), ScheduleError::EmptyRule);
        assert_eq!(error_of(" ; ;"), ScheduleError::EmptyRule);
        let long = format!("FREQ=DAILY;{}", "BYHOUR=8;".repeat(60));
        assert_eq!(
            error_of(&long),
            ScheduleError::RuleTooLong {
                length: long.trim().len()
            }
        );
    }

    #[test]
    fn rule_without_freq_is_refused() {
        assert_eq!(
            error_of("INTERVAL=2;BYHOUR=9"),
            ScheduleError::MissingFrequency
        );
    }

    #[test]
    fn each_malformed_part_is_named() {
        let cases = [
            ("FREQ=FORTNIGHTLY", "FREQ=FORTNIGHTLY", "FREQ must be"),
            ("FREQ=DAILY;INTERVAL=0", "INTERVAL=0", "from 1 to 366"),
            ("FREQ=DAILY;INTERVAL=two", "INTERVAL=two", "whole number"),
            ("FREQ=DAILY;COUNT=0", "COUNT=0", "from 1 to 10000"),
            ("FREQ=DAILY;BYHOUR=24", "BYHOUR=24", "an hour"),
            ("FREQ=DAILY;BYMINUTE=60", "BYMINUTE=60", "a minute"),
            ("FREQ=DAILY;BYHOUR=8,,20", "BYHOUR=8,,20", "empty item"),
            ("FREQ=WEEKLY;BYDAY=XX", "BYDAY=XX", "not a weekday"),
            (
                "FREQ=MONTHLY;BYDAY=6MO",
                "BYDAY=6MO",
                "position in the month",
            ),
            ("FREQ=MONTHLY;BYDAY=0MO", "BYDAY=0MO", "cannot be 0"),
            ("FREQ=WEEKLY;BYDAY=1MO", "BYDAY=1MO", "needs FREQ=MONTHLY"),
            ("FREQ=MONTHLY;BYMONTHDAY=0", "BYMONTHDAY=0", "1 to 31"),
            (
                "FREQ=MONTHLY;BYMONTHDAY=32",
                "BYMONTHDAY=32",
                "a day of the month",
            ),
            ("FREQ=WEEKLY;BYMONTHDAY=1", "BYMONTHDAY", "FREQ=WEEKLY"),
            (
                "FREQ=DAILY;UNTIL=2026-12-31",
                "UNTIL=2026-12-31",
                "UNTIL must be",
            ),
            (
                "FREQ=DAILY;UNTIL=20261231T2500Z",
                "UNTIL=20261231T2500Z",
                "UNTIL must be",
            ),
            ("FREQ=DAILY;WKST=XX", "WKST=XX", "not a weekday"),
            ("FREQ=DAILY;EVERYDAY", "EVERYDAY", "NAME=VALUE"),
            ("FREQ=DAILY;COLOUR=RED", "COLOUR=RED", "unknown rule part"),
        ];
        for (rule, expected_part, expected_reason) in cases {
            match error_of(rule) {
                ScheduleError::InvalidPart { part, reason } => {
                    assert_eq!(part, expected_part, "{rule}");
                    assert!(reason.contains(expected_reason), "{rule}: {reason}");
                }
                other => panic!("{rule}: expected InvalidPart, got {other:?}"),
            }
        }
    }

    #[test]
    fn unsupported_parts_are_named() {
        for (rule, expected_part) in [
            ("FREQ=MONTHLY;BYDAY=MO;BYSETPOS=-1", "BYSETPOS=-1"),
            ("FREQ=DAILY;BYMONTH=1", "BYMONTH=1"),
            ("FREQ=DAILY;BYSECOND=0", "BYSECOND=0"),
            ("FREQ=YEARLY", "FREQ=YEARLY"),
        ] {
            match error_of(rule) {
                ScheduleError::UnsupportedPart { part, .. } => assert_eq!(part, expected_part),
                other => panic!("{rule}: expected UnsupportedPart, got {other:?}"),
            }
        }
        let message = error_of("FREQ=YEARLY").to_string();
        assert!(
            message.contains("not supported") && message.contains("INTERVAL=12"),
            "{message}"
        );
    }

    #[test]
    fn duplicate_part_is_refused() {
        assert_eq!(
            error_of("FREQ=DAILY;freq=WEEKLY"),
            ScheduleError::DuplicatePart {
                name: "FREQ".into()
            }
        );
    }

    #[test]
    fn high_frequencies_are_refused_as_too_frequent_for_care() {
        for frequency in ["HOURLY", "MINUTELY", "SECONDLY"] {
            let error = error_of(&format!("FREQ={frequency};INTERVAL=1"));
            assert_eq!(
                error,
                ScheduleError::TooFrequent {
                    frequency: frequency.into()
                }
            );
            assert!(error
                .to_string()
                .contains("too frequent for a care schedule"));
        }
    }

    #[test]
    fn more_than_twenty_four_times_a_day_is_refused() {
        assert_eq!(
            error_of("FREQ=DAILY;BYHOUR=0,1,2,3,4,5,6,7,8,9,10,11,12;BYMINUTE=0,30"),
            ScheduleError::TooManyTimesPerDay { times: 26 }
        );
    }

    #[test]
    fn count_with_until_is_refused() {
        assert_eq!(
            error_of("FREQ=DAILY;COUNT=3;UNTIL=20261231"),
            ScheduleError::CountWithUntil
        );
    }

    #[test]
    fn rules_that_never_occur_are_refused() {
        let start = local("2026-04-01 09:00");
        for rule in [
            "FREQ=DAILY;UNTIL=20260301T000000Z",
            "FREQ=DAILY;UNTIL=20260401T085959",
            // April every year: never a 31st.
            "FREQ=MONTHLY;INTERVAL=12;BYMONTHDAY=31",
            // Every seventh day from a Wednesday: never a Tuesday.
            "FREQ=DAILY;INTERVAL=7;BYDAY=TU",
            // February every year: never a 30th.
            "FREQ=MONTHLY;INTERVAL=12;BYMONTHDAY=30;BYDAY=MO",
        ] {
            let start = if rule.contains("BYDAY") {
                local("2026-02-01 09:00")
            } else {
                start
            };
            assert_eq!(
                Recurrence::parse(rule, start, SHANGHAI).expect_err(rule),
                ScheduleError::NeverOccurs { start },
                "{rule}"
            );
        }
    }

    #[test]
    fn check_in_window_opens_at_nine_local_across_spring_forward() {
        let window = CheckInWindow::new(
            NaiveTime::from_hms_opt(9, 0, 0).expect("time"),
            TimeDelta::hours(2),
            NEW_YORK,
        )
        .expect("valid");
        let before = window.window_on(NaiveDate::from_ymd_opt(2026, 3, 7).expect("date"));
        assert_eq!(
            (before.opens_at, before.closes_at),
            (utc("2026-03-07T14:00:00Z"), utc("2026-03-07T16:00:00Z"))
        );
        let after = window.window_on(NaiveDate::from_ymd_opt(2026, 3, 8).expect("date"));
        assert_eq!(
            (after.opens_at, after.closes_at),
            (utc("2026-03-08T13:00:00Z"), utc("2026-03-08T15:00:00Z"))
        );
    }

    #[test]
    fn check_in_window_keeps_its_full_length_when_the_clocks_change_inside_it() {
        // Opens 00:30 EDT on 2026-11-01; three hours later the wall clock says 02:30 EST.
        let window = CheckInWindow::new(
            NaiveTime::from_hms_opt(0, 30, 0).expect("time"),
            TimeDelta::hours(3),
            NEW_YORK,
        )
        .expect("valid");
        let slot = window.window_on(NaiveDate::from_ymd_opt(2026, 11, 1).expect("date"));
        assert_eq!(
            (slot.opens_at, slot.closes_at),
            (utc("2026-11-01T04:30:00Z"), utc("2026-11-01T07:30:00Z"))
        );
        // Opening at a skipped time opens when the clocks resume.
        let skipped = CheckInWindow::new(
            NaiveTime::from_hms_opt(2, 30, 0).expect("time"),
            TimeDelta::minutes(30),
            NEW_YORK,
        )
        .expect("valid");
        let slot = skipped.window_on(NaiveDate::from_ymd_opt(2026, 3, 8).expect("date"));
        assert_eq!(
            (slot.opens_at, slot.closes_at),
            (utc("2026-03-08T07:00:00Z"), utc("2026-03-08T07:30:00Z"))
        );
    }

    #[test]
    fn current_or_next_check_in_window() {
        let window = CheckInWindow::new(
            NaiveTime::from_hms_opt(22, 0, 0).expect("time"),
            TimeDelta::hours(4),
            LONDON,
        )
        .expect("valid");
        // 00:30 BST on 2 June: the window of 1 June (21:00Z to 01:00Z) is still open.
        let open = window.current_or_next(utc("2026-06-01T23:30:00Z"));
        assert_eq!(
            open.date,
            NaiveDate::from_ymd_opt(2026, 6, 1).expect("date")
        );
        assert!(open.contains(utc("2026-06-01T23:30:00Z")));
        // 02:00 BST on 2 June: closed; the next opens at 22:00 BST that day.
        let next = window.current_or_next(utc("2026-06-02T01:00:00Z"));
        assert_eq!(
            next.date,
            NaiveDate::from_ymd_opt(2026, 6, 2).expect("date")
        );
        assert_eq!(next.opens_at, utc("2026-06-02T21:00:00Z"));
        assert!(!next.contains(utc("2026-06-02T01:00:00Z")));
        assert!(!next.contains(next.closes_at));
    }

    #[test]
    fn check_in_window_length_must_be_sensible() {
        let nine = NaiveTime::from_hms_opt(9, 0, 0).expect("time");
        assert_eq!(
            CheckInWindow::new(nine, TimeDelta::zero(), SHANGHAI),
            Err(ScheduleError::InvalidWindowLength { minutes: 0 })
        );
        assert_eq!(
            CheckInWindow::new(nine, TimeDelta::hours(13), SHANGHAI),
            Err(ScheduleError::InvalidWindowLength { minutes: 780 })
        );
        assert!(CheckInWindow::new(nine, MAX_WINDOW_LENGTH, SHANGHAI).is_ok());
    }

    const PROPERTY_ZONES: [&str; 6] = [
        NEW_YORK,
        LONDON,
        SHANGHAI,
        // Half-hour daylight saving.
        "Australia/Lord_Howe",
        // Changes at midnight.
        "America/Santiago",
        "Pacific/Apia",
    ];

    prop_compose! {
        fn rule_text()(
            frequency in prop::sample::select(vec!["DAILY", "WEEKLY", "MONTHLY"]),
            interval in 1u16..=3,
            by_day in prop::option::of(prop::sample::subsequence(vec!["MO", "TU", "WE", "TH", "FR", "SA", "SU"], 1..=3)),
            numbered_day in prop::option::weighted(0.3, prop::sample::select(vec!["1MO", "2TU", "-1FR", "5SU", "-2WE"])),
            by_month_day in prop::option::weighted(0.3, prop::sample::subsequence(vec!["1", "15", "29", "30", "31", "-1", "-3"], 1..=2)),
            by_hour in prop::option::of(prop::sample::subsequence(vec!["0", "1", "2", "3", "8", "12", "23"], 1..=3)),
            by_minute in prop::option::of(prop::sample::subsequence(vec!["0", "15", "30", "59"], 1..=2)),
            week_start in prop::sample::select(vec!["MO", "SU", "WE"]),
        ) -> String {
            let mut rule = format!("FREQ={frequency};INTERVAL={interval};WKST={week_start}");
            match (frequency, numbered_day, by_day) {
                ("MONTHLY", Some(numbered), _) => rule += &format!(";BYDAY={numbered}"),
                (_, _, Some(days)) => rule += &format!(";BYDAY={}", days.join(",")),
                _ => {}
            }
            if let (false, Some(days)) = (frequency == "WEEKLY", by_month_day) {
                rule += &format!(";BYMONTHDAY={}", days.join(","));
            }
            if let Some(hours) = by_hour {
                rule += &format!(";BYHOUR={}", hours.join(","));
            }
            if let Some(minutes) = by_minute {
                rule += &format!(";BYMINUTE={}", minutes.join(","));
            }
            rule
        }
    }

    fn start_between_2010_and_2026() -> impl Strategy<Value = NaiveDateTime> {
        (0i64..6000, 0i64..1440).prop_map(|(days, minutes)| {
            local("2010-01-01 00:00") + TimeDelta::days(days) + TimeDelta::minutes(minutes)
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Skipping ahead to the query's period gives exactly what counting from the start gives.
        #[test]
        fn queries_agree_with_expanding_from_the_start(
            rule in rule_text(),
            start in start_between_2010_and_2026(),
            zone in prop::sample::select(PROPERTY_ZONES.to_vec()),
            days_after_start in -30i64..3000,
            length_in_hours in 1i64..2000,
        ) {
            let parsed = Recurrence::parse(&rule, start, zone);
            prop_assume!(parsed.is_ok());
            let recurrence = parsed.expect("checked above");
            let from = start.and_utc() + TimeDelta::days(days_after_start);
            let to = from + TimeDelta::hours(length_in_hours);
            let expected: Vec<_> = recurrence
                .occurrences(recurrence.start_local())
                .skip_while(|instant| *instant < from)
                .take_while(|instant| *instant < to)
                .take(MAX_OCCURRENCES_PER_CALL)
                .collect();
            prop_assert_eq!(recurrence.occurrences_between(from, to), expected.clone());
            let expected_next = recurrence
                .occurrences(recurrence.start_local())
                .find(|instant| *instant > from);
            prop_assert_eq!(recurrence.next_after(from), expected_next);
            prop_assert!(expected.windows(2).all(|pair| pair[0] < pair[1]));
        }

        /// A daily time is that wall-clock time every day, its first instant when repeated, and
        /// the end of the gap when skipped.
        #[test]
        fn daily_time_keeps_its_wall_clock_time(
            hour in 0u32..24,
            minute in 0u32..60,
            zone in prop::sample::select(PROPERTY_ZONES[..5].to_vec()),
            days_after_2020 in 0i64..2500,
        ) {
            let time_zone: Tz = zone.parse().expect("known zone");
            let start = local("2020-01-01 00:00") + TimeDelta::days(days_after_2020);
            let time = NaiveTime::from_hms_opt(hour, minute, 0).expect("valid time");
            let rule = format!("FREQ=DAILY;BYHOUR={hour};BYMINUTE={minute}");
            let recurrence = Recurrence::parse(&rule, start, zone).expect("valid rule");
            let from = start.and_utc();
            let instants = recurrence.occurrences_between(from, from + TimeDelta::days(400));
            prop_assert!(instants.len() >= 398);
            for pair in instants.windows(2) {
                let apart = pair[1] - pair[0];
                prop_assert!(apart >= TimeDelta::hours(22) && apart <= TimeDelta::hours(26), "{:?}", pair);
            }
            for instant in instants {
                let wall_clock = instant.with_timezone(&time_zone).naive_local();
                if wall_clock.time() == time {
                    prop_assert_eq!(time_zone.from_local_datetime(&wall_clock).earliest().map(|t| t.with_timezone(&Utc)), Some(instant));
                } else {
                    let just_before = (instant - TimeDelta::seconds(1)).with_timezone(&time_zone).naive_local();
                    let skipped = [just_before.date(), wall_clock.date()]
                        .into_iter()
                        .map(|date| date.and_time(time))
                        .find(|intended| just_before < *intended && *intended < wall_clock);
                    prop_assert!(skipped.is_some(), "{} is not at {} nor after a gap", wall_clock, time);
                    let skipped = skipped.expect("checked above");
                    prop_assert!(time_zone.from_local_datetime(&skipped).earliest().is_none());
                }
            }
        }
    }

    #[test]
    fn a_skipped_day_happens_when_the_clocks_resume() {
        // Samoa skipped 30 December 2011: 23:59:59 on the 29th (UTC-10) was followed by 00:00 on
        // the 31st (UTC+14).
        let instants = occurrences(
            "FREQ=DAILY",
            "2011-12-29 09:00",
            "Pacific/Apia",
            "2011-12-29T00:00:00Z",
            "2012-01-01T00:00:00Z",
        );
        assert_eq!(
            instants,
            [
                "2011-12-29T19:00:00Z",
                // The 30th's 09:00: 00:00 on the 31st.
                "2011-12-30T10:00:00Z",
                "2011-12-30T19:00:00Z",
                "2011-12-31T19:00:00Z"
            ]
        );
    }
}
