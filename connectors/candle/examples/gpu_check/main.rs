//! The GPU check: the LLM and the embedder on an NVIDIA GPU against the CPU.
//!
//! 1. Parity: every tiny model of the tests (llama, qwen2, qwen3, chatglm,
//!    glm4) and a tiny gemma3 written here, on the GPU against the CPU: the
//!    logits of each prompt, the top choice, 16 greedy tokens, and the
//!    logits after a context shift (the cache moved and re-rotated there);
//!    with attention as matrix products and as the fused kernel (flash.cu).
//! 2. Speed: a llama of Llama 3.2 1B's shape (Q4_K, Q6_K embedding, random
//!    weights, written here): load, prompt and generation tokens/s, and the
//!    bytes a generated token reads against the GPU's memory bandwidth; with
//!    each attention.
//! 3. The embedder in f16 on the GPU (a BERT of MiniLM's shape, random
//!    weights) against magpie's CPU encoder: sentences/s and agreement.
//!
//! `scripts/gpu_check.sh` builds it with the `cuda` feature and runs it;
//! on a machine without a GPU it runs the CPU side (a dry run of the
//! script, small sizes) and says loudly what it skipped.
//!
//!     gpu_check --models DIR --work DIR [--report FILE] [--size full|small]
//!
//! DIR holds `tiny-*-2l.gguf` with their `prompts-*.json` (written by
//! `write_tiny_models`) and `minilm/` (all-MiniLM-L6-v2's files without its
//! weights). Exits 1 when a parity check fails.

mod checks;
mod models;

use std::path::PathBuf;
use std::process::ExitCode;

use magpie_candle::llm::AttentionKernel;
use serde::Serialize;

struct Args {
    models: PathBuf,
    work: PathBuf,
    report: Option<PathBuf>,
    full: Option<bool>,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        models: PathBuf::new(),
        work: std::env::temp_dir().join("magpie-gpu-check"),
        report: None,
        full: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().ok_or(format!("{k} needs a value"));
        match k.as_str() {
            "--models" => a.models = v()?.into(),
            "--work" => a.work = v()?.into(),
            "--report" => a.report = Some(v()?.into()),
            "--size" => a.full = Some(v()? == "full"),
            "-h" | "--help" => {
                return Err(
                    "usage: gpu_check --models DIR --work DIR [--report FILE] [--size full|small]"
                        .into(),
                )
            }
            other => return Err(format!("unknown argument {other} (see --help)")),
        }
    }
    if !a.models.join("prompts-llama.json").is_file() {
        return Err(format!(
            "{} has no prompts-llama.json: give --models the folder scripts/gpu_check.sh gathers",
            a.models.display()
        ));
    }
    Ok(a)
}

#[derive(Serialize)]
struct Report {
    device: magpie_candle::DeviceReport,
    gpu: bool,
    parity: Vec<checks::Parity>,
    speed: Option<checks::Speed>,
    /// The same with the fused attention kernel.
    speed_fused: Option<checks::Speed>,
    /// Its bytes/s against the rated bandwidth.
    bandwidth_fraction_fused: Option<f64>,
    /// The GPU's memory bandwidth as its maker states it, bytes/s.
    rated_bandwidth: Option<f64>,
    /// A device-to-device copy, bytes read + written per second.
    copy_bandwidth: Option<f64>,
    /// The generation's bytes/s against the rated bandwidth.
    bandwidth_fraction: Option<f64>,
    embed: Option<checks::Embed>,
}

/// HBM bandwidth as NVIDIA rates it.
fn rated(name: &str) -> Option<f64> {
    if name.contains("H200") {
        Some(4.8e12)
    } else if name.contains("H100") {
        Some(3.35e12)
    } else {
        None
    }
}

