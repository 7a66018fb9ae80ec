//! What both daemons' config loaders share: an error that names the file,
//! the key and the problem, and how durations are written.

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {cause}")]
    Read { path: PathBuf, cause: std::io::Error },
    #[error("config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config {path}: {key}: {problem}")]
    Invalid {
        path: PathBuf,
        key: String,
        problem: String,
    },
}

/// Parses "10s", "500ms", "1m"; `None` gives the default.
pub fn duration(text: Option<&str>, default: Duration) -> Result<Duration, String> {
    match text {
        None => Ok(default),
        Some(t) => humantime::parse_duration(t).map_err(|e| format!("{t:?} is not a duration like \"30s\": {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_read_or_refused_with_an_example() {
        assert_eq!(duration(Some("500ms"), Duration::ZERO), Ok(Duration::from_millis(500)));
        assert_eq!(duration(None, Duration::from_secs(3)), Ok(Duration::from_secs(3)));
        let e = duration(Some("fast"), Duration::ZERO).unwrap_err();
        assert!(e.contains("\"fast\" is not a duration like \"30s\""), "{e}");
    }
}
