//! Appends per second into a [`SqliteStore`], for 1 and 16 concurrent publishers, with
//! `synchronous = FULL` and `NORMAL`: what group commit buys and what an `fsync` per commit
//! costs.
//!
//! ```text
//! cargo bench -p sluice-hub --bench sqlite_append
//! ```
//!
//! The files go under cargo's target directory (a real disk, not a tmpfs).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};
use sluice_hub::{Draft, Fanout, SqliteConfig, SqliteStore, Store, Synchronous};

/// Appends per measured iteration, spread over the publishers.
const APPENDS: u64 = 256;

fn appends(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().unwrap();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let next_id = Arc::new(AtomicU64::new(0));

    let mut group = c.benchmark_group("sqlite_append");
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .throughput(Throughput::Elements(APPENDS));
    for (name, synchronous) in [("full", Synchronous::Full), ("normal", Synchronous::Normal)] {
        for publishers in [1, 16] {
            let config = SqliteConfig {
                synchronous,
                ..SqliteConfig::new(dir.path().join(format!("{name}-{publishers}.db")))
            };
            let store = Arc::new(SqliteStore::open(config, Fanout::new().listener()).unwrap());
            let id = BenchmarkId::new(name, format!("{publishers}-publishers"));
            group.bench_function(id, |b| {
                b.iter_custom(|iterations| {
                    let start = Instant::now();
                    for _ in 0..iterations {
                        runtime.block_on(publish(&store, publishers, &next_id));
                    }
                    start.elapsed()
                });
            });
            let stats = store.stats();
            println!(
                "  {name}, {publishers} publishers: {:.1} updates per transaction",
                stats.updates as f64 / stats.transactions.max(1) as f64
            );
        }
    }
    group.finish();
}

/// [`APPENDS`] appends from `publishers` concurrent tasks, each awaiting its own in turn.
async fn publish(store: &Arc<SqliteStore>, publishers: u64, next_id: &Arc<AtomicU64>) {
    let tasks: Vec<_> = (0..publishers)
        .map(|_| {
            let store = Arc::clone(store);
            let next_id = Arc::clone(next_id);
            tokio::spawn(async move {
                for _ in 0..APPENDS / publishers {
                    let id = next_id.fetch_add(1, Ordering::Relaxed);
                    let draft = Draft {
                        id: Some(format!("urn:uuid:{id}")),
                        ..Draft::new("https://example.com/books/1", "{\"text\":\"a token\"}")
                    };
                    store.append(draft).await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    appends(&mut criterion);
    criterion.final_summary();
}
