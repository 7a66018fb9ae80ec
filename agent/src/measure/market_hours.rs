//! Market hours: while a trading window is open, full scans are limited to a
//! byte rate and a thread count, and the periodic forced full rescan waits
//! for the window to end unless an operator asks for one. Watch-triggered
//! scans (only what changed) and the gate are never held back by it.
//!
//! ```toml
//! [market_hours]
//! time_zone = "America/New_York"
//! windows = ["Mon-Fri 09:30-16:00"]
//! scan_max_bytes_per_sec = "32MiB"
//! scan_threads = 1
//! ```

use jiff::Timestamp;
use jiff::civil::Weekday;
use jiff::tz::TimeZone;

/// The default byte rate of a full scan in market hours: modest beside a
/// disk's and the page cache's bandwidth.
pub const DEFAULT_MAX_BYTES_PER_SEC: u64 = 32 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Window {
    /// Monday first.
    days: [bool; 7],
    from_min: i32,
    to_min: i32,
}

/// The trading windows of this host and the scan budget inside them.
#[derive(Debug, Clone)]
pub struct MarketHours {
    time_zone: TimeZone,
    zone_name: String,
    windows: Vec<Window>,
    pub max_bytes_per_sec: u64,
    pub scan_threads: usize,
}

fn weekday_index(name: &str) -> Option<usize> {
    let names = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
    names.iter().position(|n| name.eq_ignore_ascii_case(n))
}

fn minute_of_day(hm: &str) -> Option<i32> {
    let (h, m) = hm.trim().split_once(':')?;
    let (h, m): (i32, i32) = (h.parse().ok()?, m.parse().ok()?);
    // 24:00 closes a window at midnight.
    ((0..24).contains(&h) && (0..60).contains(&m) || (h == 24 && m == 0)).then_some(h * 60 + m)
}

/// "Mon-Fri 09:30-16:00", "Sat 10:00-12:00", "Mon,Wed,Fri 08:00-09:00".
fn parse_window(text: &str) -> Result<Window, String> {
    let bad = |why: &str| format!("{text:?} is not a window like \"Mon-Fri 09:30-16:00\": {why}");
    let (days_text, hours) = text
        .trim()
        .split_once(' ')
        .ok_or_else(|| bad("give days, then hours"))?;
    let mut days = [false; 7];
    for part in days_text.split(',') {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let a = weekday_index(a).ok_or_else(|| bad("days are Mon, Tue, Wed, Thu, Fri, Sat, Sun"))?;
        let b = weekday_index(b).ok_or_else(|| bad("days are Mon, Tue, Wed, Thu, Fri, Sat, Sun"))?;
        if a > b {
            return Err(bad("a day range goes from Monday towards Sunday"));
        }
        days[a..=b].iter_mut().for_each(|d| *d = true);
    }
    let (from, to) = hours
        .trim()
        .split_once('-')
        .ok_or_else(|| bad("hours are HH:MM-HH:MM"))?;
    let from_min = minute_of_day(from).ok_or_else(|| bad("hours are HH:MM-HH:MM"))?;
    let to_min = minute_of_day(to).ok_or_else(|| bad("hours are HH:MM-HH:MM"))?;
    if from_min >= to_min {
        return Err(bad("a window ends after it starts, on the same day"));
    }
    Ok(Window { days, from_min, to_min })
}

/// "32MiB", "500KiB", "1GiB", "1000000".
pub fn parse_byte_rate(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (digits, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a byte rate like \"32MiB\""))?;
    let scale = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        other => return Err(format!("{text:?}: unit {other:?} is not B, KiB, MiB or GiB")),
    };
    let rate = n.saturating_mul(scale);
    if rate < 64 << 10 {
        return Err(format!(
            "{text:?} is below 64KiB per second: a full scan would never finish"
        ));
    }
    Ok(rate)
}

impl MarketHours {
    pub fn new(
        zone_name: &str,
        windows: &[String],
        max_bytes_per_sec: u64,
        scan_threads: usize,
    ) -> Result<Self, String> {
        let time_zone = TimeZone::get(zone_name).map_err(|e| {
            format!("time zone {zone_name:?} is unknown ({e}); use an IANA name like \"America/New_York\"")
        })?;
        if windows.is_empty() {
            return Err("list at least one window, e.g. windows = [\"Mon-Fri 09:30-16:00\"]".into());
        }
        let windows = windows.iter().map(|w| parse_window(w)).collect::<Result<_, _>>()?;
        Ok(Self {
            time_zone,
            zone_name: zone_name.to_string(),
            windows,
            max_bytes_per_sec,
            scan_threads: scan_threads.max(1),
        })
    }

    /// Whether a trading window is open at `at`, in the market's time zone
    /// (so daylight saving moves the window with the market).
    pub fn is_open(&self, at: Timestamp) -> bool {
        let local = at.to_zoned(self.time_zone.clone());
        let day = match local.weekday() {
            Weekday::Monday => 0,
            Weekday::Tuesday => 1,
            Weekday::Wednesday => 2,
            Weekday::Thursday => 3,
            Weekday::Friday => 4,
            Weekday::Saturday => 5,
            Weekday::Sunday => 6,
        };
        let minute = i32::from(local.hour()) * 60 + i32::from(local.minute());
        self.windows
            .iter()
            .any(|w| w.days[day] && (w.from_min..w.to_min).contains(&minute))
    }

