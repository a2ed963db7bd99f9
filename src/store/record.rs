//! The rows of the prediction log: what the request path records
//! ([`PredictionRow`]) and what a look-up answers ([`StoredPrediction`], JSON
//! with `created_at` as an RFC 3339 string).

use std::fmt::Display;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Serialize, Serializer};
use uuid::Uuid;

/// One prediction request, as the request path records it.
#[derive(Debug, Clone, PartialEq)]
pub struct PredictionRow {
    /// The row's key: made by the server for this prediction alone.
    pub prediction_id: Uuid,
    /// The request's id: the client's `x-request-id`, or one the server made.
    pub request_id: String,
    /// True when the client chose `request_id` (so it may be guessable).
    pub request_id_from_client: bool,
    pub model: String,
    pub model_version: String,
    /// Hex SHA-256 of the request's inputs.
    pub input_sha256: String,
    /// `"ok"` or `"error"`.
    pub status: &'static str,
    pub http_status: u16,
    pub error: Option<String>,
    pub queue_ms: Option<f64>,
    pub inference_ms: Option<f64>,
    pub total_ms: f64,
    pub batch_size: Option<u32>,
    pub replica: Option<u32>,
    /// `"l1"`, `"l2"`, or `None` when no cache answered.
    pub cache_level: Option<&'static str>,
    pub created_at: SystemTime,
    /// The request's span in a trace (traces on, [`crate::telemetry`]): the
    /// span that writes the row links to it. Not stored.
    pub trace: Option<opentelemetry::trace::SpanContext>,
}

impl PredictionRow {
    /// Makes the row exactly what PostgreSQL will store, so that a row read
    /// from the buffer equals the same row read back from the table: NUL
    /// characters (which `text` cannot hold) become U+FFFD, and `created_at`
    /// is truncated to the microsecond (the precision of `timestamptz`).
    pub(crate) fn normalize(&mut self) {
        for text in [
            &mut self.request_id,
            &mut self.model,
            &mut self.model_version,
            &mut self.input_sha256,
        ] {
            scrub(text);
        }
        if let Some(error) = &mut self.error {
            scrub(error);
        }
        self.created_at = truncate_to_micros(self.created_at);
    }
}

fn scrub(text: &mut String) {
    if text.contains('\0') {
        *text = text.replace('\0', "\u{FFFD}");
    }
}

fn truncate_to_micros(time: SystemTime) -> SystemTime {
    match time.duration_since(UNIX_EPOCH) {
        Ok(since) => UNIX_EPOCH + Duration::new(since.as_secs(), since.subsec_micros() * 1_000),
        // Before 1970: left alone; PostgreSQL rounds it its own way.
        Err(_) => time,
    }
}

/// A recorded prediction, as [`super::PredictionLog::get`] answers it.
/// Serializes to JSON with the same field names as [`PredictionRow`];
/// `prediction_id` is the hyphenated UUID, `request_id` null for rows
/// written before request ids were stored, `created_at` an RFC 3339 UTC
/// string with microseconds, the `_ms` fields numbers (or null).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredPrediction {
    #[serde(serialize_with = "as_string")]
    pub prediction_id: Uuid,
    pub request_id: Option<String>,
    pub request_id_from_client: bool,
    pub model: String,
    pub model_version: String,
    pub input_sha256: String,
    pub status: String,
    pub http_status: u16,
    pub error: Option<String>,
    pub queue_ms: Option<f64>,
    pub inference_ms: Option<f64>,
    pub total_ms: f64,
    pub batch_size: Option<u32>,
    pub replica: Option<u32>,
    pub cache_level: Option<String>,
    #[serde(serialize_with = "as_rfc3339")]
    pub created_at: SystemTime,
}

