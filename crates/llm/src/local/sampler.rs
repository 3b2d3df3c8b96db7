//! Picking the next token from the model's logits.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How many of the most likely tokens are looked at first for nucleus sampling. The nucleus
/// of a chat model is nearly always much smaller, and sorting 64 candidates instead of the
/// whole vocabulary (49,152 for SmolLM2) keeps sampling well under the cost of a forward
/// pass. When they do not reach `top_p`, the whole vocabulary is sorted.
const FIRST_CANDIDATES: usize = 64;

/// Temperature and nucleus (top-p) sampling with a seeded random generator: the same seed
/// and logits give the same tokens.
#[derive(Debug)]
pub(crate) struct Sampler {
    /// `None` is greedy (arg max).
    temperature: Option<f32>,
    top_p: f32,
    rng: StdRng,
    /// Reused between tokens: (probability, token id).
    scratch: Vec<(f32, u32)>,
}

impl Sampler {
    /// A sampler. A temperature of 0 (or below, or not finite) is greedy; `top_p` outside
    /// (0, 1) means no nucleus cut.
    pub(crate) fn new(temperature: f32, top_p: f32, seed: u64) -> Self {
        let temperature = (temperature.is_finite() && temperature > 0.0).then_some(temperature);
        let top_p = if top_p.is_finite() && top_p > 0.0 && top_p < 1.0 { top_p } else { 1.0 };
        Sampler { temperature, top_p, rng: StdRng::seed_from_u64(seed), scratch: Vec::new() }
    }

    /// Whether this sampler always picks the most likely token.
    #[cfg(test)]
    pub(crate) fn is_greedy(&self) -> bool {
        self.temperature.is_none()
    }

    /// The next token. `logits` must not be empty.
    pub(crate) fn sample(&mut self, logits: &[f32]) -> u32 {
        let Some(temperature) = self.temperature else {
            return arg_max(logits);
        };
        // Softmax of logits / temperature, shifted by the maximum for stability.
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        if !max.is_finite() {
            return arg_max(logits);
        }
        self.scratch.clear();
        let mut sum = 0.0f32;
        for (id, &logit) in logits.iter().enumerate() {
            let p = ((logit - max) / temperature).exp();
            sum += p;
            self.scratch.push((p, id as u32));
        }
        let by_probability =
            |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
        let target = self.top_p * sum;
        let candidates: &[(f32, u32)] = if self.top_p < 1.0 {
            let n = nucleus(&mut self.scratch, target, by_probability);
            &self.scratch[..n]
        } else {
            &self.scratch
        };
        let total: f32 = candidates.iter().map(|c| c.0).sum();
        let mut draw = self.rng.random::<f32>() * total;
        for &(p, id) in candidates {
            if draw < p {
                return id;
            }
            draw -= p;
        }
        // Rounding left a sliver past the last candidate.
        candidates.last().map_or_else(|| arg_max(logits), |c| c.1)
    }
}

/// Sorts the most likely tokens to the front and returns how many of them it takes to reach
/// `target` probability mass (at least one).
fn nucleus(
    items: &mut [(f32, u32)],
    target: f32,
    order: impl Fn(&(f32, u32), &(f32, u32)) -> std::cmp::Ordering + Copy,
) -> usize {
    let first = FIRST_CANDIDATES.min(items.len());
    if first < items.len() {
        items.select_nth_unstable_by(first - 1, order);
    }
    items[..first].sort_unstable_by(order);
    if let Some(n) = covering(&items[..first], target) {
        return n;
    }
    items.sort_unstable_by(order);
    covering(items, target).unwrap_or(items.len())
}

/// How many leading items reach `target` mass, if they do.
fn covering(items: &[(f32, u32)], target: f32) -> Option<usize> {
    let mut mass = 0.0;
    for (i, item) in items.iter().enumerate() {
        mass += item.0;
        if mass >= target {
            return Some(i + 1);
        }
    }
    None
}

/// The index of the largest logit (the first one on ties).
fn arg_max(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &logit) in logits.iter().enumerate() {
        if logit > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_temperature_is_greedy() {
        let mut sampler = Sampler::new(0.0, 0.9, 1);
        assert!(sampler.is_greedy());
        assert_eq!(sampler.sample(&[0.1, 3.0, 2.9, -1.0]), 1);
        assert_eq!(Sampler::new(-1.0, 1.0, 1).sample(&[5.0, 1.0]), 0);
        assert_eq!(Sampler::new(f32::NAN, 1.0, 1).sample(&[1.0, 5.0]), 1);
    }

    #[test]
    fn same_seed_same_tokens() {
        let logits: Vec<f32> = (0..1000).map(|i| ((i * 7919) % 101) as f32 / 10.0).collect();
        let run = |seed| {
            let mut sampler = Sampler::new(1.0, 0.95, seed);
            (0..50).map(|_| sampler.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
    }

    #[test]
    fn top_p_keeps_only_the_nucleus() {
        // Probabilities about 0.64, 0.24, 0.09, 0.03: top_p 0.5 leaves only the first.
        let logits = [3.0, 2.0, 1.0, 0.0];
        let mut sampler = Sampler::new(1.0, 0.5, 7);
        for _ in 0..200 {
            assert_eq!(sampler.sample(&logits), 0);
        }
        // top_p 0.8 leaves the first two, and both come up.
        let mut sampler = Sampler::new(1.0, 0.8, 7);
        let mut seen = [0; 4];
        for _ in 0..400 {
            seen[sampler.sample(&logits) as usize] += 1;
        }
        assert!(seen[0] > 0 && seen[1] > 0 && seen[2] == 0 && seen[3] == 0, "{seen:?}");
    }

    #[test]
    fn nucleus_wider_than_the_first_candidates_sorts_everything() {
        // A flat distribution over 1000 tokens: 0.9 of it needs 900 of them.
        let logits = vec![0.0f32; 1000];
        let mut sampler = Sampler::new(1.0, 0.9, 3);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..3000 {
            let id = sampler.sample(&logits);
            assert!(id < 900 + 1, "{id} is outside the nucleus");
            seen.insert(id);
        }
        assert!(seen.len() > FIRST_CANDIDATES * 2, "{}", seen.len());
    }

    #[test]
    fn low_temperature_sharpens() {
        let logits = [1.0, 1.5];
        let mut sampler = Sampler::new(0.05, 1.0, 11);
        let ones = (0..200).filter(|_| sampler.sample(&logits) == 1).count();
        assert!(ones > 190, "{ones}");
    }
}
