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
use std::ops::Range;
use std::sync::{PoisonError, RwLock};

use candle_core::Device;
use candle_core::quantized::{GgmlDType, QTensor, gguf_file};

use super::quant::{BLOCK, Matrix, Vectors};
use super::team::{Team, Work};

/// A llama-architecture model and the state of the sequence it is reading.
#[derive(Debug)]
pub(crate) struct Llama {
    /// The threads that run the passes, and the weights and data their steps read.
    team: Team<Model>,
    /// Tokens in the cache.
    cached: usize,
    scratch: Scratch,
}

/// The weights, and what every thread of a pass reads: the input of the current product,
/// the queries, and the key/value cache (written by the thread that runs the pass, between
/// steps).
#[derive(Debug)]
struct Model {
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
    /// The current product's input vectors, quantized.
    input: RwLock<Vectors>,
    /// The rotated query vectors of the tokens being read.
    queries: RwLock<Vec<f32>>,
    /// Per layer: the rotated keys and the values of every cached position,
    /// `kv_heads × head_dim` each.
    cache: RwLock<Vec<(Vec<f32>, Vec<f32>)>>,
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
}

/// One step of a pass, split between the team's threads.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// These products, for every input vector, `rows` rows of one matrix a piece.
    Multiply { products: Products, rows: usize },
    /// Attention of the queries over layer `layer`'s cache, `pairs` (token, head) pairs a
    /// piece; the first query is at position `position`.
    Attend { layer: usize, position: usize, pairs: usize },
}

/// Products that read the same input, and so are one step.
#[derive(Debug, Clone, Copy)]
enum Products {
    /// Layer `n`'s query, key and value.
    Qkv(usize),
    AttentionOutput(usize),
    /// Layer `n`'s gate and up.
    GateUp(usize),
    Down(usize),
    /// The output projection.
    Logits,
}

