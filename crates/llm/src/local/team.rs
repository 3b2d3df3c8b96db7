//! A team of threads that split each step of a forward pass, and spin between steps.
//!
//! A decoded token is some 150 steps (five per layer) of 10 to 100 µs each. A thread pool
//! that puts its threads to sleep between them (rayon's, which this replaces) pays a wake-up
//! for most steps, and on a 2-core machine that was most of what the second core gave: two
//! threads decoded 1.4× faster than one where llama.cpp, whose threads spin, gets 1.85×.
//! Here the helpers spin on the step counter while a pass runs and for [`SPIN`] after the
//! last step, then park until the next one; the thread that posts a step does its own part
//! of it, then spins until the helpers have done theirs.
//!
//! A step's data is the [`Work`]'s own: it lives behind locks that the posting thread takes
//! between steps, and each thread writes its part of a step's result into a buffer of its
//! own, which the posting thread gathers. So the team needs no unsafe code, and each result
//! is computed by the same code whatever the number of threads.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a helper spins for the next step before it parks: longer than the gap between
/// two decoded tokens (sampling, detokenizing, handing the text over), so that a helper
/// parks only between answers.
const SPIN: Duration = Duration::from_millis(2);

/// What a team runs: steps, each split into parts.
pub(crate) trait Work: Send + Sync + 'static {
    /// One step, as the posting thread describes it to the helpers.
    type Step: Copy + Send;

    /// Does part `part` of `parts` of `step`, writing its result into `out`.
    fn run(&self, step: Self::Step, part: usize, parts: usize, out: &mut Vec<f32>);
}

/// The posting thread's handle on the team.
pub(crate) struct Team<W: Work> {
    crew: Arc<Crew<W>>,
    helpers: Vec<JoinHandle<()>>,
}

/// What the posting thread and the helpers share.
struct Crew<W: Work> {
    work: W,
    /// The step posted last; `None` tells the helpers to stop.
    step: Mutex<Option<W::Step>>,
    /// Steps posted so far.
    posted: AtomicU64,
    /// Per helper: the steps it has finished.
    finished: Vec<AtomicU64>,
    /// Per helper: parked, or about to park, until the next step.
    parked: Vec<AtomicBool>,
    /// A helper panicked: the pass cannot be finished.
    failed: AtomicBool,
    /// Per thread (the posting thread first): its part of the last step's result.
    parts: Vec<Mutex<Vec<f32>>>,
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
            step: Mutex::new(None),
            posted: AtomicU64::new(0),
            finished: (0..helpers).map(|_| AtomicU64::new(0)).collect(),
            parked: (0..helpers).map(|_| AtomicBool::new(false)).collect(),
            failed: AtomicBool::new(false),
            parts: (0..=helpers).map(|_| Mutex::new(Vec::new())).collect(),
        });
        let mut team = Team { crew, helpers: Vec::with_capacity(helpers) };
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
        self.crew.parts.len()
    }

    /// The work the steps run on.
    pub(crate) fn work(&self) -> &W {
        &self.crew.work
    }

    /// Runs `step` on every thread, then hands each thread's part of the result to `gather`
    /// (with the part's number), in order.
    pub(crate) fn run(
        &self,
        step: W::Step,
        mut gather: impl FnMut(usize, &[f32]),
    ) -> Result<(), String> {
        let crew = &*self.crew;
        let parts = self.threads();
        if parts > 1 {
            *crew.step.lock().unwrap_or_else(PoisonError::into_inner) = Some(step);
            let posted = crew.posted.fetch_add(1, Ordering::SeqCst) + 1;
            for (helper, parked) in self.helpers.iter().zip(&crew.parked) {
                if parked.load(Ordering::SeqCst) {
                    helper.thread().unpark();
                }
            }
            crew.run(step, 0, parts);
            crew.wait_for_helpers(posted)?;
        } else {
            crew.run(step, 0, parts);
        }
        for (part, out) in crew.parts.iter().enumerate() {
            gather(part, &out.lock().unwrap_or_else(PoisonError::into_inner));
        }
        Ok(())
    }
}

impl<W: Work> Drop for Team<W> {
    fn drop(&mut self) {
        *self.crew.step.lock().unwrap_or_else(PoisonError::into_inner) = None;
        self.crew.posted.fetch_add(1, Ordering::SeqCst);
        for helper in self.helpers.drain(..) {
            helper.thread().unpark();
            // A helper that panicked has reported it already.
            let _ = helper.join();
        }
    }
}

impl<W: Work> Crew<W> {
    /// Thread `part`'s share of `step`, into its buffer.
    fn run(&self, step: W::Step, part: usize, parts: usize) {
        let mut out = self.parts[part].lock().unwrap_or_else(PoisonError::into_inner);
        self.work.run(step, part, parts, &mut out);
    }

    /// Spins until every helper has finished step `posted`, yielding the core after a while
    /// in case a helper is waiting for it (a machine busy with other work).
    fn wait_for_helpers(&self, posted: u64) -> Result<(), String> {
        for finished in &self.finished {
            let mut spins = 0u32;
            while finished.load(Ordering::Acquire) < posted {
                if self.failed.load(Ordering::Relaxed) {
                    return Err("one of its threads failed".to_owned());
                }
                spins = spins.saturating_add(1);
                if spins < 1 << 12 {
                    std::hint::spin_loop();
                } else {
                    std::thread::yield_now();
                }
            }
        }
        Ok(())
    }

    /// Helper `helper`'s loop: each posted step's part, until told to stop.
    fn help(&self, helper: usize) {
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let mut seen = 0;
            loop {
                seen = self.next_step(helper, seen);
                let step = *self.step.lock().unwrap_or_else(PoisonError::into_inner);
                let Some(step) = step else { return };
                self.run(step, helper + 1, self.parts.len());
                self.finished[helper].store(seen, Ordering::Release);
            }
        }));
        if outcome.is_err() {
            self.failed.store(true, Ordering::Relaxed);
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
    use super::*;

    /// Part `p` of `n` of step `s`: the numbers `s * 100 + p` and `n`.
    struct Numbers;

    impl Work for Numbers {
        type Step = u32;

        fn run(&self, step: u32, part: usize, parts: usize, out: &mut Vec<f32>) {
            out.clear();
            out.extend([(step * 100 + part as u32) as f32, parts as f32]);
        }
    }

    #[test]
    fn every_thread_does_its_part_of_every_step_in_order() {
        for threads in [1, 2, 3] {
            let team = Team::new(Numbers, threads).unwrap();
            assert_eq!(team.threads(), threads);
            for step in 0..1_000 {
                let mut got = Vec::new();
                team.run(step, |part, out| got.push((part, out.to_vec()))).unwrap();
                let want: Vec<_> = (0..threads)
                    .map(|p| (p, vec![(step * 100 + p as u32) as f32, threads as f32]))
                    .collect();
                assert_eq!(got, want);
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
        team.run(2, |part, out| got.push((part, out[0]))).unwrap();
        assert_eq!(got, [(0, 200.0), (1, 201.0)]);
    }

    /// Panics in its helpers' parts.
    struct Faulty;

    impl Work for Faulty {
        type Step = ();

        fn run(&self, (): (), part: usize, _: usize, _: &mut Vec<f32>) {
            assert_eq!(part, 0, "a helper's part fails");
        }
    }

    #[test]
    fn a_helper_that_panics_fails_the_step_rather_than_hang_it() {
        let team = Team::new(Faulty, 2).unwrap();
        assert_eq!(team.run((), |_, _| {}), Err("one of its threads failed".to_owned()));
    }
}
