//! Issue 16, finding 5: the window of recent updates (`--replay-window-mib`) holds no more heap
//! than its byte bound. It counted only the encoded frames, so with 230-byte updates it held
//! about 4.4 times its setting (the update's struct, its `Arc`, its id, topics and data beside
//! the frame, the window's indexes). Measured here with a counting allocator: the heap a hub
//! holds after the same publications, with the window on and with it off.
//!
//! One test in this binary: the allocator counts every thread of the process.

use std::alloc::System;
use std::sync::Arc;

use sluice_hub::{Draft, Fanout, Hub, HubConfig, MemoryStore};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Publications, more than the window below can hold, whatever each one costs.
const UPDATES: usize = 40_000;

/// The heap still held once `UPDATES` updates of 230 bytes of data, on 100 topics, have been
/// published to a hub keeping `window` bytes of recent updates (and a store keeping one).
async fn heap_held_with_window(window: usize) -> i64 {
    let fanout = Fanout::with_recent(1_000_000, window);
    let store = Arc::new(MemoryStore::new(1, fanout.listener()));
    let hub = Hub::new(store, fanout, HubConfig::default());
    let data = "x".repeat(230);
    let region = Region::new(GLOBAL);
    let mut last = String::new();
    for n in 0..UPDATES {
        let draft = Draft::new(format!("https://example.com/books/{}", n % 100), data.as_str());
        last = hub.publish(draft).await.unwrap().id().to_owned();
    }
    // The fan-out thread holds the batches it has not taken yet: wait until it has.
    while hub.last_event_id().as_deref() != Some(last.as_str()) {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let change = region.change();
    let held = change.bytes_allocated as i64 - change.bytes_deallocated as i64;
    drop(last);
    held
}

#[tokio::test]
async fn the_replay_window_holds_no_more_than_its_setting() {
    const WINDOW: usize = 4 * 1024 * 1024;
    let without = heap_held_with_window(0).await;
    let with = heap_held_with_window(WINDOW).await;
    let window = with - without;
    let setting = WINDOW as i64;
    eprintln!("a window of {setting} bytes holds {window} bytes of heap");
    assert!(window <= setting + setting / 20, "{window} bytes held for a window of {setting}");
    assert!(window >= setting / 2, "{window} bytes held: the window is not filled");
}
