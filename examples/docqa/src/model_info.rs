//! `docqa model info`: what a GGUF model holds and the memory it needs, and
//! what a LoRA adapter adapts (rank, targets, size) and whether it fits.

use std::path::Path;

use anyhow::{Context, Result};
use magpie::models::LoraSpec;
use magpie_candle::llm::{adapter_info, is_adapter, AdapterSummary};
use magpie_candle::{LlmOptions, LocalLlm};
use serde::Serialize;

/// `docqa model info PATH [--lora NAME=ADAPTER]…`: a model, or an adapter
/// given as PATH; with `--lora`, each adapter and whether it fits the model.
pub fn model_info(path: &Path, json: bool, loras: &[LoraSpec]) -> Result<()> {
    let path = magpie_candle::resolve_gguf(&path.to_string_lossy())?;
    if is_adapter(&path) {
        anyhow::ensure!(
            loras.is_empty(),
            "{} is a LoRA adapter: give the base model as PATH and the adapter with --lora",
            path.display()
        );
        let a = adapter_info(&path)?;
        if json {
            println!("{}", serde_json::to_string_pretty(&a)?);
        } else {
            print_adapter(&a);
        }
        return Ok(());
    }
    let info = magpie_candle::llm::model_info(&path)?;
    let device = magpie_candle::describe_device(&magpie_candle::select_device());
    let adapters = check_adapters(&path, loras)?;
    if json {
        let mut v = serde_json::to_value(&info)?;
        v["device"] = serde_json::to_value(&device)?;
        if !loras.is_empty() {
            v["adapters"] = serde_json::to_value(&adapters)?;
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
        return fitted(&adapters);
    }
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    println!("{}", info.path);
    if let Some(n) = &info.name {
        println!("  name            {n}");
    }
    println!(
        "  architecture    {}{}",
        info.architecture,
        if info.supported {
            ""
        } else {
            "  (not supported by magpie)"
        }
    );
    println!("  parameters      {:.1} M", info.parameters as f64 / 1e6);
    let q: Vec<String> = info
        .quantization
        .iter()
        .map(|(k, v)| format!("{k} ×{v}"))
        .collect();
    println!(
        "  tensor types    {} (mostly {})",
        q.join(", "),
        info.main_type
    );
    if let (Some(l), Some(h), Some(kv), Some(d)) =
        (info.layers, info.heads, info.kv_heads, info.head_dim)
    {
        println!("  layers          {l}, {h} heads ({kv} key/value), head size {d}");
    }
    if let Some(c) = info.context_length {
        println!("  context length  {c}");
    }
    println!(
        "  vocabulary      {} tokens ({}){}",
        info.vocab_size,
        info.tokenizer.as_deref().unwrap_or("?"),
        if info.chat_template {
            ", chat template"
        } else {
            ", no chat template (base model)"
        }
    );
    println!("  file            {:.2} GiB", gib(info.file_bytes));
    println!("  device          {}", device.name);
    println!("  memory (weights + f16 KV cache at the full context):");
    for m in &info.memory {
        println!(
            "    {:<10} {:>7.2} GiB + {:>6.2} GiB = {:>7.2} GiB",
            m.precision,
            gib(m.weights_bytes),
            gib(m.kv_cache_bytes),
            gib(m.total_bytes)
        );
    }
    for a in &adapters {
        print_adapter(&a.summary);
        match &a.error {
            None => println!("    fits this model"),
            Some(e) => println!("    does NOT fit this model: {e}"),
        }
    }
    fitted(&adapters)
}

/// An adapter given with `--lora`, and whether it loads on the model.
#[derive(Serialize)]
struct AdapterCheck {
    #[serde(flatten)]
    summary: AdapterSummary,
    /// The scale `--lora` gives it.
    scale: f32,
    /// Why it does not fit the model (none: it loads).
    error: Option<String>,
}

/// Read every adapter of `loras` and try it on the model at `path` (loaded
/// once, only when there are adapters).
fn check_adapters(path: &Path, loras: &[LoraSpec]) -> Result<Vec<AdapterCheck>> {
    if loras.is_empty() {
        return Ok(Vec::new());
    }
    let llm = LocalLlm::load(path, LlmOptions::default())?;
    let mut out = Vec::new();
    for l in loras {
        let mut summary = adapter_info(&l.path)
            .with_context(|| format!("--lora {}={}", l.name, l.path.display()))?;
        summary.name = l.name.clone();
        let error = llm
            .load_adapter(&l.name, &l.path)
            .err()
            .map(|e| e.to_string());
        out.push(AdapterCheck {
            summary,
            scale: l.scale,
            error,
        });
    }
    Ok(out)
}

/// An error when an adapter does not fit (after everything was printed).
fn fitted(adapters: &[AdapterCheck]) -> Result<()> {
    let bad: Vec<&str> = adapters
        .iter()
        .filter(|a| a.error.is_some())
        .map(|a| a.summary.name.as_str())
        .collect();
    anyhow::ensure!(
        bad.is_empty(),
        "LoRA adapter(s) {} do not fit this model (see above)",
        bad.join(", ")
    );
    Ok(())
}

fn print_adapter(a: &AdapterSummary) {
    println!("LoRA adapter {} ({})", a.name, a.path);
    println!("    base architecture  {}", a.arch);
    let ranks: Vec<String> = a.ranks.iter().map(|r| r.to_string()).collect();
    println!(
        "    rank               {}{}",
        ranks.join(", "),
        if a.alpha > 0.0 {
            format!(" (alpha {})", a.alpha)
        } else {
            " (no alpha: applied at its scale)".into()
        }
    );
    println!(
        "    targets            {} ({} matrices)",
        a.targets.join(", "),
        a.tensors
    );
    println!(
        "    size               {:.2} M parameters, {:.2} MiB",
        a.parameters as f64 / 1e6,
        a.file_bytes as f64 / (1u64 << 20) as f64
    );
}