/// Buffers of the thread that runs the pass, reused by every pass and sized for the longest
/// chunk seen so far.
#[derive(Debug, Default)]
struct Scratch {
    hidden: Vec<f32>,
    normed: Vec<f32>,
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

/// How many threads the model runs on: `CANDLE_NUM_THREADS`, else `RAYON_NUM_THREADS`, else
/// as many as this process may run on (its CPU affinity). (The names are candle's and rayon's,
/// which the model ran on before; they are what users of both set.)
pub(crate) fn threads_from_env() -> usize {
    let available = std::thread::available_parallelism().map_or(1, usize::from);
    thread_count(|name| std::env::var(name).ok(), available)
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
    /// Reads the model's weights, to run on `threads` threads; `content` is the file's
    /// header, `reader` its data.
    pub(crate) fn read<R: Read + Seek>(
        content: &gguf_file::Content,
        reader: &mut R,
        threads: usize,
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
                })
            })
            .collect::<Result<Vec<_>, String>>()?;

        let kv_width = kv_heads * head_dim;
        let model = Model {
            embedding,
            output,
            norm,
            cache: RwLock::new(vec![(Vec::new(), Vec::new()); layers.len()]),
            layers,
            heads,
            kv_heads,
            head_dim,
            epsilon,
            frequencies,
            input: RwLock::default(),
            queries: RwLock::default(),
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
        Ok(Llama { team: Team::new(model, threads)?, cached: 0, scratch: Scratch::default() })
    }

    /// Forgets the sequence read so far (keeping the cache's memory for the next one).
    pub(crate) fn clear(&mut self) {
        self.cached = 0;
        for (keys, values) in write(&self.team.work().cache).iter_mut() {
            keys.clear();
            values.clear();
        }
    }

    /// Reads `tokens`, which follow the cached ones, and returns the logits for the token
    /// after the last of them.
    pub(crate) fn forward(&mut self, tokens: &[u32]) -> Result<&[f32], String> {
        let team = &self.team;
        let model = team.work();
        let width = model.embedding.cols();
        let count = tokens.len();
        let s = &mut self.scratch;
        s.hidden.resize(count * width, 0.0);
        for (&token, hidden) in tokens.iter().zip(s.hidden.chunks_exact_mut(width)) {
            let row = token as usize;
            if row >= model.embedding.rows() {
                return Err(format!("token {token} is not in the vocabulary"));
            }
            model.embedding.row_into(row, hidden);
        }

        let position = self.cached;
        s.rotations.clear();
        for t in 0..count {
            let at = (position + t) as f32;
            s.rotations.extend(
                model.frequencies.iter().map(|f| (at * f).sin_cos()).map(|(sin, cos)| (cos, sin)),
            );
        }
        let pairs = model.frequencies.len();
        for (l, layer) in model.layers.iter().enumerate() {
            // Attention.
            rms_norm(&s.hidden, &layer.attention_norm, model.epsilon, &mut s.normed);
            model.multiply(
                team,
                &s.normed,
                count,
                Products::Qkv(l),
                [&mut s.queries, &mut s.keys, &mut s.values],
            )?;
            let tokens =
                s.queries.chunks_exact_mut(width).zip(s.keys.chunks_exact_mut(layer.key.rows()));
            for ((queries, keys), rotation) in tokens.zip(s.rotations.chunks_exact(pairs)) {
                rotate(queries, rotation);
                rotate(keys, rotation);
            }
            std::mem::swap(&mut *write(&model.queries), &mut s.queries);
            {
                // Released before the step that reads it.
                let mut cache = write(&model.cache);
                let (keys, values) = &mut cache[l];
                keys.extend_from_slice(&s.keys);
                values.extend_from_slice(&s.values);
            }
            s.attention.resize(count * width, 0.0);
            let head_dim = model.head_dim;
            let size = piece_size(count * model.heads, team.threads(), 1);
            team.run(Step::Attend { layer: l, position, pairs: size }, |piece, out| {
                let pairs = model.pairs(count, size, piece);
                s.attention[pairs.start * head_dim..pairs.end * head_dim].copy_from_slice(out);
            })?;
            model.multiply(
                team,
                &s.attention,
                count,
                Products::AttentionOutput(l),
                [&mut s.projected],
            )?;
            add(&mut s.hidden, &s.projected);

            // Feed-forward.
            rms_norm(&s.hidden, &layer.ffn_norm, model.epsilon, &mut s.normed);
            model.multiply(
                team,
                &s.normed,
                count,
                Products::GateUp(l),
                [&mut s.gate, &mut s.up],
            )?;
            for (gate, &up) in s.gate.iter_mut().zip(&s.up) {
                *gate = *gate / ((-*gate).exp() + 1.0) * up;
            }
            model.multiply(team, &s.gate, count, Products::Down(l), [&mut s.projected])?;
            add(&mut s.hidden, &s.projected);
        }
        self.cached += count;

        let last = &s.hidden[(count - 1) * width..];
        rms_norm(last, &model.norm, model.epsilon, &mut s.normed);
        model.multiply(team, &s.normed, 1, Products::Logits, [&mut s.logits])?;
        Ok(&s.logits)
    }
}

/// `lock`, written; a poisoned lock's data is as good as any (every step rewrites what it
/// reads from).
fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

/// `lock`, read.
fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

/// How many of `len` things go to one piece of a step, for about [`PIECES_PER_THREAD`]
/// pieces per thread and at least `least` things each.
fn piece_size(len: usize, threads: usize, least: usize) -> usize {
    len.div_ceil(threads * PIECES_PER_THREAD).max(least)
}

/// Pieces each thread of the team would take of a step if all ran alike: enough that one put
/// aside by the kernel holds up a small part of the step, few enough that taking them costs
/// little (each is a few atomic operations on a line the threads share).
const PIECES_PER_THREAD: usize = 4;

/// The fewest rows in a piece of a product.
const LEAST_ROWS: usize = 16;

impl Model {
    /// The matrices of `products`.
    fn matrices(&self, products: Products) -> impl Iterator<Item = &Matrix> {
        let layer = |n: usize| &self.layers[n];
        let matrices: [Option<&Matrix>; 3] = match products {
            Products::Qkv(n) => [Some(&layer(n).query), Some(&layer(n).key), Some(&layer(n).value)],
            Products::AttentionOutput(n) => [Some(&layer(n).attention_output), None, None],
            Products::GateUp(n) => [Some(&layer(n).gate), Some(&layer(n).up), None],
            Products::Down(n) => [Some(&layer(n).down), None, None],
            Products::Logits => [Some(self.output.as_ref().unwrap_or(&self.embedding)), None, None],
        };
        matrices.into_iter().flatten()
    }

