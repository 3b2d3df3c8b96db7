//! A team of threads that share each step of a forward pass, and spin between steps.
//!
//! A decoded token is some 150 steps (five per layer) of 10 to 100 µs each. A thread pool
//! that puts its threads to sleep between them (rayon's, which this replaces) pays a wake-up
//! for most steps. Here the helpers spin on the step counter while a pass runs and for
//! [`SPIN`] after the last step, then park until the next one, as llama.cpp's threads do.
//!
//! A step is cut into a few pieces per thread. Each thread takes the pieces of its own share
//! one at a time, from a cursor of its own (no cache line bounces between threads for it),
//! then takes what is left of the others' shares. So on a machine busy with other work (a
//! browser beside `make run`), a helper that the kernel has put aside holds up only the piece
//! it took, and the other threads do the rest of its share. And when over a window of steps
//! the helpers did under half their share, the posting thread runs the next steps alone and
//! then tries the team again: on a busy machine, waiting for threads that get no core is
//! slower than one thread. (With one fixed share per thread, two threads beside a busy core
//! decoded at 38 tokens/s where one decodes at 90; now at 81 to 87. On a quiet machine two
//! decode 1.3 to 1.5 times as fast as one.)
//!
//! A step's data is the [`Work`]'s own: it lives behind locks that the posting thread takes
//! between steps, and each thread writes the pieces it did into a buffer of its own, which the
//! posting thread gathers. So the team needs no unsafe code, and each value is computed by the
//! same code whatever thread does its piece.

use std::cell::Cell;
use std::ops::Range;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a helper spins for the next step before it parks: longer than the gap between
/// two decoded tokens (sampling, detokenizing, handing the text over), so that a helper
/// parks only between answers.
const SPIN: Duration = Duration::from_millis(2);

/// Spins after which the posting thread, waiting for a helper's piece, yields its core: some
/// 100 µs, several times a piece's work on a thread that runs.
const PATIENCE: u32 = 1 << 12;

/// Steps over which the team counts the pieces its helpers did.
const WINDOW: u32 = 256;

/// Steps the posting thread runs alone after a window in which the helpers did under half
/// their share: some ten decoded tokens.
const ALONE: u32 = 1_500;

/// What a team runs: steps, each cut into pieces.
pub(crate) trait Work: Send + Sync + 'static {
    /// One step, as the posting thread describes it to the helpers.
    type Step: Copy + Send;

    /// How many pieces `step` is cut into.
    fn pieces(&self, step: Self::Step) -> usize;

    /// Does piece `piece` of `step`, appending its result to `out`.
    fn run(&self, step: Self::Step, piece: usize, out: &mut Vec<f32>);
}

/// The posting thread's handle on the team.
pub(crate) struct Team<W: Work> {
    crew: Arc<Crew<W>>,
    helpers: Vec<JoinHandle<()>>,
    /// Steps in the current window, pieces the helpers did in it, and their share of them.
    window: Cell<(u32, usize, usize)>,
    /// Steps left to run on the posting thread alone.
    alone_for: Cell<u32>,
}

/// What the posting thread and the helpers share.
struct Crew<W: Work> {
    work: W,
    /// The step posted last: its number and itself, or `None` to tell the helpers to stop.
    step: Mutex<(u64, Option<W::Step>)>,
    /// The number of the step posted last.
    posted: AtomicU64,
    /// Per thread, its share of the step's pieces: the step's number (bits 32 to 63), the
    /// share's next piece (16 to 31) and its end (0 to 15). A thread takes a piece by moving
    /// the next one on, which fails for a step that is no longer the current one.
    cursors: Vec<Padded<AtomicU64>>,
    /// Per thread: between taking a piece and having written its result (or finding none).
    busy: Vec<Padded<AtomicBool>>,
    /// Per helper: parked, or about to park, until the next step.
    parked: Vec<AtomicBool>,
    /// A helper panicked: the pass cannot be finished.
    failed: AtomicBool,
    /// Per thread (the posting thread first): the pieces it did of the step posted last.
    done: Vec<Mutex<Done>>,
}

/// A value on a cache line of its own, so that one thread's writes do not slow another's
/// reads of its neighbours.
#[derive(Default)]
#[repr(align(128))]
struct Padded<T>(T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

/// A share's cursor: step `number`, pieces `next..end`.
fn cursor(number: u64, next: usize, end: usize) -> u64 {
    (number << 32) | ((next as u64) << 16) | end as u64
}

/// The pieces one thread did of one step.
#[derive(Default)]
struct Done {
    /// The step's number.
    step: u64,
    /// Each piece's number and where its result is in `results`.
    pieces: Vec<(usize, Range<usize>)>,
    results: Vec<f32>,
}

impl<W: Work> std::fmt::Debug for Team<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Team").field("threads", &self.threads()).finish()
    }
}

