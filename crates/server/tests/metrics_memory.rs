//! Issue 16, the hour-long soak: the Prometheus recorder keeps every histogram sample until
//! its upkeep runs or `/metrics` is read, and nothing ran its upkeep, so a server nobody
//! scraped held each `sluice_store_append_seconds` it ever recorded (0.2 MiB more heap a
//! minute in the soak). Measured here with a counting allocator: the heap a million samples
//! hold, and what is left of it once the upkeep has had time to run, without reading
//! `/metrics` (which would fold them too). Samples go on being recorded meanwhile, as in a
//! server: the recorder frees what it folded when its threads next pass an epoch (it is
//! lock-free), and recording is what makes them pass.
//!
//! The wait is bounded generously (the upkeep runs every second; the bound only keeps a broken
//! upkeep from hanging the suite) and ends as soon as the samples are folded.
//!
//! One test in this binary: the allocator counts every thread of the process, and the
//! recorder is the process's.

use std::alloc::System;
use std::time::{Duration, Instant};

use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn held(region: &Region<'_, System>) -> i64 {
    let change = region.change();
    change.bytes_allocated as i64 - change.bytes_deallocated as i64
}

#[test]
fn histogram_samples_are_folded_without_a_scrape() {
    sluice_server::prometheus();
    let region = Region::new(GLOBAL);
    let histogram = metrics::histogram!("sluice_store_append_seconds");
    for n in 0..1_000_000_u32 {
        histogram.record(f64::from(n % 1_000) / 1e6);
    }
    let recorded = held(&region);
    assert!(recorded > 4_000_000, "a million samples held only {recorded} bytes");
    let deadline = Instant::now() + Duration::from_secs(120);
    while held(&region) > recorded / 10 && Instant::now() < deadline {
        for n in 0..1_000_u32 {
            histogram.record(f64::from(n) / 1e6);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let left = held(&region);
    eprintln!("a million samples held {recorded} bytes; {left} bytes after the upkeep");
    assert!(left <= recorded / 10, "{left} of {recorded} bytes still held after 120 s");
}
