//! Quantized weight matrices and the kernels the model spends its time in: rows of 8-bit
//! (Q8_0) or 4-bit (Q4_1) weights times activations quantized to 8 bits.
//!
//! A block is 32 values. Q8_0 stores `q * d` with one scale `d` and `q` in -127..=127; Q4_1
//! stores `q * d + m` with a minimum `m` and `q` in 0..=15, two to a byte. Weights keep the
//! file's layout, with scales and minimums widened from f16 to f32 at load (so the hot loops
//! convert nothing). Activations are quantized per 32 values as candle and ggml do
//! (`d = max|x| / 127`, `q = round(x / d)`), with each block's sum kept for Q4_1's
//! minimums; a dot product is the sum over blocks of an integer dot product times both
//! scales (plus, for Q4_1, the minimum times the block's sum).
//!
//! Q4_1 is multiplied as stored rather than converted to Q8_0: decoding one token reads every
//! weight once, and on a 2-core machine reading them is what bounds it, so half the bytes
//! made decoding faster (SmolLM2: 42 → 51 tokens/s on one thread) at the cost of widening
//! nibbles; a prompt's rows are widened once and then multiplied with all its tokens.
//!
//! The kernels are plain Rust written so that the compiler vectorizes them; they run under
//! [`pulp::Arch::dispatch`], which compiles them for the best instruction set the CPU has
//! (AVX2 and FMA on most x86-64 machines) and picks that version at run time, so a build for
//! generic x86-64 still multiplies with 256-bit integer instructions. Everything a kernel
//! calls must be inlined into the closure `dispatch` compiles: an iterator adapter left out
//! of line ran the whole loop without AVX2, a third slower.

use std::ops::Range;

use half::f16;

/// Values per block.
pub(crate) const BLOCK: usize = 32;
/// Bytes of a Q8_0 block as GGUF stores it: the scale (f16), then 32 signed bytes.
const Q8_0_STORED: usize = 2 + BLOCK;
/// Bytes of a Q4_1 block as GGUF stores it: the scale and the minimum (f16 each), then 16
/// bytes of 4-bit values.
const Q4_1_STORED: usize = 4 + BLOCK / 2;

/// A matrix of quantized weights, `rows × cols`, row-major.
#[derive(Debug)]
pub(crate) struct Matrix {
    rows: usize,
    cols: usize,
    weights: Weights,
}

/// A matrix's blocks, in the form the kernel reads (scales widened to f32 at load, so the hot
/// loop converts nothing).
#[derive(Debug)]
enum Weights {
    /// Q8_0: value `q * d`, `q` in -127..=127.
    Q8_0 { scales: Vec<f32>, quants: Vec<[i8; BLOCK]> },
    /// Q4_1: value `q * d + m`, `q` in 0..=15, two to a byte (value `j` in the low half of
    /// byte `j`, value `j + 16` in its high half). Kept as stored: half the bytes of Q8_0 to
    /// read per token, which is what bounds decoding on a small machine.
    Q4_1 { scales: Vec<f32>, mins: Vec<f32>, nibbles: Vec<[u8; BLOCK / 2]> },
}

/// An f16 at `bytes[at..at + 2]`, widened.
fn f16_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

impl Matrix {
    /// The matrix stored in `bytes` as GGUF Q8_0 blocks, row after row.
    pub(crate) fn from_q8_0(rows: usize, cols: usize, bytes: &[u8]) -> Result<Matrix, String> {
        let blocks = Self::blocks(rows, cols, bytes, Q8_0_STORED, "Q8_0")?;
        let (scales, quants) = blocks
            .map(|block| (f16_at(block, 0), std::array::from_fn(|j| block[2 + j] as i8)))
            .unzip();
        Ok(Matrix { rows, cols, weights: Weights::Q8_0 { scales, quants } })
    }

    /// The matrix stored in `bytes` as GGUF Q4_1 blocks, row after row.
    pub(crate) fn from_q4_1(rows: usize, cols: usize, bytes: &[u8]) -> Result<Matrix, String> {
        let blocks = Self::blocks(rows, cols, bytes, Q4_1_STORED, "Q4_1")?;
        let (mut scales, mut mins, mut nibbles) = (Vec::new(), Vec::new(), Vec::new());
        for block in blocks {
            scales.push(f16_at(block, 0));
            mins.push(f16_at(block, 2));
            nibbles.push(std::array::from_fn(|j| block[4 + j]));
        }
        Ok(Matrix { rows, cols, weights: Weights::Q4_1 { scales, mins, nibbles } })
    }

