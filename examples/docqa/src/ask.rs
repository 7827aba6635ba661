//! `docqa ask`, `docqa model info` and `docqa bench llm`.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use futures::StreamExt;
use magpie_core::{
    AnswerOptions, GenerationEvent, GenerationOptions, Generator, Prompt, QueryPipeline,
};
use serde::Serialize;

use crate::flags::{Mode, ModelArgs, OpenOptions};

/// How each answer is made: `docqa ask` and `docqa chat` share these.
#[derive(clap::Args, Debug, Clone)]
pub struct AnswerFlags {
    /// Retrieval mode.
    #[arg(long, value_enum, default_value = "hybrid")]
    pub mode: Mode,
    /// Passages retrieved before packing them into the prompt.
    #[arg(short, default_value_t = 6)]
    pub k: usize,
    /// Most tokens in the answer.
    #[arg(long, default_value_t = 200)]
    pub max_tokens: usize,
    /// Sampling temperature (0 = greedy).
    #[arg(long, default_value_t = 0.2)]
    pub temperature: f32,
    /// Most tokens of passages in the prompt.
    #[arg(long, default_value_t = 1200)]
    pub context_tokens: usize,
    /// When to answer "the documents do not cover this question" (with the
    /// nearest passages) instead of letting the model guess, by how well the
    /// passages found match the question (the best sentence's cosine, where
    /// the embedder was measured, and how much of the question's rare words
    /// one passage holds): `measured` (the threshold measured on SQuAD and
    /// CMRC conversations, BENCHMARKS.md "Knowing when not to answer"), `off`,
    /// or an answerability between 0 and 1, 0.5 being the measured one (higher
    /// abstains more; `docqa eval chat` shows what each one costs).
    #[arg(long, default_value = "measured", env = "DOCQA_ABSTAIN")]
    pub abstain: magpie::AbstainSetting,
    /// Answer a first question that says "it" or "they" without naming what,
    /// rather than asking back what it refers to.
    #[arg(long)]
    pub no_clarify: bool,
    /// How a follow-up's search reads the conversation (`ask --session`,
    /// `chat`): `fused` (the recent user turns' search and the last
    /// message's, fused: measured best with the default models),
    /// `last-turn`, `joined`, `condensed` (the model first rewrites the
    /// follow-up as a question that stands alone, and that is searched: for
    /// larger models; the default one rewrites badly, BENCHMARKS.md
    /// "Condensing"), or `condensed-fused` (the rewrite's search fused with
    /// `fused`'s two).
    #[arg(long, value_enum, default_value = "fused")]
    pub history: History,
}

/// [`magpie_core::HistoryMode`], as the command line names it.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum History {
    LastTurn,
    Joined,
    Fused,
    Condensed,
    CondensedFused,
}

