//! `Stream-Cursor`: the token live reads hand out so that CDNs collapse waiting clients onto
//! one request without serving a cached empty answer forever (the protocol's section 10.1).
//!
//! Time is cut into 20-second intervals from 2024-10-09T00:00:00Z; a cursor is the current
//! interval's number. A client echoing a cursor at or past the current interval gets a later
//! one (by a random 1 to 3600 seconds), so cursors only ever move forward.

use rand::Rng;

/// 2024-10-09T00:00:00Z in milliseconds since the Unix epoch.
const EPOCH_MS: u64 = 1_728_432_000_000;
/// The length of an interval.
const INTERVAL_MS: u64 = 20_000;

/// The cursor for a live response at `now_ms`, given the one the client echoed.
pub fn next(now_ms: u64, echoed: Option<&str>) -> String {
    let current = now_ms.saturating_sub(EPOCH_MS) / INTERVAL_MS;
    match echoed.and_then(|c| c.parse::<u64>().ok()) {
        Some(echoed) if echoed >= current => {
            let jitter_secs = rand::rng().random_range(1..=3600u64);
            (echoed + jitter_secs.div_ceil(INTERVAL_MS / 1000)).to_string()
        }
        _ => current.to_string(),
    }
}

/// The cursor for a later event of a response that already gave `given`: the current
/// interval's, but never below `given` (one response's cursors only move forward).
pub fn later(now_ms: u64, given: &str) -> String {
    let current = now_ms.saturating_sub(EPOCH_MS) / INTERVAL_MS;
    given.parse::<u64>().map_or(current, |given| given.max(current)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_move_forward() {
        let now = EPOCH_MS + 1000 * INTERVAL_MS + 5;
        assert_eq!(next(now, None), "1000");
        assert_eq!(next(now, Some("999")), "1000");
        assert_eq!(next(now, Some("junk")), "1000");
        for _ in 0..100 {
            let later: u64 = next(now, Some("1000")).parse().unwrap();
            assert!((1001..=1180).contains(&later), "{later}");
        }
        assert_eq!(super::later(now, "1050"), "1050");
        assert_eq!(super::later(now, "999"), "1000");
    }
}
