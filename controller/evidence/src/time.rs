//! Times as audit records and reports write them.

/// The last millisecond RFC 3339 can write (9999-12-31T23:59:59Z).
pub const LAST_RFC3339_MS: i64 = 253_402_300_799_000;

/// `unix_ms` in RFC 3339, whole seconds. Times past year 9999 (a token
/// asked to never expire) are written as the last one: humantime's
/// formatter fails on them, and a panic inside a commit would refuse it.
pub fn rfc3339(unix_ms: i64) -> String {
    let ms = u64::try_from(unix_ms.min(LAST_RFC3339_MS)).unwrap_or(0);
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(t).to_string()
}
