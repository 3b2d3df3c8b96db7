//! The llama forward pass, written for this provider's case: one sequence, a small model,
//! a CPU.
//!
//! candle's `quantized_llama` builds a tensor for every operation of every layer and grows
//! its key/value cache with `Tensor::cat` each step; at SmolLM2's width (576) that overhead
//! and its thread-pool wake-ups were a large part of a decoded token. Here every buffer is
//! allocated once and reused, the cache grows in place, the small operations (norms,
//! rotary embedding, attention, SiLU) are plain loops, and the matrix products are
//! `quant.rs`'s kernels, on the weights as the file stores them (Q4_1 or Q8_0;
//! other types are converted to Q8_0 at load). The embedding table stays quantized (one row
//! is widened per token), and serves as the output projection too when the file ties them.
//!
//! The formulas are candle's (Q8_0 activations, rotary angles, norm, softmax); the sums run
//! in another order, and SmolLM2's greedy text turns on differences that small, so an
//! answer may read differently from candle's after a few sentences.

use std::io::{Read, Seek};

use candle_core::Device;
use candle_core::quantized::{GgmlDType, QTensor, gguf_file};
use rayon::ThreadPool;
use rayon::prelude::*;

use super::quant::{BLOCK, Matrix, Vectors};

/// A llama-architecture model and the state of the sequence it is reading.
#[derive(Debug)]
pub(crate) struct Llama {
    embedding: Matrix,
    /// The output projection when the file has its own; else the embedding is used.
    output: Option<Matrix>,
    norm: Vec<f32>,
    layers: Vec<Layer>,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    epsilon: f32,
    /// The rotary embedding's frequency for each pair of a head's values.
    frequencies: Vec<f32>,
    /// Tokens in the cache.
    cached: usize,
    /// Threads for the matrix products; `None` multiplies on the caller's thread.
    pool: Option<ThreadPool>,
    scratch: Scratch,
}

#[derive(Debug)]
struct Layer {
    attention_norm: Vec<f32>,
    query: Matrix,
    key: Matrix,
    value: Matrix,
    attention_output: Matrix,
    ffn_norm: Vec<f32>,
    gate: Matrix,
    up: Matrix,
    down: Matrix,
    /// Rotated keys of every cached position, `kv_heads × head_dim` each.
    keys: Vec<f32>,
    /// Values of every cached position.
    values: Vec<f32>,
}

/// Buffers reused by every forward pass, sized for the longest chunk seen so far.
#[derive(Debug, Default)]
struct Scratch {
    hidden: Vec<f32>,
    normed: Vec<f32>,
    quantized: Vectors,
    queries: Vec<f32>,
    keys: Vec<f32>,
    values: Vec<f32>,
    attention: Vec<f32>,
    /// Each token's rotary `(cos, sin)` per pair of a head's values: the same in every layer
    /// and head, so worked out once a pass.
    rotations: Vec<(f32, f32)>,
    projected: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    logits: Vec<f32>,
}

/// A pool of `CANDLE_NUM_THREADS` threads, else `RAYON_NUM_THREADS`, else as many as this
/// process may run on (its CPU affinity), or none for one thread. The pool is the model's own,
/// so that its size follows those variables as the module docs describe. (candle's own
/// `get_num_threads` reads only `RAYON_NUM_THREADS`.)
fn thread_pool() -> Result<Option<ThreadPool>, String> {
    let available = std::thread::available_parallelism().map_or(1, usize::from);
    let threads = thread_count(|name| std::env::var(name).ok(), available);
    if threads < 2 {
        return Ok(None);
    }
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("sluice-local-model-{i}"))
        .build()
        .map(Some)
        .map_err(|e| format!("cannot start its threads: {e}"))
}

/// How many threads the model runs on: `CANDLE_NUM_THREADS`, else `RAYON_NUM_THREADS` (as
/// `variable` reads them; unset, unreadable or 0 skip to the next), else `available`.
fn thread_count(variable: impl Fn(&str) -> Option<String>, available: usize) -> usize {
    let from = |name| variable(name)?.trim().parse::<usize>().ok().filter(|&n| n > 0);
    from("CANDLE_NUM_THREADS").or_else(|| from("RAYON_NUM_THREADS")).unwrap_or(available)
}