impl From<History> for magpie_core::HistoryMode {
    fn from(h: History) -> Self {
        match h {
            History::LastTurn => Self::LastTurn,
            History::Joined => Self::Joined,
            History::Fused => Self::Fused,
            History::Condensed => Self::Condensed,
            History::CondensedFused => Self::CondensedFused,
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct AskArgs {
    /// The question.
    pub question: String,
    #[command(flatten)]
    pub answer: AnswerFlags,
    /// Only use passages that pass this filter (as `docqa search --filter`; repeatable).
    #[arg(long = "filter", value_name = "CLAUSE")]
    pub filters: Vec<String>,
    /// Seed for reproducible answers.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Print the whole answer (text, citations, sources, usage, timings) as JSON.
    #[arg(long)]
    pub json: bool,
    /// Let the model call the plugins' tools while it answers (see `docqa plugins list`).
    #[arg(long)]
    pub tools: bool,
    /// How the model writes tool calls: MOSS command lines, or JSON in <tool_call> tags.
    #[arg(long, value_enum, default_value = "moss")]
    pub tool_format: ToolFormatArg,
    /// Most tool calls in one answer.
    #[arg(long, default_value_t = 4)]
    pub max_tool_calls: usize,
    /// Continue the conversation NAME (kept in the index directory, under
    /// sessions/): a follow-up such as "and how long does it take?" is asked
    /// with the turns before it.
    #[arg(long, value_name = "NAME")]
    pub session: Option<String>,
}

/// `--tool-format`.
#[derive(clap::ValueEnum, Debug, Clone, Copy)]
pub enum ToolFormatArg {
    /// `<|Commands|>: Calculate("2+2")` (MOSS).
    Moss,
    /// `<tool_call>{"name": ..., "arguments": ...}</tool_call>`.
    Json,
}

pub async fn ask(
    index: &std::path::Path,
    models: &ModelArgs,
    plugin_args: &crate::plugins::PluginArgs,
    args: &AskArgs,
) -> Result<()> {
    let engine = crate::flags::open(index, models, OpenOptions::search())?;
    let llm = models.load_generator_with_loras()?;
    let llm = llm.as_ref();
    let (mut session, history) = open_session(&engine, args.session.as_deref())?;
    let answer = answer_turn(&engine, llm, plugin_args, args, history).await?;
    if let Some(s) = &mut session {
        s.push(&args.question, answer.text.trim());
        s.save().map_err(crate::flags::hint)?;
    }
    print_answer(answer, args.json)
}

/// Answer `args.question` after the turns in `history` (oldest first):
/// retrieval reads the recent user turns, the prompt carries the recent turns.
/// The text streams to stdout unless `args.json`.
async fn answer_turn(
    engine: &magpie::Index,
    llm: &dyn Generator,
    plugin_args: &crate::plugins::PluginArgs,
    args: &AskArgs,
    history: Vec<magpie_core::ChatMessage>,
) -> Result<magpie_core::Answer> {
    let retriever = magpie_core::ConversationRetriever::after(
        engine.retriever(args.answer.mode),
        &history,
        args.answer.history.into(),
    )
    .condensed_by(llm, &args.question)
    .await?;
    let retriever = std::sync::Arc::new(retriever);
    let pipeline = QueryPipeline::new(retriever)
        .top_k(args.answer.k)
        .filter(magpie_core::Filter::parse_all(&args.filters)?);
    let opts = AnswerOptions {
        k: args.answer.k,
        max_context_tokens: args.answer.context_tokens,
        few_shot: true,
        generation: GenerationOptions {
            max_tokens: args.answer.max_tokens,
            temperature: args.answer.temperature,
            seed: args.seed,
            ..GenerationOptions::default()
        },
        history,
        clarify: !args.answer.no_clarify,
        abstention: engine.abstention(args.answer.abstain),
    };
    let prepared = pipeline.prepare_answer(&args.question, llm, &opts).await?;
    if prepared.sources.is_empty() {
        tracing::warn!(
            "nothing relevant was found in the index; the model answers without passages"
        );
    }
    // The text as it streams; the first piece usually starts with the space
    // after "Answer:".
    let quiet = args.json;
    let mut started = false;
    let mut show = |t: &str| {
        if !quiet {
            let shown = if started { t } else { t.trim_start() };
            started |= !shown.is_empty();
            print!("{shown}");
            let _ = std::io::Write::flush(&mut std::io::stdout());
        }
    };
    let answer = if args.tools {
        let search = std::sync::Arc::new(magpie_plugin_host::RetrieverSearch::new(
            engine.retriever(args.answer.mode),
        ));
        let host = crate::plugins::open_host(plugin_args, Some(search)).await?;
        let moss = magpie_core::MossFormat;
        let json = magpie_core::JsonFormat;
        let tool_loop = magpie_core::ToolLoop {
            generator: llm,
            toolbox: &host,
            format: match args.tool_format {
                ToolFormatArg::Moss => &moss,
                ToolFormatArg::Json => &json,
            },
            max_calls: args.max_tool_calls,
        };
        prepared.run_with_tools(&tool_loop, &mut show).await?
    } else {
        prepared
            .run(llm, &mut show)
            .await
            .context("generating the answer")?
    };
    Ok(answer)
}

/// The named session (if any) and the conversation it holds so far.
fn open_session(
    engine: &magpie::Index,
    name: Option<&str>,
) -> Result<(Option<magpie::Session>, Vec<magpie_core::ChatMessage>)> {
    let Some(name) = name else {
        return Ok((None, Vec::new()));
    };
    let s = magpie::Session::open(&engine.layout(), name).map_err(crate::flags::hint)?;
    let history = s.messages.clone();
    Ok((Some(s), history))
}

/// `docqa chat`.
#[derive(clap::Args, Debug)]
pub struct ChatArgs {
    #[command(flatten)]
    pub answer: AnswerFlags,
    /// Keep the conversation as NAME in the index directory (go on with
    /// `docqa chat --session NAME` or `docqa ask --session NAME` later).
    #[arg(long, value_name = "NAME")]
    pub session: Option<String>,
}

/// `docqa chat`: a conversation in the terminal, one question per line; each
/// answer streams, with its sources; an empty line or end of input ends it.
pub async fn chat(
    index: &std::path::Path,
    models: &ModelArgs,
    plugin_args: &crate::plugins::PluginArgs,
    args: &ChatArgs,
) -> Result<()> {
    use std::io::BufRead;
    let engine = crate::flags::open(index, models, OpenOptions::search())?;
    let llm = models.load_generator_with_loras()?;
    let (mut session, mut history) = open_session(&engine, args.session.as_deref())?;
    eprintln!("Ask about the documents; an empty line ends the chat.");
    let stdin = std::io::stdin();
    loop {
        eprint!("> ");
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        let question = line.trim().to_string();
        let turn = AskArgs {
            question: question.clone(),
            answer: args.answer.clone(),
            filters: Vec::new(),
            seed: None,
            json: false,
            tools: false,
            tool_format: ToolFormatArg::Moss,
            max_tool_calls: 0,
            session: None,
        };
        let answer =
            answer_turn(&engine, llm.as_ref(), plugin_args, &turn, history.clone()).await?;
        history.push(magpie_core::ChatMessage::new(
            magpie_core::Role::User,
            question.as_str(),
        ));
        history.push(magpie_core::ChatMessage::new(
            magpie_core::Role::Assistant,
            answer.text.trim(),
        ));
        if let Some(s) = &mut session {
            s.push(&question, answer.text.trim());
            s.save().map_err(crate::flags::hint)?;
        }
        print_answer(answer, false)?;
    }
    Ok(())
}

fn print_answer(answer: magpie_core::Answer, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(());
    }
    println!();
    println!();
    if !answer.tool_calls.is_empty() {
        println!("Tool calls:");
        for c in &answer.tool_calls {
            let outcome = match (&c.result, &c.error) {
                (Some(r), _) => crate::preview(r, 160),
                (_, Some(e)) => format!("error: {}", crate::preview(e, 160)),
                _ => String::new(),
            };
            println!(
                "  {}({}) -> {outcome}  [{:.1} ms]",
                c.tool, c.arguments, c.ms
            );
        }
        println!();
    }
    let cited: Vec<usize> = answer.citations.iter().map(|c| c.number).collect();
    println!("Sources:");
    for s in &answer.sources {
        let mark = if cited.contains(&s.number) { "*" } else { " " };
        let heading = crate::heading_suffix(&s.heading_path);
        println!(
            "{mark}[{}] {}{}{heading}",
            s.number,
            s.source,
            s.span.cite_suffix()
        );
    }
    let t = &answer.timings;
    eprintln!(
        "({} prompt + {} answer tokens; first token after {:.0} ms, {:.1} tokens/s; retrieval {:.0} ms)",
        answer.usage.prompt_tokens,
        answer.usage.completion_tokens,
        t.time_to_first_token_ms,
        t.tokens_per_sec,
        answer.retrieval_ms
    );
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct LlmBenchArgs {
    /// Prompt length in tokens.
    #[arg(long, default_value_t = 384)]
    pub prompt_tokens: usize,
    /// Tokens generated.
    #[arg(long, default_value_t = 128)]
    pub gen_tokens: usize,
    /// Timed repetitions (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Prompt text file (default: the bundled sample corpus, repeated).
    #[arg(long)]
    pub prompt_file: Option<PathBuf>,
}

#[derive(Serialize)]
struct LlmBench {
    runtime: &'static str,
    model: String,
    /// LoRA adapters applied (`--lora`), as NAME:SCALE.
    adapters: Vec<String>,
    prompt_tokens: usize,
    gen_tokens: usize,
    load_seconds: f64,
    prefill_tokens_per_sec: f64,
    decode_tokens_per_sec: f64,
    runs: Vec<(f64, f64)>,
    peak_rss_mib: f64,
    /// Where it ran.
    device: String,
    /// What the KV cache held keys and values in (`--kv-cache`).
    kv_cache: String,
    /// How attention ran: "own" (magpie's CPU kernels), else candle's path
    /// with "matmul" or "fused" (`MAGPIE_ATTENTION`).
    attention: &'static str,
    /// Device memory in use after the runs (GPUs only).
    device_memory_used_mib: Option<f64>,
    /// Bytes one generated token reads (weights once, plus the KV cache at
    /// the midpoint of generation), where decoding runs fused.
    decode_bytes_per_token: Option<usize>,
    /// Those bytes times the decode rate: GB/s of memory read while
    /// generating (compare `docqa bench memory`).
    decode_read_gb_s: Option<f64>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Prefill and decode speed, the way llama.cpp's llama-bench measures them:
/// a prompt of exactly N tokens from an empty cache, then M tokens one by one
/// (greedy, no stop).
pub fn bench_llm(args: &LlmBenchArgs, models: &ModelArgs) -> Result<()> {
    let t = Instant::now();
    let llm = models.load_llm()?;
    let load = t.elapsed().as_secs_f64();
    let text = match &args.prompt_file {
        Some(p) => std::fs::read_to_string(p)?,
        None => bench_prompt_text(),
    };
    let mut ids = llm.encode_prompt(&text)?;
    anyhow::ensure!(
        ids.len() >= args.prompt_tokens,
        "the prompt text has only {} tokens",
        ids.len()
    );
    ids.truncate(args.prompt_tokens);
    // with --lora, every adapter at its scale (they run the generic path)
    let adapters = models.models().lora_choices();
    let loras = llm.resolve_adapters(&adapters)?;
    let model = llm.model();
    let mut runs = Vec::new();
    for _ in 0..args.repeat.max(1) {
        let mut cache = model.new_cache(args.prompt_tokens + args.gen_tokens + 1);
        let t = Instant::now();
        let last = model.prefill_with(&ids, &mut cache, 256, &loras)?;
        let prefill = t.elapsed().as_secs_f64();
        let mut logits = magpie_candle::llm::Transformer::to_vec(&last)?;
        let t = Instant::now();
        for _ in 0..args.gen_tokens {
            let tok = magpie_core::argmax(&logits);
            logits = magpie_candle::llm::Transformer::to_vec(&model.forward_with(
                &[tok],
                &mut cache,
                false,
                &loras,
            )?)?;
        }
        let decode = t.elapsed().as_secs_f64();
        runs.push((
            args.prompt_tokens as f64 / prefill,
            args.gen_tokens as f64 / decode,
        ));
    }
    let dev = magpie_candle::describe_device(model.device());
    let decode_rate = median(runs.iter().map(|r| r.1).collect());
    let decode_bytes = loras
        .is_empty()
        .then(|| model.decode_bytes(args.prompt_tokens + args.gen_tokens / 2))
        .flatten();
    let out = LlmBench {
        runtime: "magpie",
        model: llm.model_id().to_string(),
        adapters: adapters
            .iter()
            .map(|a| format!("{}:{}", a.name, a.scale))
            .collect(),
        prompt_tokens: args.prompt_tokens,
        gen_tokens: args.gen_tokens,
        load_seconds: load,
        prefill_tokens_per_sec: median(runs.iter().map(|r| r.0).collect()),
        decode_tokens_per_sec: decode_rate,
        runs,
        peak_rss_mib: magpie_core::guard::peak_rss_mib().unwrap_or(0.0),
        device: dev.name,
        kv_cache: model.kv_cache().to_string(),
        attention: if model.own_kernels() {
            "own"
        } else {
            model.attention().name()
        },
        device_memory_used_mib: dev.memory_used_bytes.map(|b| b as f64 / (1 << 20) as f64),
        decode_bytes_per_token: decode_bytes,
        decode_read_gb_s: decode_bytes.map(|b| b as f64 * decode_rate / 1e9),
    };
    println!("{}", serde_json::to_string(&out)?);
    Ok(())
}

/// The bundled sample corpus's guide, repeated: a prompt long enough for any bench.
pub fn bench_prompt_text() -> String {
    let s = include_str!("../sample/guide/configuration.md").to_string()
        + include_str!("../sample/guide/install.md")
        + include_str!("../sample/faq.txt");
    s.repeat(6)
}

/// Continue a plain prompt (for trying a model).
pub async fn generate(models: &ModelArgs, prompt: &str, opts: GenerationOptions) -> Result<()> {
    let llm = models.load_llm()?;
    let opts = GenerationOptions {
        adapters: models.models().lora_choices(),
        ..opts
    };
    let mut s = llm.generate(Prompt::Text(prompt.to_string()), opts).await?;
    let mut out = std::io::stdout();
    while let Some(ev) = s.next().await {
        match ev? {
            GenerationEvent::Delta { text } => {
                write!(out, "{text}")?;
                out.flush()?;
            }
            GenerationEvent::Done(sum) => {
                println!();
                eprintln!(
                    "({} prompt + {} generated tokens, {:?}; {:.1} prompt tokens/s, {:.1} tokens/s)",
                    sum.usage.prompt_tokens,
                    sum.usage.completion_tokens,
                    sum.finish_reason,
                    sum.timings.prompt_tokens_per_sec,
                    sum.timings.tokens_per_sec
                );
            }
        }
    }
    Ok(())
}