    /// `bytes` as blocks of `stored` bytes, if they are a `rows × cols` matrix of them.
    fn blocks<'a>(
        rows: usize,
        cols: usize,
        bytes: &'a [u8],
        stored: usize,
        kind: &str,
    ) -> Result<std::slice::ChunksExact<'a, u8>, String> {
        if !cols.is_multiple_of(BLOCK) || bytes.len() != rows * cols / BLOCK * stored {
            return Err(format!("{} bytes are not a {rows}×{cols} {kind} matrix", bytes.len()));
        }
        Ok(bytes.chunks_exact(stored))
    }

    /// Rows (outputs of a product).
    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    /// Columns (inputs of a product).
    pub(crate) fn cols(&self) -> usize {
        self.cols
    }

    /// Row `row` as f32 values, into `out` (an embedding lookup).
    pub(crate) fn row_into(&self, row: usize, out: &mut [f32]) {
        let blocks = self.cols / BLOCK;
        let range = row * blocks..(row + 1) * blocks;
        let out = out.chunks_exact_mut(BLOCK);
        match &self.weights {
            Weights::Q8_0 { scales, quants } => {
                for ((out, &d), quants) in out.zip(&scales[range.clone()]).zip(&quants[range]) {
                    for (out, &q) in out.iter_mut().zip(quants) {
                        *out = f32::from(q) * d;
                    }
                }
            }
            Weights::Q4_1 { scales, mins, nibbles } => {
                let blocks = scales[range.clone()].iter().zip(&mins[range.clone()]);
                for ((out, (&d, &m)), nibbles) in out.zip(blocks).zip(&nibbles[range]) {
                    let (low, high) = out.split_at_mut(BLOCK / 2);
                    for ((low, high), &byte) in low.iter_mut().zip(high).zip(nibbles) {
                        *low = f32::from(byte & 0x0F) * d + m;
                        *high = f32::from(byte >> 4) * d + m;
                    }
                }
            }
        }
    }

    /// Row `r` · vector `t` of `input` for every `r` in `rows` and `t` in `vectors`, into
    /// `out[(t - vectors.start) * rows.len() + r - rows.start]`: a rectangle of the product,
    /// so that threads can each compute one.
    pub(crate) fn mul(
        &self,
        rows: Range<usize>,
        vectors: Range<usize>,
        input: &Vectors,
        out: &mut [f32],
    ) {
        #[cfg(target_arch = "x86_64")]
        if let Some(simd) = pulp::x86::V3::try_new() {
            return avx2::mul(simd, self, rows, vectors, input, out);
        }
        self.mul_portable(rows, vectors, input, out);
    }

    /// [`mul`](Self::mul) in plain Rust, for CPUs without AVX2 (and to check the AVX2
    /// kernels against).
    fn mul_portable(
        &self,
        rows: Range<usize>,
        vectors: Range<usize>,
        input: &Vectors,
        out: &mut [f32],
    ) {
        let blocks = self.cols / BLOCK;
        let width = rows.len();
        let (first_row, first_vector) = (rows.start, vectors.start);
        // Each kernel is compiled for the best instruction set the CPU has: the loops and the
        // dot product are inlined into the closure `dispatch` compiles.
        let arch = pulp::Arch::new();
        match &self.weights {
            Weights::Q8_0 { scales, quants } => arch.dispatch(
                #[inline(always)]
                || {
                    for r in rows {
                        let w = r * blocks..(r + 1) * blocks;
                        let w = (&scales[w.clone()], &quants[w]);
                        for t in vectors.clone() {
                            let x = t * blocks..(t + 1) * blocks;
                            let x = (&input.scales[x.clone()], &input.quants[x]);
                            out[(t - first_vector) * width + r - first_row] = dot_q8_0(w, x);
                        }
                    }
                },
            ),
            // One vector (a decoded token): each weight is read once, straight from its nibble.
            Weights::Q4_1 { scales, mins, nibbles } if vectors.len() == 1 => arch.dispatch(
                #[inline(always)]
                || {
                    let x = vectors.start * blocks..(vectors.start + 1) * blocks;
                    let x = (&input.scales[x.clone()], &input.sums[x.clone()], &input.quants[x]);
                    for r in rows {
                        let w = r * blocks..(r + 1) * blocks;
                        let w = (&scales[w.clone()], &mins[w.clone()], &nibbles[w]);
                        out[r - first_row] = dot_q4_1(w, x);
                    }
                },
            ),
            // Several (a prompt): each row is widened to 8 bits once, then multiplied like
            // Q8_0 with every vector, plus its minimums times the vectors' block sums.
            Weights::Q4_1 { scales, mins, nibbles } => arch.dispatch(
                #[inline(always)]
                || {
                    let mut widened = vec![[0i8; BLOCK]; blocks];
                    for r in rows {
                        let w = r * blocks..(r + 1) * blocks;
                        widen(&nibbles[w.clone()], &mut widened);
                        let w = (&scales[w.clone()], &mins[w], &widened[..]);
                        for t in vectors.clone() {
                            let x = t * blocks..(t + 1) * blocks;
                            let x = (
                                &input.scales[x.clone()],
                                &input.sums[x.clone()],
                                &input.quants[x],
                            );
                            out[(t - first_vector) * width + r - first_row] = dot_widened(w, x);
                        }
                    }
                },
            ),
        }
    }
}

