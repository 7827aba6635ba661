//! Q8_0 matmul: magpie's kernel against candle's QMatMul on the Gemma 3 270M
//! output-layer shape (262,144 × 640). `cargo run --release -p magpie-candle --example q8bench`
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use magpie_candle::llm::q8::Q8Matrix;
use std::time::Instant;

fn main() {
    let dev = Device::Cpu;
    let (rows, cols) = (262_144, 640);
    let w = Tensor::randn(0f32, 1.0, (rows, cols), &dev).unwrap();
    let q = QTensor::quantize(&w, GgmlDType::Q8_0).unwrap();
    let ours = Q8Matrix::from_qtensor(QTensor::quantize(&w, GgmlDType::Q8_0).unwrap())
        .ok()
        .unwrap();
    let theirs = QMatMul::from_qtensor(q).unwrap();
    for m in [1usize, 64] {
        let x = Tensor::randn(0f32, 1.0, (1, m, cols), &dev).unwrap();
        for round in 0..3 {
            let t = Instant::now();
            for _ in 0..10 {
                ours.forward(&x).unwrap();
            }
            let a = t.elapsed().as_secs_f64() / 10.0;
            let t = Instant::now();
            for _ in 0..10 {
                theirs.forward(&x).unwrap();
            }
            let b = t.elapsed().as_secs_f64() / 10.0;
            println!(
                "m={m} round {round}: magpie {:.2} ms, candle {:.2} ms",
                a * 1e3,
                b * 1e3
            );
        }
    }
}
