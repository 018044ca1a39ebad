//! Log lines in the reference implementation's format, so its log parser (and ours,
//! [`crate::metrics`]) can read them:
//!
//! ```text
//! [2026-11-24T10:15:30.123Z INFO  narwhal::primary] Created B3(1) -> 6ZgE...=
//! ```

use std::{
    fs::File,
    io::{BufWriter, Write},
    path::Path,
    sync::{Arc, Mutex},
    time::{SystemTime, UNIX_EPOCH},
};

/// A log sink: a file, or nothing. Cloning shares the file.
#[derive(Clone, Default)]
pub struct Logger {
    file: Option<Arc<Mutex<BufWriter<File>>>>,
    target: &'static str,
}

impl std::fmt::Debug for Logger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Logger")
            .field("enabled", &self.file.is_some())
            .field("target", &self.target)
            .finish()
    }
}

impl Logger {
    /// A logger writing to `path` (created or truncated), lines tagged with `target`.
    pub fn to_file(path: &Path, target: &'static str) -> std::io::Result<Self> {
        let file = File::create(path)?;
        Ok(Self {
            file: Some(Arc::new(Mutex::new(BufWriter::with_capacity(
                1 << 16,
                file,
            )))),
            target,
        })
    }

    /// A logger that writes nothing.
    pub fn disabled() -> Self {
        Self::default()
    }

    /// Whether lines go anywhere.
    pub fn is_enabled(&self) -> bool {
        self.file.is_some()
    }

    /// Writes one `INFO` line with the current time.
    pub fn info(&self, message: std::fmt::Arguments<'_>) {
        self.line("INFO ", message);
    }

    /// Writes one `WARN` line with the current time.
    pub fn warn(&self, message: std::fmt::Arguments<'_>) {
        self.line("WARN ", message);
    }

    fn line(&self, level: &str, message: std::fmt::Arguments<'_>) {
        if let Some(file) = &self.file {
            let stamp = timestamp(SystemTime::now());
            let mut file = file.lock().unwrap_or_else(|e| e.into_inner());
            // A full disk loses log lines, not the node.
            let _ = writeln!(file, "[{stamp} {level} {}] {message}", self.target);
        }
    }

    /// Writes buffered lines to the file.
    pub fn flush(&self) {
        if let Some(file) = &self.file {
            let _ = file.lock().unwrap_or_else(|e| e.into_inner()).flush();
        }
    }
}

/// `time` as `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC, millisecond precision).
pub fn timestamp(time: SystemTime) -> String {
    let ms = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis()) as i64;
    let (secs, millis) = (ms.div_euclid(1000), ms.rem_euclid(1000));
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Milliseconds since the Unix epoch of a [`timestamp`], or `None` if it is not one.
pub fn parse_timestamp(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() < 20 || !text.ends_with('Z') {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<i64> { text.get(range)?.parse().ok() };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let fraction = text.get(20..text.len() - 1)?;
    let millis = match fraction.len() {
        0 => 0,
        n => {
            let digits: i64 = fraction.get(..n.min(3))?.parse().ok()?;
            digits * 10i64.pow(3 - n.min(3) as u32)
        }
    };
    let days = days_from_civil(year, month, day);
    Some(((days * 86_400 + hour * 3600 + minute * 60 + second) * 1000) + millis)
}

// Howard Hinnant's civil calendar algorithms (public domain).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = year - i64::from(month <= 2);
    let era = year.div_euclid(400);
    let yoe = year - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn timestamps_round_trip() {
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_795_000_123_456);
        let shown = timestamp(t);
        assert_eq!(shown, "2026-11-18T11:08:43.456Z");
        assert_eq!(parse_timestamp(&shown), Some(1_795_000_123_456));
        assert_eq!(
            parse_timestamp("2024-02-29T23:59:59.9Z"),
            Some(1_709_251_199_900)
        );
        assert_eq!(parse_timestamp("yesterday"), None);
    }
}