impl From<PredictionRow> for StoredPrediction {
    fn from(row: PredictionRow) -> Self {
        StoredPrediction {
            prediction_id: row.prediction_id,
            request_id: Some(row.request_id),
            request_id_from_client: row.request_id_from_client,
            model: row.model,
            model_version: row.model_version,
            input_sha256: row.input_sha256,
            status: row.status.to_string(),
            http_status: row.http_status,
            error: row.error,
            queue_ms: row.queue_ms,
            inference_ms: row.inference_ms,
            total_ms: row.total_ms,
            batch_size: row.batch_size,
            replica: row.replica,
            cache_level: row.cache_level.map(str::to_string),
            created_at: row.created_at,
        }
    }
}

fn as_string<T: Display, S: Serializer>(value: &T, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(value)
}

fn as_rfc3339<S: Serializer>(time: &SystemTime, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&rfc3339(*time))
}

/// `time` in UTC as RFC 3339 with microseconds: `2024-02-29T13:05:09.000123Z`.
pub fn rfc3339(time: SystemTime) -> String {
    let micros: i128 = match time.duration_since(UNIX_EPOCH) {
        Ok(after) => after.as_micros() as i128,
        Err(before) => -(before.duration().as_micros() as i128),
    };
    let seconds = micros.div_euclid(1_000_000) as i64;
    let fraction = micros.rem_euclid(1_000_000);
    let (days, second_of_day) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{fraction:06}Z",
        second_of_day / 3600,
        second_of_day / 60 % 60,
        second_of_day % 60,
    )
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
pub(crate) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: u64, micros: u32) -> SystemTime {
        UNIX_EPOCH + Duration::new(seconds, micros * 1_000)
    }

    #[test]
    fn formats_rfc3339_in_utc() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        // date -u -d @951827109
        assert_eq!(rfc3339(at(951_827_109, 123)), "2000-02-29T12:25:09.000123Z");
        assert_eq!(
            rfc3339(at(1_709_211_909, 999_999)),
            "2024-02-29T13:05:09.999999Z"
        );
        assert_eq!(rfc3339(at(4_102_444_799, 0)), "2099-12-31T23:59:59.000000Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH - Duration::from_micros(1)),
            "1969-12-31T23:59:59.999999Z"
        );
    }

    #[test]
    fn normalize_matches_what_postgres_stores() {
        let mut row = PredictionRow {
            prediction_id: Uuid::nil(),
            request_id: "r\0".into(),
            request_id_from_client: true,
            model: "a\0b".into(),
            model_version: "v".into(),
            input_sha256: "00".into(),
            status: "error",
            http_status: 404,
            error: Some("bad\0".into()),
            queue_ms: None,
            inference_ms: None,
            total_ms: 1.5,
            batch_size: None,
            replica: None,
            cache_level: None,
            created_at: UNIX_EPOCH + Duration::new(5, 123_456_789),
            trace: None,
        };
        row.normalize();
        assert_eq!(row.request_id, "r\u{FFFD}");
        assert_eq!(row.model, "a\u{FFFD}b");
        assert_eq!(row.error.as_deref(), Some("bad\u{FFFD}"));
        assert_eq!(row.created_at, UNIX_EPOCH + Duration::new(5, 123_456_000));
    }

    #[test]
    fn serializes_with_string_id_and_time() {
        let stored = StoredPrediction {
            prediction_id: Uuid::nil(),
            request_id: Some("order-1".into()),
            request_id_from_client: true,
            model: "m".into(),
            model_version: "v".into(),
            input_sha256: "ab".into(),
            status: "ok".into(),
            http_status: 200,
            error: None,
            queue_ms: Some(0.25),
            inference_ms: Some(1.0),
            total_ms: 2.5,
            batch_size: Some(4),
            replica: Some(0),
            cache_level: Some("l1".into()),
            created_at: at(0, 7),
        };
        let json = serde_json::to_value(&stored).expect("serializes");
        assert_eq!(
            json["prediction_id"],
            "00000000-0000-0000-0000-000000000000"
        );
        assert_eq!(json["request_id"], "order-1");
        assert_eq!(json["created_at"], "1970-01-01T00:00:00.000007Z");
        assert_eq!(json["queue_ms"], 0.25);
        assert_eq!(json["total_ms"], 2.5);
        assert_eq!(json["error"], serde_json::Value::Null);
        assert_eq!(json["cache_level"], "l1");
    }
}
