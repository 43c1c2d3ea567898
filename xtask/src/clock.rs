//! The time as this tool writes it in file names and records: UTC, `20261125T064430Z` (ISO 8601's
//! basic format), formatted by the `time` crate.

use time::format_description::well_known::Iso8601;
use time::format_description::well_known::iso8601::{Config, EncodedConfig, TimePrecision};
use time::{OffsetDateTime, PrimitiveDateTime};

/// `20261125T064430Z`.
const BASIC: EncodedConfig = Config::DEFAULT
    .set_use_separators(false)
    .set_time_precision(TimePrecision::Second {
        decimal_digits: None,
    })
    .encode();

/// `2026-11-25T06:44Z`.
const TO_THE_MINUTE: EncodedConfig = Config::DEFAULT
    .set_time_precision(TimePrecision::Minute {
        decimal_digits: None,
    })
    .encode();

/// UTC time as `20261125T064430Z`, for file names and records.
pub fn timestamp() -> String {
    basic(OffsetDateTime::now_utc())
}

/// Milliseconds since the Unix epoch, as the stand-in and the lock's records count time.
pub fn unix_ms() -> u64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as u64
}

/// UTC time to the minute as `2026-11-25T06:44Z`, for the benchmarks' page.
pub fn minute() -> String {
    OffsetDateTime::now_utc()
        .format(&Iso8601::<TO_THE_MINUTE>)
        .unwrap_or_default()
}

/// Whether `text` is a real UTC time as [`timestamp`] writes it, in lower case as an image's
/// tag has it: `20261125t064430z`.
pub fn is_tag_time(text: &str) -> bool {
    time::format_description::parse_borrowed::<2>("[year][month][day]t[hour][minute][second]z")
        .is_ok_and(|format| text.len() == 16 && PrimitiveDateTime::parse(text, &format).is_ok())
}

fn basic(time: OffsetDateTime) -> String {
    // Fails only for a year past 9999.
    time.format(&Iso8601::<BASIC>).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(secs).unwrap()
    }

    #[test]
    fn timestamps_are_utc() {
        assert_eq!(basic(at(0)), "19700101T000000Z");
        assert_eq!(basic(at(1_795_588_876)), "20261125T064116Z");
        assert_eq!(basic(at(951_782_400)), "20000229T000000Z");
        assert_eq!(
            at(1_795_588_876).format(&Iso8601::<TO_THE_MINUTE>).unwrap(),
            "2026-11-25T06:41Z"
        );
    }

    #[test]
    fn tag_times_are_real_times() {
        assert!(is_tag_time(&basic(at(1_795_588_876)).to_ascii_lowercase()));
        assert!(is_tag_time("20000229t000000z"));
        for bad in [
            "20261125T064116Z",
            "2026112t101010z",
            "20261325t101010z",
            "20010229t000000z",
            "20261125t246116z",
            "+20261125t064116z",
            "20261125t064116z0",
        ] {
            assert!(!is_tag_time(bad), "{bad}");
        }
    }
}
