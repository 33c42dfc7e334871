//! The update window of a provisioning scheme (`Set-ProvVMUpdateTimeWindow`): when existing
//! machines may be rebuilt from a newer scheme version on their next start.
//!
//! Everything here is pure: the caller passes the current time in.

use jiff::{SignedDuration, Timestamp};

use crate::api::UpdateWindow;

/// `durationMinutes` value that keeps the window open until the next start time is set.
pub const UNTIL_NEXT_START: i64 = -1;

/// Why an update window could not be evaluated.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    /// `startTime` is not an RFC 3339 timestamp.
    #[error("spec.updateWindow.startTime {value:?} is not an RFC 3339 timestamp: {detail}")]
    InvalidStartTime {
        /// The rejected value.
        value: String,
        /// What the parser said.
        detail: String,
    },
    /// `durationMinutes` is below -1.
    #[error(
        "spec.updateWindow.durationMinutes is {value}; it must be -1 (until the next start) or a number of minutes >= 0"
    )]
    InvalidDuration {
        /// The rejected value.
        value: i64,
    },
}

impl mcs_domain::Reason for WindowError {
    fn reason(&self) -> &'static str {
        match self {
            Self::InvalidStartTime { .. } => "InvalidUpdateWindowStartTime",
            Self::InvalidDuration { .. } => "InvalidUpdateWindowDuration",
        }
    }
}

/// Whether the window is open at `now`.
///
/// No window means machines are never updated (the SDK's behaviour before
/// `Set-ProvVMUpdateTimeWindow`). A window is open from `startTime` (inclusive) for
/// `durationMinutes` (exclusive end); `-1` keeps it open from `startTime` on; `0` never opens.
///
/// # Errors
///
/// [`WindowError`] when the start time does not parse or the duration is below -1.
pub fn is_open(window: Option<&UpdateWindow>, now: Timestamp) -> Result<bool, WindowError> {
    let Some(window) = window else {
        return Ok(false);
    };
    let start: Timestamp =
        window
            .start_time
            .parse()
            .map_err(|e: jiff::Error| WindowError::InvalidStartTime {
                value: window.start_time.clone(),
                detail: e.to_string(),
            })?;
    if now < start {
        return Ok(false);
    }
    match window.duration_minutes {
        UNTIL_NEXT_START => Ok(true),
        minutes if minutes < 0 => Err(WindowError::InvalidDuration { value: minutes }),
        minutes => {
            let end = start
                .saturating_add(SignedDuration::from_mins(minutes))
                .map_err(|e| WindowError::InvalidStartTime {
                    value: window.start_time.clone(),
                    detail: e.to_string(),
                })?;
            Ok(now < end)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(start: &str, minutes: i64) -> UpdateWindow {
        UpdateWindow {
            start_time: start.into(),
            duration_minutes: minutes,
        }
    }

    fn at(text: &str) -> Timestamp {
        text.parse().expect("valid timestamp")
    }

    #[test]
    fn no_window_is_never_open() {
        assert_eq!(is_open(None, at("2026-11-28T23:00:00Z")), Ok(false));
    }

    #[test]
    fn open_from_start_for_the_duration() {
        let w = window("2026-11-28T22:00:00Z", 240);
        assert_eq!(is_open(Some(&w), at("2026-11-28T21:59:59Z")), Ok(false));
        assert_eq!(is_open(Some(&w), at("2026-11-28T22:00:00Z")), Ok(true));
        assert_eq!(is_open(Some(&w), at("2026-11-29T01:59:59Z")), Ok(true));
        assert_eq!(is_open(Some(&w), at("2026-11-29T02:00:00Z")), Ok(false));
    }

    #[test]
    fn minus_one_stays_open_until_the_next_start() {
        let w = window("2026-11-28T22:00:00+01:00", -1);
        assert_eq!(is_open(Some(&w), at("2026-11-28T20:59:00Z")), Ok(false));
        assert_eq!(is_open(Some(&w), at("2026-11-28T21:00:00Z")), Ok(true));
        assert_eq!(is_open(Some(&w), at("2036-01-01T00:00:00Z")), Ok(true));
    }

    #[test]
    fn zero_minutes_never_opens() {
        let w = window("2026-11-28T22:00:00Z", 0);
        assert_eq!(is_open(Some(&w), at("2026-11-28T22:00:00Z")), Ok(false));
    }

    #[test]
    fn bad_values_are_errors_with_reasons() {
        use mcs_domain::Reason;
        let bad = is_open(Some(&window("tomorrow", 10)), at("2026-11-28T22:00:00Z"));
        assert_eq!(
            bad.as_ref().map_err(Reason::reason),
            Err("InvalidUpdateWindowStartTime")
        );
        let bad = is_open(
            Some(&window("2026-11-28T22:00:00Z", -5)),
            at("2026-11-28T22:00:00Z"),
        );
        assert_eq!(
            bad.as_ref().map_err(Reason::reason),
            Err("InvalidUpdateWindowDuration")
        );
    }
}