/// The products with AVX2's byte multiply-add (`vpmaddubsw`), as ggml writes them: the
/// compiler does not find it in the plain loops, which sum every block of 32 products to one
/// integer (a horizontal add per block). Here a block's products stay in eight lanes, are
/// scaled as floats and summed lane by lane until the row ends; and a prompt's tokens are
/// taken [`TILE`](avx2::TILE) at a time, so that each block of weights, unpacked once, serves
/// all of them while it is in registers.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::ops::Range;

    use core::arch::x86_64::__m128i;
    use pulp::bytemuck::cast;
    use pulp::x86::V3;
    use pulp::{Simd, i8x32, i16x16};

    use super::{BLOCK, Matrix, Vectors, Weights};

    /// Tokens multiplied with a row at once: four accumulators and the unpacked block fit in
    /// AVX2's sixteen registers with room to spare.
    pub(super) const TILE: usize = 4;

    /// [`Matrix::mul`] on AVX2.
    pub(super) fn mul(
        simd: V3,
        matrix: &Matrix,
        rows: Range<usize>,
        vectors: Range<usize>,
        input: &Vectors,
        out: &mut [f32],
    ) {
        let blocks = matrix.cols / BLOCK;
        let width = rows.len();
        let (first_row, first_vector) = (rows.start, vectors.start);
        simd.vectorize(
            #[inline(always)]
            || {
                for r in rows {
                    let w = r * blocks..(r + 1) * blocks;
                    let put = |t: usize, sums: &[f32]| {
                        for (k, &sum) in sums.iter().enumerate() {
                            out[(t + k - first_vector) * width + r - first_row] = sum;
                        }
                    };
                    match &matrix.weights {
                        Weights::Q4_1 { scales, mins, nibbles } => {
                            let row = Q4_1Row(&scales[w.clone()], &mins[w.clone()], &nibbles[w]);
                            row_times(simd, row, vectors.clone(), input, put);
                        }
                        Weights::Q8_0 { scales, quants } => {
                            let row = Q8_0Row(&scales[w.clone()], &quants[w]);
                            row_times(simd, row, vectors.clone(), input, put);
                        }
                    }
                }
            },
        );
    }

    /// `row` · each of `vectors` of `input`, [`TILE`] at a time and then one by one, each
    /// result handed to `put` with its first vector.
    #[inline(always)]
    fn row_times<R: Row>(
        simd: V3,
        row: R,
        vectors: Range<usize>,
        input: &Vectors,
        mut put: impl FnMut(usize, &[f32]),
    ) {
        let mut t = vectors.start;
        while vectors.end - t >= TILE {
            put(t, &tile::<_, TILE>(simd, row, input, t));
            t += TILE;
        }
        for t in t..vectors.end {
            put(t, &tile::<_, 1>(simd, row, input, t));
        }
    }

    /// One row of weights, as [`tile`] reads it block by block.
    trait Row: Copy {
        /// A block's weights, prepared once for every token of a tile.
        type Block: Copy;
        fn blocks(self) -> usize;
        fn block(self, simd: V3, b: usize) -> Self::Block;
        /// Block `b`'s scale `d` and minimum `m` (weights are `q * d + m`).
        fn scale(self, b: usize) -> (f32, f32);
        /// The products of `block`'s values with `x`'s, adjacent pairs summed (16 lanes).
        fn products(simd: V3, block: Self::Block, x: i8x32) -> i16x16;
    }

    /// A Q4_1 row: scales, minimums, nibbles.
    #[derive(Clone, Copy)]
    struct Q4_1Row<'a>(&'a [f32], &'a [f32], &'a [[u8; BLOCK / 2]]);

    impl Row for Q4_1Row<'_> {
        /// The block's 32 values, 0..=15, one byte each.
        type Block = i8x32;

        #[inline(always)]
        fn blocks(self) -> usize {
            self.2.len()
        }

        #[inline(always)]
        fn block(self, simd: V3, b: usize) -> i8x32 {
            let low: __m128i = cast(self.2[b]);
            let high = simd.sse2._mm_srli_epi16::<4>(low);
            let both = simd.avx._mm256_set_m128i(high, low);
            cast(simd.avx2._mm256_and_si256(both, simd.avx._mm256_set1_epi8(0x0F)))
        }

        #[inline(always)]
        fn scale(self, b: usize) -> (f32, f32) {
            (self.0[b], self.1[b])
        }

        #[inline(always)]
        fn products(simd: V3, block: i8x32, x: i8x32) -> i16x16 {
            // The first operand is read as unsigned: the nibbles are.
            simd.multiply_saturating_add_adjacent_i8x32(block, x)
        }
    }

    /// A Q8_0 row: scales, values.
    #[derive(Clone, Copy)]
    struct Q8_0Row<'a>(&'a [f32], &'a [[i8; BLOCK]]);

    impl Row for Q8_0Row<'_> {
        /// The block's values: their magnitudes (the unsigned operand), and themselves (whose
        /// signs go over to the other operand).
        type Block = (i8x32, i8x32);

        #[inline(always)]
        fn blocks(self) -> usize {
            self.1.len()
        }

        #[inline(always)]
        fn block(self, simd: V3, b: usize) -> (i8x32, i8x32) {
            let values = cast(self.1[b]);
            (cast(simd.avx2._mm256_abs_epi8(values)), cast(values))
        }

        #[inline(always)]
        fn scale(self, b: usize) -> (f32, f32) {
            (self.0[b], 0.0)
        }

        #[inline(always)]
        fn products(simd: V3, (magnitudes, values): (i8x32, i8x32), x: i8x32) -> i16x16 {
            let signed = simd.avx2._mm256_sign_epi8(cast(x), cast(values));
            simd.multiply_saturating_add_adjacent_i8x32(magnitudes, cast(signed))
        }
    }

    /// `row` · vectors `first..first + N` of `input`.
    #[inline(always)]
    fn tile<R: Row, const N: usize>(simd: V3, row: R, input: &Vectors, first: usize) -> [f32; N] {
        let blocks = row.blocks();
        let part = |k: usize| (first + k) * blocks..(first + k + 1) * blocks;
        let quants: [&[[i8; BLOCK]]; N] = std::array::from_fn(|k| &input.quants[part(k)]);
        let scales: [&[f32]; N] = std::array::from_fn(|k| &input.scales[part(k)]);
        let sums: [&[f32]; N] = std::array::from_fn(|k| &input.sums[part(k)]);
        let ones = simd.splat_i16x16(1);
        let mut lanes = [simd.splat_f32x8(0.0); N];
        let mut minimums = [0f32; N];
        for b in 0..blocks {
            let block = row.block(simd, b);
            let (d, m) = row.scale(b);
            for k in 0..N {
                let products = R::products(simd, block, cast(quants[k][b]));
                let ints = simd.multiply_wrapping_add_adjacent_i16x16(products, ones);
                let scale = simd.splat_f32x8(d * scales[k][b]);
                lanes[k] = simd.mul_add_f32x8(simd.convert_i32x8_to_f32x8(ints), scale, lanes[k]);
                minimums[k] += m * sums[k][b];
            }
        }
        std::array::from_fn(|k| simd.reduce_sum_f32s(lanes[k]) + minimums[k])
    }
}