fn main() -> ExitCode {
    let a = match args() {
        Ok(a) => a,
        Err(m) => {
            eprintln!("{m}");
            return ExitCode::from(2);
        }
    };
    std::fs::create_dir_all(&a.work).expect("work folder");
    let dev = magpie_candle::select_device();
    let gpu = !dev.is_cpu();
    let device = magpie_candle::describe_device(&dev);
    println!("device: {}", device.name);
    if !gpu {
        println!(
            "SKIPPED: no GPU here (build with the cuda feature and run on a GPU machine). \
             This dry run compares the CPU with itself and times the CPU, at small sizes."
        );
    }
    let full = a.full.unwrap_or(gpu);

    // 1. parity
    let mut parity = Vec::new();
    let gemma = a.work.join("tiny-gemma3-2l.gguf");
    models::write_transformer(
        &models::Shape::gemma3_tiny(),
        &a.models.join("tiny-llama-2l.gguf"),
        &gemma,
        5,
    );
    let mut files: Vec<(PathBuf, String)> = ["llama", "qwen2", "qwen3", "chatglm", "glm4"]
        .iter()
        .map(|k| (a.models.join(format!("tiny-{k}-2l.gguf")), k.to_string()))
        .collect();
    files.push((gemma, "llama".into()));
    for (path, prompts) in files {
        let prompts: Vec<String> = serde_json::from_str(
            &std::fs::read_to_string(a.models.join(format!("prompts-{prompts}.json")))
                .expect("prompts"),
        )
        .expect("prompts JSON");
        for attention in [AttentionKernel::Matmul, AttentionKernel::Fused] {
            let p = checks::parity(&path, &dev, &prompts, attention);
            println!(
            "parity {} ({} attention): {} (max |diff| {:.4}, top-1 same {}/{}, greedy {}/{}, after a shift {:?}){}",
            p.model,
            p.attention,
            if p.ok { "ok" } else { "FAILED" },
            p.cases.iter().map(|c| c.max_abs_diff).fold(0.0, f32::max),
            p.cases.iter().filter(|c| c.top1_same).count(),
            p.cases.len(),
            p.cases.iter().map(|c| c.greedy_same).sum::<usize>(),
            p.cases.iter().map(|c| c.greedy_total).sum::<usize>(),
            p.shift_diff,
            p.error.as_ref().map(|e| format!(": {e}")).unwrap_or_default(),
        );
            parity.push(p);
        }
    }

    // 2. speed
    let shape = if full {
        models::Shape::llama_1b()
    } else {
        models::Shape::llama_small()
    };
    let big = a.work.join(format!(
        "random-llama-{}l-{}.gguf",
        shape.layers, shape.hidden
    ));
    let t = std::time::Instant::now();
    models::write_transformer(&shape, &a.models.join("tiny-llama-2l.gguf"), &big, 1);
    println!(
        "wrote {} ({:.2} B parameters) in {:.1} s",
        big.display(),
        shape.parameters() as f64 / 1e9,
        t.elapsed().as_secs_f64()
    );
    let rated_bw = rated(&device.name);
    let copy_bw = if gpu {
        checks::copy_rate(&dev, 1 << 30).ok()
    } else {
        None
    };
    let speed = checks::speed(&big, &dev, (512, 128, 3), AttentionKernel::Matmul);
    let fraction = print_speed(&speed, rated_bw, copy_bw);
    let speed_fused = checks::speed(&big, &dev, (512, 128, 3), AttentionKernel::Fused);
    let fraction_fused = print_speed(&speed_fused, rated_bw, copy_bw);

    // 3. embedder
    let bert = a.work.join("minilm-random");
    std::fs::create_dir_all(&bert).expect("embedder folder");
    for f in std::fs::read_dir(a.models.join("minilm")).expect("minilm files") {
        let f = f.expect("minilm file").path();
        if f.is_file() {
            std::fs::copy(&f, bert.join(f.file_name().unwrap())).expect("copy");
        }
    }
    models::write_bert(&bert, 9);
    let embed = checks::embed(&bert, &dev, if full { 4096 } else { 128 }, 3);
    println!(
        "embedder {}: {:?} sentences/s; CPU ({}) {:.0} sentences/s; least cosine {:.5}{}",
        embed.backend,
        embed
            .sentences_per_s
            .iter()
            .map(|x| x.round())
            .collect::<Vec<_>>(),
        embed.cpu_backend,
        embed.cpu_sentences_per_s,
        embed.least_cosine,
        embed
            .error
            .as_ref()
            .map(|e| format!(": ERROR {e}"))
            .unwrap_or_default(),
    );

    let ok = parity.iter().all(|p| p.ok)
        && speed.error.is_none()
        && speed_fused.error.is_none()
        && embed.error.is_none();
    let report = Report {
        device,
        gpu,
        parity,
        speed: Some(speed),
        speed_fused: Some(speed_fused),
        rated_bandwidth: rated_bw,
        copy_bandwidth: copy_bw,
        bandwidth_fraction: fraction,
        bandwidth_fraction_fused: fraction_fused,
        embed: Some(embed),
    };
    if let Some(p) = &a.report {
        std::fs::write(p, serde_json::to_string_pretty(&report).unwrap()).expect("report");
        println!("report: {}", p.display());
    }
    if !gpu {
        println!("SKIPPED: the GPU parts (no GPU); the dry run above ran the CPU side only");
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        println!("FAILED: see above");
        ExitCode::from(1)
    }
}

/// Print one speed run; its bytes/s against the rated bandwidth.
fn print_speed(speed: &checks::Speed, rated_bw: Option<f64>, copy_bw: Option<f64>) -> Option<f64> {
    let fraction = rated_bw.map(|bw| speed.read_bytes_per_s / bw);
    println!(
        "speed {} ({} attention): load {:.2} s, prompt {:?} tokens/s, generation {:?} tokens/s, {:.0} MB read per token, {:.0} GB/s{}{}{}",
        speed.model,
        speed.attention,
        speed.load_s,
        speed.prompt_tok_s.iter().map(|x| x.round()).collect::<Vec<_>>(),
        speed.generate_tok_s.iter().map(|x| (x * 10.0).round() / 10.0).collect::<Vec<_>>(),
        (speed.weight_bytes + speed.kv_bytes) as f64 / 1e6,
        speed.read_bytes_per_s / 1e9,
        fraction.map(|f| format!(", {:.0}% of the rated bandwidth", f * 100.0)).unwrap_or_default(),
        copy_bw.map(|c| format!(" (a copy moves {:.0} GB/s)", c / 1e9)).unwrap_or_default(),
        speed.error.as_ref().map(|e| format!(": ERROR {e}")).unwrap_or_default(),
    );
    if let (Some(used), est) = (speed.device_memory_used, speed.estimate_bytes) {
        println!(
            "device memory in use {:.2} GB, estimate {:.2} GB (weights + cache)",
            used as f64 / 1e9,
            est as f64 / 1e9
        );
    }
    fraction
}