/// Reads one tensor as f32 values.
fn vector<R: Read + Seek>(
    content: &gguf_file::Content,
    reader: &mut R,
    name: &str,
) -> Result<Vec<f32>, String> {
    let tensor = content.tensor(reader, name, &Device::Cpu).map_err(|e| format!("{name}: {e}"))?;
    tensor
        .dequantize(&Device::Cpu)
        .and_then(|t| t.flatten_all()?.to_vec1::<f32>())
        .map_err(|e| format!("{name}: {e}"))
}

/// Reads one matrix as Q4_1 if it is stored so, else as Q8_0, converting it if it is stored
/// otherwise.
fn matrix<R: Read + Seek>(
    content: &gguf_file::Content,
    reader: &mut R,
    name: &str,
) -> Result<Matrix, String> {
    let context = |e: candle_core::Error| format!("{name}: {e}");
    let tensor = content.tensor(reader, name, &Device::Cpu).map_err(context)?;
    let (rows, cols) = tensor.shape().dims2().map_err(context)?;
    let matrix = match tensor.dtype() {
        GgmlDType::Q4_1 => Matrix::from_q4_1(rows, cols, &tensor.data().map_err(context)?),
        GgmlDType::Q8_0 => Matrix::from_q8_0(rows, cols, &tensor.data().map_err(context)?),
        _ => {
            let f32s = tensor.dequantize(&Device::Cpu).map_err(context)?;
            let q8_0 = QTensor::quantize(&f32s, GgmlDType::Q8_0).map_err(context)?;
            Matrix::from_q8_0(rows, cols, &q8_0.data().map_err(context)?)
        }
    };
    matrix.map_err(|e| format!("{name}: {e}"))
}

impl Llama {
    /// Reads the model's weights; `content` is the file's header, `reader` its data.
    pub(crate) fn read<R: Read + Seek>(
        content: &gguf_file::Content,
        reader: &mut R,
    ) -> Result<Llama, String> {
        let number = |key: &str| {
            content
                .metadata
                .get(key)
                .and_then(|v| v.to_u32().ok())
                .map(|n| n as usize)
                .ok_or_else(|| format!("its metadata lacks {key}"))
        };
        let heads = number("llama.attention.head_count")?;
        let kv_heads = number("llama.attention.head_count_kv")?;
        let width = number("llama.embedding_length")?;
        let block_count = number("llama.block_count")?;
        if heads == 0 || kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
            return Err(format!("{heads} heads cannot share {kv_heads} key/value heads"));
        }
        let head_dim = width / heads;
        let rope_dim = number("llama.rope.dimension_count").unwrap_or(head_dim);
        if head_dim * heads != width || rope_dim != head_dim || !head_dim.is_multiple_of(2) {
            return Err(format!("a width of {width} in {heads} heads is not supported"));
        }
        let float = |key: &str, default: f32| {
            content.metadata.get(key).and_then(|v| v.to_f32().ok()).unwrap_or(default)
        };
        let epsilon = float("llama.attention.layer_norm_rms_epsilon", 1e-5);
        let base = float("llama.rope.freq_base", 10_000.0);
        let frequencies =
            (0..head_dim).step_by(2).map(|i| 1.0 / base.powf(i as f32 / head_dim as f32)).collect();