/// Vectors quantized to Q8_0 blocks, the input of [`Matrix::mul`].
#[derive(Debug, Default)]
pub(crate) struct Vectors {
    count: usize,
    scales: Vec<f32>,
    /// Per block, its values' sum as quantized (`d * Σq`): what a Q4_1 block's minimum is
    /// multiplied by.
    sums: Vec<f32>,
    quants: Vec<[i8; BLOCK]>,
}

impl Vectors {
    /// How many vectors there are.
    pub(crate) fn count(&self) -> usize {
        self.count
    }

    /// Quantizes `values`, `count` vectors of `values.len() / count` values each (a multiple
    /// of [`BLOCK`]), replacing what was here. Rounds exactly as candle's `BlockQ8_0` does: the
    /// inverse scale is taken before the scale is rounded to f16.
    pub(crate) fn quantize(&mut self, values: &[f32], count: usize) {
        self.count = count;
        self.scales.clear();
        self.sums.clear();
        self.quants.clear();
        for block in values.chunks_exact(BLOCK) {
            let max = block.iter().fold(0f32, |max, x| max.max(x.abs()));
            let scale = max / 127.0;
            let inverse = if scale == 0.0 { 0.0 } else { 1.0 / scale };
            let scale = f16::from_f32(scale).to_f32();
            let quants: [i8; BLOCK] = std::array::from_fn(|j| (block[j] * inverse).round() as i8);
            self.scales.push(scale);
            self.sums.push(scale * quants.iter().map(|&q| i32::from(q)).sum::<i32>() as f32);
            self.quants.push(quants);
        }
    }
}