    /// Whether a window is open at `unix_ms` (the agent's injected clock).
    pub fn is_open_at_ms(&self, unix_ms: i64) -> bool {
        Timestamp::from_millisecond(unix_ms).is_ok_and(|at| self.is_open(at))
    }

    pub fn zone_name(&self) -> &str {
        &self.zone_name
    }
}

/// What the next scan is, decided from the market clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanPlan {
    /// A full scan, and why: "first", "requested" or "periodic" (`None`:
    /// only what changed is hashed).
    pub full: Option<&'static str>,
    /// Inside a trading window, and not the first: limited to the byte rate
    /// and threads.
    pub budgeted: bool,
    /// A periodic full rescan came due inside a window and waits for its end.
    pub deferred: bool,
}

impl ScanPlan {
    /// `first`: nothing hashed yet; `due`: the full rescan interval passed;
    /// `requested`: an operator asked for a full scan.
    pub fn decide(first: bool, due: bool, requested: bool, in_window: bool) -> Self {
        let full = if first {
            Some("first")
        } else if requested {
            Some("requested")
        } else if due && !in_window {
            Some("periodic")
        } else {
            None
        };
        Self {
            full,
            // Not the first: without it the host cannot attest at all, and
            // a budgeted first scan of a large tree would outlast the lease
            // of a gate that was OPEN before the agent restarted.
            budgeted: in_window && full.is_some_and(|cause| cause != "first"),
            deferred: full.is_none() && due && in_window,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nyse() -> MarketHours {
        MarketHours::new("America/New_York", &["Mon-Fri 09:30-16:00".into()], 32 << 20, 1).unwrap()
    }

    fn at(rfc3339: &str) -> Timestamp {
        rfc3339.parse().unwrap()
    }

    #[test]
    fn the_window_follows_the_market_clock_across_daylight_saving() {
        let m = nyse();
        // Wednesday 2026-07-01, EDT (UTC-4): 09:30 New York is 13:30 UTC.
        assert!(!m.is_open(at("2026-07-01T13:29:00Z")));
        assert!(m.is_open(at("2026-07-01T13:30:00Z")));
        assert!(m.is_open(at("2026-07-01T19:59:00Z")));
        assert!(!m.is_open(at("2026-07-01T20:00:00Z")));
        // Wednesday 2026-12-02, EST (UTC-5): 09:30 New York is 14:30 UTC.
        assert!(!m.is_open(at("2026-12-02T14:29:00Z")));
        assert!(m.is_open(at("2026-12-02T14:30:00Z")));
        // Saturday: closed.
        assert!(!m.is_open(at("2026-12-05T15:00:00Z")));
    }

    #[test]
    fn full_scans_in_market_hours_are_budgeted_and_the_periodic_one_waits() {
        let plan = |first, due, requested, window| {
            let p = ScanPlan::decide(first, due, requested, window);
            (p.full, p.budgeted, p.deferred)
        };
        // Outside the window: as before.
        assert_eq!(plan(true, false, false, false), (Some("first"), false, false));
        assert_eq!(plan(false, true, false, false), (Some("periodic"), false, false));
        assert_eq!(plan(false, false, false, false), (None, false, false));
        // Inside: the periodic rescan is deferred; what must run is budgeted.
        assert_eq!(plan(false, true, false, true), (None, false, true));
        assert_eq!(plan(false, true, true, true), (Some("requested"), true, false));
        // The first scan is never budgeted: the host cannot attest without it.
        assert_eq!(plan(true, false, false, true), (Some("first"), false, false));
        // A watched change (nothing due) is an incremental scan, never held.
        assert_eq!(plan(false, false, false, true), (None, false, false));
    }

    #[test]
    fn windows_and_rates_parse_or_say_what_is_wrong() {
        let m = MarketHours::new(
            "UTC",
            &["Mon,Wed 08:00-09:00".into(), "Sat 10:00-24:00".into()],
            1 << 20,
            0,
        )
        .unwrap();
        assert_eq!(m.scan_threads, 1);
        assert!(m.is_open(at("2026-11-30T08:30:00Z"))); // Monday
        assert!(!m.is_open(at("2026-12-01T08:30:00Z"))); // Tuesday
        assert!(m.is_open(at("2026-12-05T23:59:00Z"))); // Saturday
        for (bad, says) in [
            ("Mon-Fri", "give days, then hours"),
            ("Fri-Mon 09:00-10:00", "from Monday towards Sunday"),
            ("Mon 10:00-09:00", "ends after it starts"),
            ("Mon 9-10", "HH:MM-HH:MM"),
            ("Monday 09:00-10:00", "days are Mon"),
        ] {
            let e = MarketHours::new("UTC", &[bad.into()], 1 << 20, 1).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
        let e = MarketHours::new("Mars/Olympus", &["Mon 09:00-10:00".into()], 1 << 20, 1).unwrap_err();
        assert!(e.contains("Mars/Olympus"), "{e}");
        assert_eq!(parse_byte_rate("32MiB").unwrap(), 32 << 20);
        assert_eq!(parse_byte_rate("1000000").unwrap(), 1_000_000);
        assert!(parse_byte_rate("32MB").unwrap_err().contains("unit"));
        assert!(parse_byte_rate("1KiB").unwrap_err().contains("never finish"));
    }
}