impl<W: Work> Team<W> {
    /// A team of `threads` (at least one: the posting thread; the rest are started here).
    pub(crate) fn new(work: W, threads: usize) -> Result<Team<W>, String> {
        let helpers = threads.max(1) - 1;
        let crew = Arc::new(Crew {
            work,
            step: Mutex::new((0, None)),
            posted: AtomicU64::new(0),
            cursors: (0..=helpers).map(|_| Padded::default()).collect(),
            busy: (0..=helpers).map(|_| Padded::default()).collect(),
            parked: (0..helpers).map(|_| AtomicBool::new(false)).collect(),
            failed: AtomicBool::new(false),
            done: (0..=helpers).map(|_| Mutex::default()).collect(),
        });
        let mut team = Team {
            crew,
            helpers: Vec::with_capacity(helpers),
            window: Cell::new((0, 0, 0)),
            alone_for: Cell::new(0),
        };
        for helper in 0..helpers {
            let crew = Arc::clone(&team.crew);
            let thread = std::thread::Builder::new()
                .name(format!("sluice-local-model-{}", helper + 1))
                .spawn(move || crew.help(helper))
                .map_err(|e| format!("cannot start its threads: {e}"))?;
            // Pushed one by one, so that a failure here still stops the ones started.
            team.helpers.push(thread);
        }
        Ok(team)
    }

    /// The threads in the team, the posting thread included.
    pub(crate) fn threads(&self) -> usize {
        self.crew.done.len()
    }

    /// The work the steps run on.
    pub(crate) fn work(&self) -> &W {
        &self.crew.work
    }

    /// Runs `step`, its pieces on whichever threads take them, then hands each piece's result
    /// to `gather` with the piece's number (in no particular order).
    pub(crate) fn run(
        &self,
        step: W::Step,
        mut gather: impl FnMut(usize, &[f32]),
    ) -> Result<(), String> {
        let crew = &*self.crew;
        let pieces = crew.work.pieces(step);
        assert!(pieces < 1 << 16, "{pieces} pieces do not fit a cursor");
        if self.helpers.is_empty() || self.alone() {
            let mut done = crew.done[0].lock().unwrap_or_else(PoisonError::into_inner);
            done.step = 0;
            done.results.clear();
            for piece in 0..pieces {
                let start = done.results.len();
                crew.work.run(step, piece, &mut done.results);
                gather(piece, &done.results[start..]);
            }
            return Ok(());
        }
        let number = crew.posted.load(Ordering::Relaxed) + 1;
        *crew.step.lock().unwrap_or_else(PoisonError::into_inner) = (number, Some(step));
        let threads = self.threads();
        for (thread, share) in crew.cursors.iter().enumerate() {
            let (next, end) = (pieces * thread / threads, pieces * (thread + 1) / threads);
            share.store(cursor(number, next, end), Ordering::SeqCst);
        }
        crew.posted.store(number, Ordering::SeqCst);
        for (helper, parked) in self.helpers.iter().zip(&crew.parked) {
            if parked.load(Ordering::SeqCst) {
                helper.thread().unpark();
            }
        }
        crew.take_pieces(0, number, step);
        crew.wait_until_idle()?;
        let mut helped = 0;
        for (thread, done) in crew.done.iter().enumerate() {
            let done = done.lock().unwrap_or_else(PoisonError::into_inner);
            if done.step == number {
                for (piece, at) in &done.pieces {
                    gather(*piece, &done.results[at.clone()]);
                }
                if thread > 0 {
                    helped += done.pieces.len();
                }
            }
        }
        self.count(helped, pieces);
        Ok(())
    }

    /// Whether this step runs on the posting thread alone, because the helpers did too
    /// little of the last window's pieces (see [`count`](Self::count)).
    fn alone(&self) -> bool {
        let alone = self.alone_for.get();
        self.alone_for.set(alone.saturating_sub(1));
        alone > 0
    }

    /// Counts a step the team ran, of `pieces` pieces of which the helpers did `helped`.
    /// When the helpers did under half their share over a [`WINDOW`] of steps, the kernel
    /// is giving their cores to other work, and the posting thread spends more time taking
    /// their pieces than they save it: the next [`ALONE`] steps run on the posting thread
    /// alone, and then the team tries again.
    fn count(&self, helped: usize, pieces: usize) {
        let threads = self.threads();
        let (steps, total, share) = self.window.get();
        let fair = pieces * (threads - 1) / threads;
        let (steps, helped, share) = (steps + 1, total + helped, share + fair);
        if steps < WINDOW {
            self.window.set((steps, helped, share));
            return;
        }
        self.window.set((0, 0, 0));
        if helped * 2 < share {
            self.alone_for.set(ALONE);
        }
    }
}

