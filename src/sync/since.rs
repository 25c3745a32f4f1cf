//! `catch-up --since`: a duration back from now (`90m`, `12h`, `3d`) or a Unix time.

/// Why a `--since` value cannot be used; the message names the accepted forms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--since {0:?} is neither a duration (90m, 12h, 3d) nor a Unix time")]
pub struct InvalidSince(pub String);

/// The Unix time `raw` names, `now` being the current one. A bare number is a Unix time;
/// a number followed by `s`, `m`, `h` or `d` is that long before `now`.
pub fn parse_since(raw: &str, now: i64) -> Result<i64, InvalidSince> {
    let invalid = || InvalidSince(raw.to_owned());
    let text = raw.trim();
    if text.is_empty() {
        return Err(invalid());
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().map_err(|_| invalid());
    }
    let (digits, unit) = text.split_at(text.len() - 1);
    let seconds_per_unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => return Err(invalid()),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    let count: i64 = digits.parse().map_err(|_| invalid())?;
    count
        .checked_mul(seconds_per_unit)
        .and_then(|back| now.checked_sub(back))
        .ok_or_else(invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_count_back_from_now_and_numbers_are_unix_times() {
        let now = 1_700_000_000;
        assert_eq!(parse_since("90m", now), Ok(now - 5_400));
        assert_eq!(parse_since("12h", now), Ok(now - 43_200));
        assert_eq!(parse_since("3d", now), Ok(now - 259_200));
        assert_eq!(parse_since("45s", now), Ok(now - 45));
        assert_eq!(parse_since("1699990000", now), Ok(1_699_990_000));
        for bad in [
            "",
            "d",
            "3w",
            "-3d",
            "3.5h",
            "h3",
            "1e9",
            "99999999999999999999d",
        ] {
            assert_eq!(
                parse_since(bad, now),
                Err(InvalidSince(bad.to_owned())),
                "{bad}"
            );
        }
    }
}