    /// `outs[i]` = the `i`th matrix of `products` × each of the `count` vectors of `input`,
    /// split by rows between the team's threads.
    fn multiply<const N: usize>(
        &self,
        team: &Team<Model>,
        input: &[f32],
        count: usize,
        products: Products,
        mut outs: [&mut Vec<f32>; N],
    ) -> Result<(), String> {
        write(&self.input).quantize(input, count);
        for (matrix, out) in self.matrices(products).zip(outs.iter_mut()) {
            out.resize(count * matrix.rows(), 0.0);
        }
        let rows = self.matrices(products).map(Matrix::rows).sum();
        let size = piece_size(rows, team.threads(), LEAST_ROWS);
        team.run(Step::Multiply { products, rows: size }, |piece, result| {
            let (k, mine) = self.piece_rows(products, size, piece);
            let out = &mut outs[k];
            let rows = out.len() / count;
            for (t, row) in result.chunks_exact(mine.len()).enumerate() {
                out[t * rows + mine.start..t * rows + mine.end].copy_from_slice(row);
            }
        })
    }

    /// Piece `piece` of a step of `products` cut `size` rows a piece: which of its matrices,
    /// and which rows.
    fn piece_rows(
        &self,
        products: Products,
        size: usize,
        mut piece: usize,
    ) -> (usize, Range<usize>) {
        for (k, matrix) in self.matrices(products).enumerate() {
            let pieces = matrix.rows().div_ceil(size);
            if piece < pieces {
                return (k, piece * size..((piece + 1) * size).min(matrix.rows()));
            }
            piece -= pieces;
        }
        unreachable!("a piece past the step's last")
    }

    /// The (token, head) pairs of piece `piece` of attention over `count` tokens, cut `size`
    /// pairs a piece.
    fn pairs(&self, count: usize, size: usize, piece: usize) -> Range<usize> {
        let pairs = count * self.heads;
        piece * size..((piece + 1) * size).min(pairs)
    }

    /// Causal attention of the queries (token `t` at `position + t`) in `pairs` of (token,
    /// head), over `layer`'s cached keys and values, appended to `out` (`head_dim` values a
    /// pair); heads share key/value heads in consecutive groups.
    fn attend(&self, layer: usize, position: usize, pairs: Range<usize>, out: &mut Vec<f32>) {
        let (heads, head_dim) = (self.heads, self.head_dim);
        let kv_width = self.kv_heads * head_dim;
        let group = heads / self.kv_heads;
        let scale = 1.0 / (head_dim as f32).sqrt();
        let queries = read(&self.queries);
        let cache = read(&self.cache);
        let (keys, values) = &cache[layer];
        let at = out.len();
        out.resize(at + pairs.len() * head_dim, 0.0);
        let mut scores = Vec::new();
        for (i, out) in pairs.zip(out[at..].chunks_exact_mut(head_dim)) {
            let (t, h) = (i / heads, i % heads);
            let query = &queries[i * head_dim..(i + 1) * head_dim];
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
        }
    }
}

impl Work for Model {
    type Step = Step;

    fn pieces(&self, step: Step) -> usize {
        match step {
            Step::Multiply { products, rows } => {
                self.matrices(products).map(|m| m.rows().div_ceil(rows)).sum()
            }
            Step::Attend { pairs, .. } => {
                (read(&self.queries).len() / self.head_dim).div_ceil(pairs)
            }
        }
    }

    fn run(&self, step: Step, piece: usize, out: &mut Vec<f32>) {
        match step {
            Step::Multiply { products, rows } => {
                let input = read(&self.input);
                let count = input.count();
                let (k, rows) = self.piece_rows(products, rows, piece);
                let matrix = self.matrices(products).nth(k).expect("the piece's matrix");
                let at = out.len();
                out.resize(at + count * rows.len(), 0.0);
                matrix.mul(rows, 0..count, &input, &mut out[at..]);
            }
            Step::Attend { layer, position, pairs } => {
                let count = read(&self.queries).len() / (self.heads * self.head_dim);
                self.attend(layer, position, self.pairs(count, pairs, piece), out);
            }
        }
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