        let embedding = matrix(content, reader, "token_embd.weight")?;
        let output = if content.tensor_infos.contains_key("output.weight") {
            Some(matrix(content, reader, "output.weight")?)
        } else {
            None
        };
        let norm = vector(content, reader, "output_norm.weight")?;
        let layers = (0..block_count)
            .map(|i| {
                let mut matrix = |name: &str| matrix(content, reader, &format!("blk.{i}.{name}"));
                Ok(Layer {
                    query: matrix("attn_q.weight")?,
                    key: matrix("attn_k.weight")?,
                    value: matrix("attn_v.weight")?,
                    attention_output: matrix("attn_output.weight")?,
                    gate: matrix("ffn_gate.weight")?,
                    up: matrix("ffn_up.weight")?,
                    down: matrix("ffn_down.weight")?,
                    attention_norm: vector(content, reader, &format!("blk.{i}.attn_norm.weight"))?,
                    ffn_norm: vector(content, reader, &format!("blk.{i}.ffn_norm.weight"))?,
                    keys: Vec::new(),
                    values: Vec::new(),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;

        let kv_width = kv_heads * head_dim;
        let model = Llama {
            embedding,
            output,
            norm,
            layers,
            heads,
            kv_heads,
            head_dim,
            epsilon,
            frequencies,
            cached: 0,
            pool: thread_pool()?,
            scratch: Scratch::default(),
        };
        let consistent = model.embedding.cols() == width
            && model.norm.len() == width
            && model.output.as_ref().is_none_or(|o| o.cols() == width)
            && model.layers.iter().all(|l| {
                l.query.rows() == width
                    && l.query.cols() == width
                    && l.key.rows() == kv_width
                    && l.key.cols() == width
                    && l.value.rows() == kv_width
                    && l.value.cols() == width
                    && l.attention_output.rows() == width
                    && l.attention_output.cols() == width
                    && l.gate.cols() == width
                    && l.up.cols() == width
                    && l.up.rows() == l.gate.rows()
                    && l.down.cols() == l.gate.rows()
                    && l.down.rows() == width
                    && l.attention_norm.len() == width
                    && l.ffn_norm.len() == width
            });
        if !consistent || !width.is_multiple_of(BLOCK) {
            return Err("its tensors' shapes do not fit together".to_owned());
        }
        Ok(model)
    }

    /// Forgets the sequence read so far (keeping the cache's memory for the next one).
    pub(crate) fn clear(&mut self) {
        self.cached = 0;
        for layer in &mut self.layers {
            layer.keys.clear();
            layer.values.clear();
        }
    }

    /// Reads `tokens`, which follow the cached ones, and returns the logits for the token
    /// after the last of them.
    pub(crate) fn forward(&mut self, tokens: &[u32]) -> Result<&[f32], String> {
        // The whole pass runs on the pool, so that each product is split from one of its
        // threads; handing every product over from outside would wake a pool thread and put
        // this one to sleep for each of them.
        let pool = self.pool.take();
        let outcome = match &pool {
            Some(pool) => pool.install(|| self.pass(tokens, Some(pool))),
            None => self.pass(tokens, None),
        };
        self.pool = pool;
        outcome.map(|()| self.scratch.logits.as_slice())
    }

    /// [`forward`](Self::forward)'s work, with products split over `pool` if there is one.
    fn pass(&mut self, tokens: &[u32], pool: Option<&ThreadPool>) -> Result<(), String> {
        let width = self.embedding.cols();
        let count = tokens.len();
        let s = &mut self.scratch;
        s.hidden.resize(count * width, 0.0);
        for (&token, hidden) in tokens.iter().zip(s.hidden.chunks_exact_mut(width)) {
            let row = token as usize;
            if row >= self.embedding.rows() {
                return Err(format!("token {token} is not in the vocabulary"));
            }
            self.embedding.row_into(row, hidden);
        }

        let position = self.cached;
        s.rotations.clear();
        for t in 0..count {
            let at = (position + t) as f32;
            s.rotations.extend(
                self.frequencies.iter().map(|f| (at * f).sin_cos()).map(|(sin, cos)| (cos, sin)),
            );
        }
        let pairs = self.frequencies.len();
        for layer in &mut self.layers {
            // Attention.
            rms_norm(&s.hidden, &layer.attention_norm, self.epsilon, &mut s.normed);
            s.quantized.quantize(&s.normed, count);
            let products = [
                (&layer.query, &mut s.queries),
                (&layer.key, &mut s.keys),
                (&layer.value, &mut s.values),
            ];
            multiply(products, &s.quantized, pool);
            let tokens =
                s.queries.chunks_exact_mut(width).zip(s.keys.chunks_exact_mut(layer.key.rows()));
            for ((queries, keys), rotation) in tokens.zip(s.rotations.chunks_exact(pairs)) {
                rotate(queries, rotation);
                rotate(keys, rotation);
            }
            layer.keys.extend_from_slice(&s.keys);
            layer.values.extend_from_slice(&s.values);
            attend(
                &s.queries,
                &layer.keys,
                &layer.values,
                position,
                (self.heads, self.kv_heads, self.head_dim),
                &mut s.attention,
                pool,
            );
            s.quantized.quantize(&s.attention, count);
            multiply([(&layer.attention_output, &mut s.projected)], &s.quantized, pool);
            add(&mut s.hidden, &s.projected);

            // Feed-forward.
            rms_norm(&s.hidden, &layer.ffn_norm, self.epsilon, &mut s.normed);
            s.quantized.quantize(&s.normed, count);
            multiply([(&layer.gate, &mut s.gate), (&layer.up, &mut s.up)], &s.quantized, pool);
            for (gate, &up) in s.gate.iter_mut().zip(&s.up) {
                *gate = *gate / ((-*gate).exp() + 1.0) * up;
            }
            s.quantized.quantize(&s.gate, count);
            multiply([(&layer.down, &mut s.projected)], &s.quantized, pool);
            add(&mut s.hidden, &s.projected);
        }
        self.cached += count;

        let last = &s.hidden[(count - 1) * width..];
        rms_norm(last, &self.norm, self.epsilon, &mut s.normed);
        s.quantized.quantize(&s.normed, 1);
        let output = self.output.as_ref().unwrap_or(&self.embedding);
        multiply([(output, &mut s.logits)], &s.quantized, pool);
        Ok(())
    }
}

/// For each `(matrix, out)`: `out` = `matrix` × each vector of `input`, on `pool`'s threads if
/// there is a pool. One vector (a decoded token) is split by rows, several (a prompt) by
/// vectors, so that each part writes one contiguous piece of an `out`; the parts of all the
/// products go to the pool at once, because waking its threads for each product separately
/// cost as much as the second thread gained.
fn multiply<const N: usize>(
    products: [(&Matrix, &mut Vec<f32>); N],
    input: &Vectors,
    pool: Option<&ThreadPool>,
) {
    let count = input.count();
    let threads = pool.map_or(1, ThreadPool::current_num_threads);
    let mut parts = Vec::with_capacity(N * threads);
    for (matrix, out) in products {
        let rows = matrix.rows();
        out.resize(count * rows, 0.0);
        if count == 1 {
            let chunk = rows.div_ceil(threads);
            for (i, out) in out.chunks_mut(chunk).enumerate() {
                parts.push((matrix, i * chunk..i * chunk + out.len(), 0..1, out));
            }
        } else {
            let chunk = count.div_ceil(threads);
            for (i, out) in out.chunks_mut(chunk * rows).enumerate() {
                parts.push((matrix, 0..rows, i * chunk..i * chunk + out.len() / rows, out));
            }
        }
    }
    let run = |(matrix, rows, vectors, out): (&Matrix, _, _, &mut [f32])| {
        matrix.mul(rows, vectors, input, out);
    };
    match pool {
        Some(pool) => pool.install(|| parts.into_par_iter().for_each(run)),
        None => parts.into_iter().for_each(run),
    }
}

/// RMS norm of each `weights.len()`-wide vector of `input`, scaled by `weights`, as candle
/// computes it.
fn rms_norm(input: &[f32], weights: &[f32], epsilon: f32, out: &mut Vec<f32>) {
    out.resize(input.len(), 0.0);
    let width = weights.len();
    for (input, out) in input.chunks_exact(width).zip(out.chunks_exact_mut(width)) {
        let squares: f32 = input.iter().map(|x| x * x).sum();
        let rms = (squares / width as f32 + epsilon).sqrt();
        for ((out, &x), &w) in out.iter_mut().zip(input).zip(weights) {
            *out = x / rms * w;
        }
    }
}

/// Rotates each head of `vector` (pairs of adjacent values, GGUF's llama layout) by each
/// pair's `(cos, sin)` in `rotation`.
fn rotate(vector: &mut [f32], rotation: &[(f32, f32)]) {
    for head in vector.chunks_exact_mut(rotation.len() * 2) {
        for (pair, &(cos, sin)) in head.chunks_exact_mut(2).zip(rotation) {
            let (x, y) = (pair[0], pair[1]);
            pair[0] = x * cos - y * sin;
            pair[1] = x * sin + y * cos;
        }
    }
}

/// Causal attention of each query vector (token `t` at `position + t`) over the cached keys
/// and values; heads share key/value heads in consecutive groups. Every (token, head) pair is
/// one task on `pool`'s threads, so its other threads work through attention too rather than
/// fall asleep between two products and need waking.
fn attend(
    queries: &[f32],
    keys: &[f32],
    values: &[f32],
    position: usize,
    (heads, kv_heads, head_dim): (usize, usize, usize),
    out: &mut Vec<f32>,
    pool: Option<&ThreadPool>,
) {
    let kv_width = kv_heads * head_dim;
    let group = heads / kv_heads;
    let scale = 1.0 / (head_dim as f32).sqrt();
    out.clear();
    out.resize(queries.len(), 0.0);
    // `scores` is a buffer reused from one (token, head) to the next.
    let head = |scores: &mut Vec<f32>, (i, (query, out)): (usize, (&[f32], &mut [f32]))| {
        let (t, h) = (i / heads, i % heads);
        let visible = position + t + 1;
        let offset = h / group * head_dim;
        scores.clear();
        scores.extend(
            keys.chunks_exact(kv_width)
                .take(visible)
                .map(|key| dot(query, &key[offset..offset + head_dim]) * scale),
        );
        let max = scores.iter().fold(f32::NEG_INFINITY, |max, &s| max.max(s));
        let mut total = 0.0;
        for score in scores.iter_mut() {
            *score = (*score - max).exp();
            total += *score;
        }
        for (&score, value) in scores.iter().zip(values.chunks_exact(kv_width)) {
            let weight = score / total;
            for (out, &v) in out.iter_mut().zip(&value[offset..offset + head_dim]) {
                *out += weight * v;
            }
        }
    };
    match pool {
        Some(pool) => {
            let pairs = queries.par_chunks_exact(head_dim).zip(out.par_chunks_exact_mut(head_dim));
            pool.install(|| pairs.enumerate().for_each_init(Vec::new, head));
        }
        None => {
            let pairs = queries.chunks_exact(head_dim).zip(out.chunks_exact_mut(head_dim));
            let mut scores = Vec::new();
            pairs.enumerate().for_each(|pair| head(&mut scores, pair));
        }
    }
}

/// The dot product of two vectors, summed in eight lanes so that it vectorizes.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    for (a, b) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        for ((lane, a), b) in lanes.iter_mut().zip(a).zip(b) {
            *lane += a * b;
        }
    }
    let tail = a.len() - a.len() % 8;
    let rest: f32 = a[tail..].iter().zip(&b[tail..]).map(|(a, b)| a * b).sum();
    lanes.iter().sum::<f32>() + rest
}

/// `into += other`, element by element.
fn add(into: &mut [f32], other: &[f32]) {
    for (into, &other) in into.iter_mut().zip(other) {
        *into += other;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_thread_count_follows_candle_num_threads_then_rayon_num_threads() {
        let set = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned())
        };
        assert_eq!(
            thread_count(set(&[("CANDLE_NUM_THREADS", "1"), ("RAYON_NUM_THREADS", "2")]), 2),
            1
        );
        assert_eq!(thread_count(set(&[("RAYON_NUM_THREADS", "3")]), 2), 3);
        assert_eq!(
            thread_count(set(&[("CANDLE_NUM_THREADS", "0"), ("RAYON_NUM_THREADS", "x")]), 2),
            2
        );
        assert_eq!(thread_count(set(&[]), 4), 4);
    }
}
