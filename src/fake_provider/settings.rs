//! How the fake provider misbehaves: set by command-line options at start and by
//! `PUT /control` while it runs. Durations read as `200ms` or `2s`, like Athena's own config.

use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Settings {
    /// Added before every answer.
    #[serde(with = "humantime_serde")]
    pub latency: Duration,
    /// The added latency varies by up to this much either way.
    #[serde(with = "humantime_serde")]
    pub jitter: Duration,
    /// Fraction of requests answered with `error_status` (0.0-1.0).
    pub error_rate: f64,
    /// The HTTP status of an injected error, 400-599.
    pub error_status: u16,
    /// Fraction of requests never answered (0.0-1.0): the client's timeout has to end them.
    pub hang_rate: f64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            latency: Duration::ZERO,
            jitter: Duration::ZERO,
            error_rate: 0.0,
            error_status: 503,
            hang_rate: 0.0,
        }
    }
}

/// A `PUT /control` body: every field is optional, absent ones stay as they are.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SettingsUpdate {
    #[serde(with = "humantime_serde")]
    pub latency: Option<Duration>,
    #[serde(with = "humantime_serde")]
    pub jitter: Option<Duration>,
    pub error_rate: Option<f64>,
    pub error_status: Option<u16>,
    pub hang_rate: Option<f64>,
}

impl SettingsUpdate {
    /// Reads a `PUT /control` body; an error names the field at fault.
    pub fn parse(body: &[u8]) -> Result<SettingsUpdate, String> {
        let doc: serde_json::Value =
            serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
        let Some(fields) = doc.as_object() else {
            return Err("the body must be a JSON object".into());
        };
        // serde_json's messages give a column, not a name: read the fields one at a time.
        for (name, value) in fields {
            let single = serde_json::json!({ name: value });
            if let Err(e) = serde_json::from_value::<SettingsUpdate>(single) {
                let reason = e.to_string();
                return Err(if reason.starts_with("unknown field") {
                    reason
                } else {
                    format!("{name}: {reason}")
                });
            }
        }
        serde_json::from_value(doc).map_err(|e| e.to_string())
    }
}

impl Settings {
    /// A message naming the bad field, or nothing.
    pub fn validate(&self) -> Result<(), String> {
        for (name, rate) in [("error_rate", self.error_rate), ("hang_rate", self.hang_rate)] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!("{name}: must be between 0 and 1, got {rate}"));
            }
        }
        if !(400..=599).contains(&self.error_status) {
            return Err(format!(
                "error_status: must be an HTTP error status (400-599), got {}",
                self.error_status
            ));
        }
        Ok(())
    }

    /// These settings with an update applied; nothing changes when the result is invalid.
    pub fn apply(&self, update: SettingsUpdate) -> Result<Settings, String> {
        let next = Settings {
            latency: update.latency.unwrap_or(self.latency),
            jitter: update.jitter.unwrap_or(self.jitter),
            error_rate: update.error_rate.unwrap_or(self.error_rate),
            error_status: update.error_status.unwrap_or(self.error_status),
            hang_rate: update.hang_rate.unwrap_or(self.hang_rate),
        };
        next.validate()?;
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn updates_apply_field_by_field_and_bad_values_name_their_field() {
        let update: SettingsUpdate =
            serde_json::from_str(r#"{"latency": "250ms", "error_rate": 0.5}"#).unwrap();
        let next = Settings::default().apply(update).unwrap();
        assert_eq!(next.latency, Duration::from_millis(250));
        assert_eq!(next.error_rate, 0.5);
        assert_eq!(next.error_status, 503, "absent fields are kept");

        let bad = SettingsUpdate { hang_rate: Some(1.5), ..SettingsUpdate::default() };
        assert!(next.apply(bad).unwrap_err().starts_with("hang_rate:"));
        let bad = SettingsUpdate { error_status: Some(200), ..SettingsUpdate::default() };
        assert!(next.apply(bad).unwrap_err().starts_with("error_status:"));
        let err = SettingsUpdate::parse(br#"{"errorRate": 1}"#).unwrap_err();
        assert!(err.starts_with("unknown field `errorRate`"), "{err}");
        let err = SettingsUpdate::parse(br#"{"error_rate": 0.5, "jitter": "soon"}"#).unwrap_err();
        assert!(err.starts_with("jitter: "), "{err}");
        assert!(SettingsUpdate::parse(b"[1]").is_err());
    }
}
