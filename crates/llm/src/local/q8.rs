//! Q8_0 matrices and the one kernel the model spends its time in: rows of 8-bit weights
//! times activations quantized to 8 bits the same way.
//!
//! A Q8_0 block is 32 values `q * d` with one scale `d` and `q` in -127..=127. Weights keep
//! that layout, with the scale widened from f16 to f32 at load (so the hot loop converts
//! nothing) and the quants in one array. Activations are quantized per 32 values just as
//! candle and ggml do (`d = max|x| / 127`, `q = round(x / d)`), and a dot product is the sum,
//! over blocks, of an integer dot product times both scales.
//!
//! The kernel is plain Rust written so that the compiler vectorizes it; it runs under
//! [`pulp::Arch::dispatch`], which compiles it for the best instruction set the CPU has (AVX2
//! and FMA on most x86-64 machines) and picks that version at run time, so a build for
//! generic x86-64 still multiplies with 256-bit integer instructions.

use std::ops::Range;

use half::f16;

/// Values per block.
pub(crate) const BLOCK: usize = 32;
/// Bytes of a Q8_0 block as GGUF stores it: the scale (f16), then 32 signed bytes.
const STORED_BLOCK: usize = 2 + BLOCK;

/// A matrix of Q8_0 weights, `rows × cols`, row-major.
#[derive(Debug)]
pub(crate) struct Matrix {
    rows: usize,
    cols: usize,
    scales: Vec<f32>,
    quants: Vec<[i8; BLOCK]>,
}

impl Matrix {
    /// The matrix stored in `bytes` as GGUF Q8_0 blocks, row after row.
    pub(crate) fn from_q8_0(rows: usize, cols: usize, bytes: &[u8]) -> Result<Matrix, String> {
        if !cols.is_multiple_of(BLOCK) || bytes.len() != rows * cols / BLOCK * STORED_BLOCK {
            return Err(format!("{} bytes are not a {rows}×{cols} Q8_0 matrix", bytes.len()));
        }
        let (scales, quants) = bytes
            .chunks_exact(STORED_BLOCK)
            .map(|block| {
                let scale = f16::from_le_bytes([block[0], block[1]]).to_f32();
                (scale, std::array::from_fn(|j| i8::from_le_bytes([block[2 + j]])))
            })
            .unzip();
        Ok(Matrix { rows, cols, scales, quants })
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
        for ((out, &scale), quants) in
            out.chunks_exact_mut(BLOCK).zip(&self.scales[range.clone()]).zip(&self.quants[range])
        {
            for (out, &q) in out.iter_mut().zip(quants) {
                *out = f32::from(q) * scale;
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
        let blocks = self.cols / BLOCK;
        let width = rows.len();
        let (first_row, first_vector) = (rows.start, vectors.start);
        pulp::Arch::new().dispatch(
            #[inline(always)]
            || {
                for r in rows {
                    let range = r * blocks..(r + 1) * blocks;
                    let (scales, quants) = (&self.scales[range.clone()], &self.quants[range]);
                    for t in vectors.clone() {
                        let range = t * blocks..(t + 1) * blocks;
                        out[(t - first_vector) * width + r - first_row] =
                            dot(scales, quants, &input.scales[range.clone()], &input.quants[range]);
                    }
                }
            },
        );
    }
}

/// Vectors quantized to Q8_0 blocks, the input of [`Matrix::mul_rows`].
#[derive(Debug, Default)]
pub(crate) struct Vectors {
    count: usize,
    scales: Vec<f32>,
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
        self.quants.clear();
        for block in values.chunks_exact(BLOCK) {
            let max = block.iter().fold(0f32, |max, x| max.max(x.abs()));
            let scale = max / 127.0;
            let inverse = if scale == 0.0 { 0.0 } else { 1.0 / scale };
            self.scales.push(f16::from_f32(scale).to_f32());
            self.quants.push(std::array::from_fn(|j| (block[j] * inverse).round() as i8));
        }
    }
}

/// The dot product of one weight row and one quantized vector.
#[inline(always)]
fn dot(
    weight_scales: &[f32],
    weights: &[[i8; BLOCK]],
    input_scales: &[f32],
    inputs: &[[i8; BLOCK]],
) -> f32 {
    let mut sum = 0f32;
    for (((&ws, w), &xs), x) in weight_scales.iter().zip(weights).zip(input_scales).zip(inputs) {
        let mut block = 0i32;
        for (&w, &x) in w.iter().zip(x) {
            block += i32::from(i16::from(w) * i16::from(x));
        }
        sum += block as f32 * (ws * xs);
    }
    sum
}