/// The dot product of one Q8_0 weight row and one quantized vector.
#[inline(always)]
fn dot_q8_0(
    (weight_scales, weights): (&[f32], &[[i8; BLOCK]]),
    (input_scales, inputs): (&[f32], &[[i8; BLOCK]]),
) -> f32 {
    let mut sum = 0f32;
    for (((&ws, w), &xs), x) in weight_scales.iter().zip(weights).zip(input_scales).zip(inputs) {
        sum += block_dot(w, x) as f32 * (ws * xs);
    }
    sum
}

/// The integer dot product of two blocks of 8-bit values.
#[inline(always)]
fn block_dot(w: &[i8; BLOCK], x: &[i8; BLOCK]) -> i32 {
    w.iter().zip(x).map(|(&w, &x)| i32::from(i16::from(w) * i16::from(x))).sum()
}

/// Q4_1 values `q` (0..=15) of `nibbles`, one byte each, into `out`.
#[inline(always)]
fn widen(nibbles: &[[u8; BLOCK / 2]], out: &mut [[i8; BLOCK]]) {
    for (nibbles, out) in nibbles.iter().zip(out) {
        let (low, high) = out.split_at_mut(BLOCK / 2);
        for ((&byte, low), high) in nibbles.iter().zip(low).zip(high) {
            *low = (byte & 0x0F) as i8;
            *high = (byte >> 4) as i8;
        }
    }
}

/// [`dot_q4_1`] of a row [`widen`]ed first.
#[inline(always)]
fn dot_widened(
    (weight_scales, mins, weights): (&[f32], &[f32], &[[i8; BLOCK]]),
    (input_scales, sums, inputs): (&[f32], &[f32], &[[i8; BLOCK]]),
) -> f32 {
    let mut total = 0f32;
    let weights = weight_scales.iter().zip(mins).zip(weights);
    let inputs = input_scales.iter().zip(sums).zip(inputs);
    for (((&d, &m), w), ((&dx, &sum), x)) in weights.zip(inputs) {
        total += block_dot(w, x) as f32 * (d * dx) + m * sum;
    }
    total
}

