//! The stamp every published message carries, `"<send time in ns> <step> "` padded to size,
//! which subscribers read back for the publish → receive latency: made by the publishers (as
//! a hub's data or inside a Durable Streams JSON message), read by the subscribers.

use std::time::{SystemTime, UNIX_EPOCH};

/// Nanoseconds since the Unix epoch: what publishers put first in `data`.
pub fn now_nanos() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// The payload a publisher sends: `"<send time in ns> <step> "`, padded with `x` to `size`
/// bytes (never cut shorter than the stamp).
pub fn stamped_data(sent_nanos: u64, step: u32, size: usize) -> String {
    let mut data = format!("{sent_nanos} {step} ");
    if data.len() < size {
        data.extend(std::iter::repeat_n('x', size - data.len()));
    }
    data
}

/// Reads the stamp back: `(send time in ns, step)`.
pub fn parse_stamp(data: &str) -> Option<(u64, u32)> {
    let mut parts = data.splitn(3, ' ');
    let sent = parts.next()?.parse().ok()?;
    let step = parts.next()?.parse().ok()?;
    Some((sent, step))
}

/// A Durable Streams message of `size` bytes (never shorter than its stamp):
/// `{"stamp":"<send time in ns> <step> xxx…"}`, the stamp as [`stamped_data`] makes it.
pub(crate) fn stamped_json(sent_nanos: u64, step: u32, size: usize) -> String {
    const WRAPPING: usize = r#"{"stamp":""}"#.len();
    let stamp = stamped_data(sent_nanos, step, size.saturating_sub(WRAPPING));
    format!(r#"{{"stamp":"{stamp}"}}"#)
}
