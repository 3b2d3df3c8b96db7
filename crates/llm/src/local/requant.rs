//! Converting Q4_1, Q5_0 and Q5_1 weights into Q8_0, the one type the model's kernel
//! multiplies (candle 0.11 too had SIMD dot products for Q8_0 but none for these). Q8_0 keeps the same 32-value blocks with one scale and 8-bit values, so a
//! block of weights centred near zero converts with an error of a few percent of its 4- or
//! 5-bit step (at most 5.4% over all of SmolLM2's weights).
//!
//! The model is built by `Llama::read`, which reads tensors from a GGUF stream:
//! [`requantize`] hands it the original metadata with new tensor descriptions over an
//! in-memory buffer of tensor data, converted where needed.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};

use candle_core::quantized::gguf_file::{Content, TensorInfo};
use candle_core::quantized::{GgmlDType, QTensor, ggml_file};
use candle_core::{Device, Result};
use half::f16;

/// Bytes of a Q4_1 block: scale and minimum (f16 each), then 16 bytes of 4-bit values.
const Q4_1_BLOCK: usize = 20;
/// Bytes of a Q8_0 block: scale (f16), then 32 signed bytes.
const Q8_0_BLOCK: usize = 34;
/// Values per block, in both.
const BLOCK_VALUES: usize = 32;

/// Whether candle multiplies this weight type with scalar code only.
pub(crate) fn lacks_simd(dtype: GgmlDType) -> bool {
    matches!(dtype, GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q5_1)
}

/// `content` with every [`lacks_simd`] tensor converted to Q8_0, and the tensor data to read
/// it from (a reader at offset 0 of the returned buffer).
pub(crate) fn requantize<R: Read + Seek>(
    content: Content,
    reader: &mut R,
) -> Result<(Content, Vec<u8>)> {
    // Tensors in file order, so the file is read front to back.
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort_by_key(|name| content.tensor_infos[*name].offset);
    let mut data = Vec::new();
    let mut infos = HashMap::with_capacity(names.len());
    for name in names {
        let info = &content.tensor_infos[name];
        let dtype = info.ggml_dtype;
        let elements = info.shape.elem_count();
        if !elements.is_multiple_of(dtype.block_size()) {
            candle_core::bail!("tensor {name}: {elements} values do not fill whole blocks");
        }
        let mut raw = vec![0u8; elements / dtype.block_size() * dtype.type_size()];
        reader.seek(SeekFrom::Start(content.tensor_data_offset + info.offset))?;
        reader.read_exact(&mut raw)?;
        let (dtype, bytes) = match dtype {
            GgmlDType::Q4_1 => (GgmlDType::Q8_0, q4_1_to_q8_0(&raw)),
            other if lacks_simd(other) => {
                let cpu = Device::Cpu;
                let tensor =
                    ggml_file::qtensor_from_ggml(other, &raw, info.shape.dims().to_vec(), &cpu)?;
                let converted = QTensor::quantize(&tensor.dequantize(&cpu)?, GgmlDType::Q8_0)?;
                (GgmlDType::Q8_0, converted.data()?.into_owned())
            }
            other => (other, raw),
        };
        // GGUF aligns tensor data to 32 bytes; keep that.
        data.resize(data.len().next_multiple_of(32), 0);
        infos.insert(
            name.clone(),
            TensorInfo { ggml_dtype: dtype, shape: info.shape.clone(), offset: data.len() as u64 },
        );
        data.extend_from_slice(&bytes);
    }
    let converted = Content {
        magic: content.magic,
        metadata: content.metadata,
        tensor_infos: infos,
        tensor_data_offset: 0,
    };
    Ok((converted, data))
}

/// Q4_1 blocks to Q8_0 blocks, on all cores (it is most of the load time otherwise).
fn q4_1_to_q8_0(raw: &[u8]) -> Vec<u8> {
    let blocks = raw.len() / Q4_1_BLOCK;
    let mut out = vec![0u8; blocks * Q8_0_BLOCK];
    let workers = std::thread::available_parallelism().map_or(1, usize::from);
    let per_worker = blocks.div_ceil(workers).max(1024);
    std::thread::scope(|scope| {
        for (src, dst) in
            raw.chunks(per_worker * Q4_1_BLOCK).zip(out.chunks_mut(per_worker * Q8_0_BLOCK))
        {
            scope.spawn(move || {
                for (block, target) in
                    src.chunks_exact(Q4_1_BLOCK).zip(dst.chunks_exact_mut(Q8_0_BLOCK))
                {
                    convert_block(block, target);
                }
            });
        }
    });
    out
}