/// The dot product of one Q4_1 weight row and one quantized vector: per block,
/// `Σ (q·d + m)·x = d·dx·Σ q·qx + m·(dx·Σ qx)`.
#[inline(always)]
fn dot_q4_1(
    (weight_scales, mins, nibbles): (&[f32], &[f32], &[[u8; BLOCK / 2]]),
    (input_scales, sums, inputs): (&[f32], &[f32], &[[i8; BLOCK]]),
) -> f32 {
    let mut total = 0f32;
    let weights = weight_scales.iter().zip(mins).zip(nibbles);
    let inputs = input_scales.iter().zip(sums).zip(inputs);
    for (((&d, &m), nibbles), ((&dx, &sum), x)) in weights.zip(inputs) {
        let (low, high) = x.split_at(BLOCK / 2);
        let mut block = 0i32;
        for ((&byte, &low), &high) in nibbles.iter().zip(low).zip(high) {
            block += i32::from(i16::from(byte & 0x0F) * i16::from(low));
            block += i32::from(i16::from(byte >> 4) * i16::from(high));
        }
        total += block as f32 * (d * dx) + m * sum;
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes of `rows × cols` stored blocks of `stored` bytes: a varied pattern, with f16
    /// scales (and minimums) that are small and of both signs.
    fn stored(rows: usize, cols: usize, stored: usize, scales: usize) -> Vec<u8> {
        let mut bytes = Vec::new();
        for block in 0..rows * cols / BLOCK {
            for s in 0..scales {
                let value = 0.01 + 0.003 * ((block * 7 + s * 3) % 11) as f32;
                let value = if (block + s) % 3 == 0 { -value } else { value };
                bytes.extend_from_slice(&f16::from_f32(value).to_le_bytes());
            }
            bytes.extend((0..stored - 2 * scales).map(|j| ((block * 31 + j * 17) % 251) as u8));
        }
        bytes
    }

    /// Vectors multiplied at once in the tests: a tile of four (on AVX2) and three single ones.
    const VECTORS: usize = 7;

    /// [`VECTORS`] vectors of `cols` values, quantized.
    fn inputs(cols: usize) -> (Vectors, Vec<f32>) {
        let values: Vec<f32> =
            (0..VECTORS * cols).map(|i| ((i * 37 % 101) as f32 - 50.0) / 13.0).collect();
        let mut vectors = Vectors::default();
        vectors.quantize(&values, VECTORS);
        // What the kernel multiplies: the inputs as quantized.
        let dequantized = vectors
            .scales
            .iter()
            .zip(&vectors.quants)
            .flat_map(|(&d, quants)| quants.iter().map(move |&q| f32::from(q) * d))
            .collect();
        (vectors, dequantized)
    }

    /// Every cell of the product, whole and split into rectangles of one vector or a few
    /// rows, equals the dot product of the weights and inputs widened to f32; on the CPU's
    /// kernels (AVX2 where it has it) and on the plain ones.
    fn check(matrix: &Matrix) {
        let (rows, cols) = (matrix.rows(), matrix.cols());
        let (input, values) = inputs(cols);
        let mut row = vec![0f32; cols];
        let mut expected = vec![0f32; VECTORS * rows];
        for r in 0..rows {
            matrix.row_into(r, &mut row);
            for t in 0..VECTORS {
                let x = &values[t * cols..(t + 1) * cols];
                expected[t * rows + r] = row.iter().zip(x).map(|(w, x)| w * x).sum();
            }
        }
        let close = |got: &[f32], want: &[f32]| {
            for (g, w) in got.iter().zip(want) {
                assert!((g - w).abs() <= 1e-3 * w.abs().max(1.0), "{got:?} != {want:?}");
            }
        };
        let mut whole = vec![0f32; VECTORS * rows];
        matrix.mul(0..rows, 0..VECTORS, &input, &mut whole);
        close(&whole, &expected);
        matrix.mul_portable(0..rows, 0..VECTORS, &input, &mut whole);
        close(&whole, &expected);
        let mut some = vec![0f32; 5 * 2];
        matrix.mul(1..3, 1..6, &input, &mut some);
        for t in 0..5 {
            close(&some[t * 2..t * 2 + 2], &expected[(t + 1) * rows + 1..(t + 1) * rows + 3]);
        }
        for t in 0..VECTORS {
            let mut one = vec![0f32; rows];
            matrix.mul(0..rows, t..t + 1, &input, &mut one);
            close(&one, &expected[t * rows..(t + 1) * rows]);
            let mut some = vec![0f32; 2];
            matrix.mul(1..3, t..t + 1, &input, &mut some);
            close(&some, &expected[t * rows + 1..t * rows + 3]);
        }
    }

    #[test]
    fn q8_0_products_match_the_widened_weights() {
        let (rows, cols) = (5, 64);
        check(&Matrix::from_q8_0(rows, cols, &stored(rows, cols, Q8_0_STORED, 1)).unwrap());
    }

    #[test]
    fn q4_1_products_match_the_widened_weights() {
        let (rows, cols) = (5, 64);
        let matrix = Matrix::from_q4_1(rows, cols, &stored(rows, cols, Q4_1_STORED, 2)).unwrap();
        // A Q4_1 row widens to `q * d + m`: value j from byte j's low half, j + 16 its high.
        let bytes = stored(rows, cols, Q4_1_STORED, 2);
        let (d, m) = (f16_at(&bytes, 0), f16_at(&bytes, 2));
        let mut row = vec![0f32; cols];
        matrix.row_into(0, &mut row);
        assert_eq!(row[0], f32::from(bytes[4] & 0x0F) * d + m);
        assert_eq!(row[16], f32::from(bytes[4] >> 4) * d + m);
        check(&matrix);
    }

    #[test]
    fn a_matrix_of_the_wrong_size_is_refused() {
        assert!(Matrix::from_q8_0(2, 64, &[0; 100]).is_err());
        assert!(Matrix::from_q4_1(2, 48, &stored(2, 64, Q4_1_STORED, 2)).is_err());
    }
}