impl<W: Work> Drop for Team<W> {
    fn drop(&mut self) {
        let number = self.crew.posted.load(Ordering::Relaxed) + 1;
        *self.crew.step.lock().unwrap_or_else(PoisonError::into_inner) = (number, None);
        self.crew.posted.store(number, Ordering::SeqCst);
        for helper in self.helpers.drain(..) {
            helper.thread().unpark();
            // A helper that panicked has reported it already.
            let _ = helper.join();
        }
    }
}

impl<W: Work> Crew<W> {
    /// Thread `thread` takes pieces of step `number`, from its own share and then from the
    /// others', until none are left.
    fn take_pieces(&self, thread: usize, number: u64, step: W::Step) {
        let mut done = self.done[thread].lock().unwrap_or_else(PoisonError::into_inner);
        let busy = &self.busy[thread];
        let threads = self.cursors.len();
        for share in (0..threads).map(|s| &self.cursors[(thread + s) % threads]) {
            loop {
                // Busy before taking, so that the posting thread, once every piece is taken,
                // waits for this one's result.
                busy.store(true, Ordering::SeqCst);
                let current = share.load(Ordering::SeqCst);
                let (next, end) = ((current >> 16) as u16 as usize, current as u16 as usize);
                if current >> 32 != number || next >= end {
                    busy.store(false, Ordering::SeqCst);
                    break;
                }
                let taken = share.compare_exchange(
                    current,
                    cursor(number, next + 1, end),
                    Ordering::SeqCst,
                    Ordering::SeqCst,
                );
                if taken.is_ok() {
                    if done.step != number {
                        done.step = number;
                        done.pieces.clear();
                        done.results.clear();
                    }
                    let start = done.results.len();
                    self.work.run(step, next, &mut done.results);
                    let end = done.results.len();
                    done.pieces.push((next, start..end));
                }
                busy.store(false, Ordering::SeqCst);
            }
        }
    }

    /// Once every piece is taken: spins until each has its result, yielding the core after a
    /// while in case a helper is waiting for it (a machine busy with other work).
    fn wait_until_idle(&self) -> Result<(), String> {
        for busy in &self.busy {
            let mut spins = 0u32;
            while busy.load(Ordering::SeqCst) {
                if self.failed.load(Ordering::Relaxed) {
                    return Err("one of its threads failed".to_owned());
                }
                spins = spins.saturating_add(1);
                if spins < PATIENCE {
                    std::hint::spin_loop();
                } else {
                    std::thread::yield_now();
                }
            }
        }
        Ok(())
    }