/// One Q4_1 block (`d`, `m`, nibbles: value `j` is the low nibble of byte `j`, value
/// `j + 16` its high nibble; each is `q * d + m`) to one Q8_0 block (`d`, 32 values
/// `round(x / d)` with `d = max |x| / 127`).
fn convert_block(block: &[u8], target: &mut [u8]) {
    let d = f16::from_le_bytes([block[0], block[1]]).to_f32();
    let m = f16::from_le_bytes([block[2], block[3]]).to_f32();
    let mut values = [0f32; BLOCK_VALUES];
    for (j, &byte) in block[4..Q4_1_BLOCK].iter().enumerate() {
        values[j] = f32::from(byte & 0x0F) * d + m;
        values[j + BLOCK_VALUES / 2] = f32::from(byte >> 4) * d + m;
    }
    let max = values.iter().fold(0f32, |max, x| max.max(x.abs()));
    let scale = max / 127.0;
    let inverse = if scale == 0.0 { 0.0 } else { 1.0 / scale };
    target[..2].copy_from_slice(&f16::from_f32(scale).to_le_bytes());
    for (slot, x) in target[2..].iter_mut().zip(values) {
        *slot = ((x * inverse).round() as i8).to_le_bytes()[0];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Random-looking but fixed Q4_1 blocks, with scales and minimums of either sign.
    fn q4_1_blocks(count: usize) -> Vec<u8> {
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut raw = Vec::with_capacity(count * Q4_1_BLOCK);
        for i in 0..count {
            let d = (next() % 1000) as f32 / 20_000.0 * if i % 3 == 0 { -1.0 } else { 1.0 };
            let m = ((next() % 2000) as f32 - 1000.0) / 10_000.0;
            let d = if i % 17 == 0 { 0.0 } else { d };
            raw.extend_from_slice(&f16::from_f32(d).to_le_bytes());
            raw.extend_from_slice(&f16::from_f32(m).to_le_bytes());
            for _ in 0..16 {
                raw.push(next() as u8);
            }
        }
        raw
    }

    #[test]
    fn matches_candles_own_dequantize_then_quantize() {
        let blocks = 3000;
        let raw = q4_1_blocks(blocks);
        let cpu = Device::Cpu;
        let dims = vec![blocks / 10, 10 * BLOCK_VALUES];
        let tensor = ggml_file::qtensor_from_ggml(GgmlDType::Q4_1, &raw, dims, &cpu).unwrap();
        let expected = QTensor::quantize(&tensor.dequantize(&cpu).unwrap(), GgmlDType::Q8_0)
            .unwrap()
            .data()
            .unwrap()
            .into_owned();
        assert_eq!(q4_1_to_q8_0(&raw), expected);
    }

    #[test]
    fn error_is_a_small_fraction_of_a_q4_1_step() {
        // Blocks shaped like real weights: the minimum near -8 steps, so values straddle 0.
        let mut raw = Vec::new();
        let mut steps = Vec::new();
        for i in 0..500u16 {
            let d = 0.001 + f32::from(i) * 0.0001;
            let m = -(8.0 + f32::from(i % 5) - 2.0) * d;
            raw.extend_from_slice(&f16::from_f32(d).to_le_bytes());
            raw.extend_from_slice(&f16::from_f32(m).to_le_bytes());
            raw.extend((0..16u16).map(|j| ((i.wrapping_mul(31) + j * 7) % 256) as u8));
            steps.push(f16::from_f32(d).to_f32());
        }
        let cpu = Device::Cpu;
        let dims = vec![steps.len(), BLOCK_VALUES];
        let before = ggml_file::qtensor_from_ggml(GgmlDType::Q4_1, &raw, dims.clone(), &cpu)
            .and_then(|t| t.dequantize(&cpu)?.flatten_all()?.to_vec1::<f32>())
            .unwrap();
        let after = ggml_file::qtensor_from_ggml(GgmlDType::Q8_0, &q4_1_to_q8_0(&raw), dims, &cpu)
            .and_then(|t| t.dequantize(&cpu)?.flatten_all()?.to_vec1::<f32>())
            .unwrap();
        for (i, (a, b)) in before.iter().zip(&after).enumerate() {
            let step = steps[i / BLOCK_VALUES];
            assert!((a - b).abs() <= 0.1 * step, "value {i}: {a} became {b}, step {step}");
        }
    }
}
