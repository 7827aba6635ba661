//! The calculator's work called natively, for comparing with the wasm plugin
//! (`docqa bench plugins` times the plugin): the same expression, the same
//! JSON in and out.
//!
//! cargo run --release --manifest-path plugins/Cargo.toml -p magpie-mathexpr --example native -- 2000

use std::time::Instant;

fn main() {
    let iterations: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2000)
        .max(1);
    let args = r#"{"expression":"2 + 3 * (4 - 1)^2 / sqrt(16)"}"#;
    let mut times = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let t0 = Instant::now();
        let v: serde_json::Value = serde_json::from_str(args).expect("valid JSON");
        let expr = v["expression"].as_str().unwrap_or_default();
        let value = magpie_mathexpr::evaluate(expr).expect("a valid expression");
        let out = serde_json::json!({
            "expression": expr, "result": magpie_mathexpr::format_number(value), "value": value
        })
        .to_string();
        times.push(t0.elapsed().as_secs_f64() * 1e6);
        std::hint::black_box(out);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "calculator natively, {iterations} calls: median {:.2} µs",
        times[times.len() / 2]
    );
}