    /// Helper `helper`'s loop: pieces of each posted step, until told to stop.
    fn help(&self, helper: usize) {
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let mut seen = 0;
            loop {
                seen = self.next_step(helper, seen);
                let (number, step) = *self.step.lock().unwrap_or_else(PoisonError::into_inner);
                let Some(step) = step else { return };
                self.take_pieces(helper + 1, number, step);
            }
        }));
        if outcome.is_err() {
            self.failed.store(true, Ordering::Relaxed);
            // Whatever it had taken is not coming: the posting thread sees `failed` instead.
        }
    }

    /// Waits for a step after `seen` and returns its number: spinning for [`SPIN`], then
    /// parked until the posting thread unparks it.
    fn next_step(&self, helper: usize, seen: u64) -> u64 {
        let started = Instant::now();
        loop {
            for _ in 0..256 {
                let posted = self.posted.load(Ordering::Acquire);
                if posted != seen {
                    return posted;
                }
                std::hint::spin_loop();
            }
            if started.elapsed() >= SPIN {
                let parked = &self.parked[helper];
                parked.store(true, Ordering::SeqCst);
                // A step posted before `parked` was seen is not waited for: its poster
                // may not have unparked this thread.
                if self.posted.load(Ordering::SeqCst) == seen {
                    std::thread::park();
                }
                parked.store(false, Ordering::SeqCst);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    /// Step `s` has `s % 7 + 1` pieces; piece `p`'s result is `s * 100 + p`, written twice.
    struct Numbers;

    impl Work for Numbers {
        type Step = u32;

        fn pieces(&self, step: u32) -> usize {
            step as usize % 7 + 1
        }

        fn run(&self, step: u32, piece: usize, out: &mut Vec<f32>) {
            let value = (step * 100 + piece as u32) as f32;
            out.extend([value, value]);
        }
    }

    #[test]
    fn every_piece_of_every_step_is_done_once() {
        for threads in [1, 2, 3] {
            let team = Team::new(Numbers, threads).unwrap();
            assert_eq!(team.threads(), threads);
            for step in 0..2_000 {
                let mut got = Vec::new();
                team.run(step, |piece, out| got.push((piece, out.to_vec()))).unwrap();
                got.sort_by_key(|(piece, _)| *piece);
                let want: Vec<_> = (0..Numbers.pieces(step))
                    .map(|p| (p, vec![(step * 100 + p as u32) as f32; 2]))
                    .collect();
                assert_eq!(got, want, "{threads} threads, step {step}");
            }
        }
    }

    #[test]
    fn a_parked_helper_wakes_for_the_next_step() {
        let team = Team::new(Numbers, 2).unwrap();
        team.run(1, |_, _| {}).unwrap();
        std::thread::sleep(SPIN * 3);
        assert!(team.crew.parked[0].load(Ordering::SeqCst), "the helper parks once idle");
        let mut got = Vec::new();
        team.run(6, |piece, out| got.push((piece, out[0]))).unwrap();
        got.sort_by_key(|(piece, _)| *piece);
        assert_eq!(got, (0..7).map(|p| (p, (600 + p) as f32)).collect::<Vec<_>>());
    }

    /// Holds its helper in the first piece it takes until the posting thread has done every
    /// other piece (as a helper the kernel has put aside would be held).
    struct Held {
        /// Pieces done by the posting thread.
        posting: AtomicUsize,
    }

    impl Work for Held {
        type Step = ();

        fn pieces(&self, (): ()) -> usize {
            8
        }

        fn run(&self, (): (), piece: usize, out: &mut Vec<f32>) {
            if std::thread::current().name() == Some("sluice-local-model-1") {
                // Taken by the helper: wait until the posting thread has done all the rest.
                while self.posting.load(Ordering::SeqCst) < 7 {
                    std::thread::yield_now();
                }
            } else {
                self.posting.fetch_add(1, Ordering::SeqCst);
            }
            out.push(piece as f32);
        }
    }

    #[test]
    fn the_posting_thread_does_the_pieces_a_held_helper_leaves() {
        let team = Team::new(Held { posting: AtomicUsize::new(0) }, 2).unwrap();
        let mut got = Vec::new();
        team.run((), |piece, out| got.push((piece, out[0]))).unwrap();
        got.sort_by_key(|(piece, _)| *piece);
        assert_eq!(got, (0..8).map(|p| (p, p as f32)).collect::<Vec<_>>());
        // The helper took at most one piece, and waited in it for the other seven.
        assert!(team.work().posting.load(Ordering::SeqCst) >= 7);
    }

    /// Its helpers' pieces take a while; the posting thread's are quick.
    struct Sluggish;

    impl Work for Sluggish {
        type Step = ();

        fn pieces(&self, (): ()) -> usize {
            8
        }

        fn run(&self, (): (), _: usize, out: &mut Vec<f32>) {
            let helper = std::thread::current().name() == Some("sluice-local-model-1");
            if helper {
                std::thread::sleep(Duration::from_micros(200));
            }
            out.push(f32::from(u8::from(helper)));
        }
    }

    #[test]
    fn the_posting_thread_runs_alone_for_a_while_when_its_helpers_fall_behind() {
        let team = Team::new(Sluggish, 2).unwrap();
        let mut helped = 0.0;
        for _ in 0..WINDOW {
            team.run((), |_, out| helped += out[0]).unwrap();
        }
        // The helper did at most one piece of each step, of a share of four.
        assert!(helped <= WINDOW as f32, "the helper did {helped} pieces");
        assert_eq!(team.alone_for.get(), ALONE);
        let mut pieces = Vec::new();
        team.run((), |piece, out| pieces.push((piece, out[0]))).unwrap();
        assert_eq!(
            pieces,
            (0..8).map(|p| (p, 0.0)).collect::<Vec<_>>(),
            "all on the posting thread"
        );
        assert_eq!(team.alone_for.get(), ALONE - 1);
    }

    /// Panics in its helper's piece; the posting thread's piece waits until the helper has
    /// taken one, so that the helper cannot miss the step.
    struct Faulty {
        tried: AtomicBool,
    }

    impl Work for Faulty {
        type Step = ();

        fn pieces(&self, (): ()) -> usize {
            2
        }

        fn run(&self, (): (), _: usize, _: &mut Vec<f32>) {
            if std::thread::current().name() == Some("sluice-local-model-1") {
                self.tried.store(true, Ordering::SeqCst);
                panic!("a helper's piece fails");
            }
            while !self.tried.load(Ordering::SeqCst) {
                std::thread::yield_now();
            }
        }
    }

    #[test]
    fn a_helper_that_panics_fails_the_step_rather_than_hang_it() {
        let team = Team::new(Faulty { tried: AtomicBool::new(false) }, 2).unwrap();
        assert_eq!(team.run((), |_, _| {}), Err("one of its threads failed".to_owned()));
    }
}
