//! Asia/Jakarta calendar arithmetic on journaled timestamps. Jakarta is UTC+7 with no daylight
//! saving (none since 1964), so a fixed offset is exact for every timestamp the engine accepts.

use crate::ids::Timestamp;

pub const JAKARTA_UTC_OFFSET_SECONDS: u64 = 7 * 3600;
const NANOS_PER_SECOND: u64 = 1_000_000_000;
const SECONDS_PER_DAY: u64 = 86_400;

/// A calendar date as days since 1970-01-01. Used for pocket target dates.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[rkyv(derive(Debug))]
pub struct Date(pub u32);

impl Date {
    /// The date for a proleptic-Gregorian year, month and day, or `None` if there is no such
    /// day or it is outside 1970..=9999.
    pub fn from_ymd(year: u32, month: u32, day: u32) -> Option<Date> {
        if !(1970..=9999).contains(&year) || !(1..=12).contains(&month) || day == 0 {
            return None;
        }
        if day > days_in_month(year, month) {
            return None;
        }
        let days = days_from_civil(i64::from(year), month, day);
        u32::try_from(days).ok().map(Date)
    }

    pub fn to_ymd(self) -> (u32, u32, u32) {
        let (year, month, day) = civil_from_days(i64::from(self.0));
        // Dates are built from 1970..=9999 or from u32 day numbers, both non-negative years.
        (u32::try_from(year).unwrap_or(u32::MAX), month, day)
    }
}

/// The Jakarta calendar day a timestamp falls on.
pub fn jakarta_date(timestamp: Timestamp) -> Date {
    let seconds = timestamp.0 / NANOS_PER_SECOND + JAKARTA_UTC_OFFSET_SECONDS;
    let day = seconds / SECONDS_PER_DAY;
    // u64::MAX nanoseconds is year 2554, about 213 000 days: always fits.
    Date(u32::try_from(day).unwrap_or(u32::MAX))
}

/// A month number that increases by one per calendar month (year * 12 + month - 1).
pub fn month_index(date: Date) -> u32 {
    let (year, month, _) = date.to_ymd();
    year * 12 + (month - 1)
}

/// The first instant (UTC nanoseconds) of a Jakarta calendar date.
pub fn jakarta_midnight(date: Date) -> Timestamp {
    let seconds = u64::from(date.0) * SECONDS_PER_DAY;
    Timestamp((seconds - JAKARTA_UTC_OFFSET_SECONDS.min(seconds)) * NANOS_PER_SECOND)
}

fn is_leap(year: u32) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if is_leap(year) => 29,
        _ => 28,
    }
}

// Howard Hinnant's days_from_civil / civil_from_days: exact for the proleptic Gregorian calendar.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = if year >= 0 { year } else { year - 399 } / 400;
    let year_of_era = year - era * 400;
    let month_shifted = i64::from(if month > 2 { month - 3 } else { month + 9 });
    let day_of_year = (153 * month_shifted + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_shifted = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_shifted + 2) / 5 + 1) as u32;
    let month = if month_shifted < 10 {
        month_shifted + 3
    } else {
        month_shifted - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(year: u32, month: u32, day: u32, hour: u64, minute: u64) -> Timestamp {
        let date = Date::from_ymd(year, month, day).expect("valid test date");
        let seconds = u64::from(date.0) * SECONDS_PER_DAY + hour * 3600 + minute * 60;
        Timestamp(seconds * NANOS_PER_SECOND)
    }

    #[test]
    fn jakarta_day_turns_at_17_00_utc() {
        let before = utc(2026, 11, 24, 16, 59);
        let after = utc(2026, 11, 24, 17, 0);
        assert_eq!(jakarta_date(before).to_ymd(), (2026, 11, 24));
        assert_eq!(jakarta_date(after).to_ymd(), (2026, 11, 25));
        assert_eq!(
            jakarta_midnight(Date::from_ymd(2026, 11, 25).expect("date")),
            after
        );
    }

    #[test]
    fn month_index_turns_at_jakarta_month_start() {
        let last = jakarta_date(utc(2026, 11, 30, 16, 59));
        let first = jakarta_date(utc(2026, 11, 30, 17, 0));
        assert_eq!(first.to_ymd(), (2026, 12, 1));
        assert_eq!(month_index(first), month_index(last) + 1);
    }

    #[test]
    fn civil_round_trip_over_four_centuries() {
        for day in (0..146_097 * 2).step_by(7) {
            let (y, m, d) = Date(day).to_ymd();
            assert_eq!(Date::from_ymd(y, m, d), Some(Date(day)), "day {day}");
        }
        assert_eq!(
            Date::from_ymd(2024, 2, 29).map(Date::to_ymd),
            Some((2024, 2, 29))
        );
        assert_eq!(Date::from_ymd(2025, 2, 29), None);
        assert_eq!(Date::from_ymd(1900, 3, 1), None);
        assert_eq!(Date::from_ymd(2026, 13, 1), None);
    }
}
