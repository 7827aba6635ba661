//! `docqa plugins ...`, `docqa ask --tools` and `docqa bench plugins`: the
//! WebAssembly tool plugins.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use magpie_plugin_host::{HostConfig, OperatorConfig, PluginHost, SearchBackend};

/// Where plugins come from and what the operator grants them.
#[derive(Args, Debug, Clone)]
pub struct PluginArgs {
    /// Plugin directory: one subdirectory per plugin, each with a plugin.toml.
    #[arg(
        long = "plugins",
        global = true,
        env = "MAGPIE_PLUGINS",
        default_value = "plugins/dist"
    )]
    pub dir: PathBuf,
    /// The operator's plugin configuration (TOML): grants, HTTP hosts, limits.
    /// Without it, plugins get no capability at all.
    #[arg(long, global = true, env = "MAGPIE_PLUGIN_CONFIG")]
    pub plugin_config: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum PluginsCommand {
    /// List the plugins that load, their tools and what they are granted.
    List {
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one plugin: summary, tools with their JSON schemas, grants and limits.
    Info {
        /// The plugin's name.
        name: String,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Call a tool directly, e.g. `docqa plugins call calculator calculate '{"expression":"2+2"}'`.
    Call {
        /// The plugin's name.
        name: String,
        /// The tool's name.
        tool: String,
        /// The arguments, a JSON object.
        #[arg(default_value = "{}")]
        arguments: String,
    },
}

/// Load the plugins, with the index as the search backend when one is given.
pub async fn open_host(
    args: &PluginArgs,
    search: Option<Arc<dyn SearchBackend>>,
) -> Result<PluginHost> {
    PluginHost::open(&args.dir, &args.operator()?, search)
        .await
        .map_err(|e| match args.dir.is_dir() {
            true => e.into(),
            false => anyhow::anyhow!(
                "{e}: build the bundled plugins with scripts/build_plugins.sh, or pass --plugins DIR"
            ),
        })
}

impl PluginArgs {
    /// The operator's configuration (`--plugin-config`), or none granted.
    pub fn operator(&self) -> Result<OperatorConfig> {
        Ok(match &self.plugin_config {
            Some(p) => OperatorConfig::read(p)?,
            None => OperatorConfig::default(),
        })
    }
}

fn index_search(index: &Path, models: &crate::flags::ModelArgs) -> Option<Arc<dyn SearchBackend>> {
    match crate::flags::open(index, models, crate::flags::OpenOptions::search()) {
        Ok(engine) => Some(Arc::new(magpie_plugin_host::RetrieverSearch::new(
            engine.retriever(magpie::SearchMode::Hybrid),
        ))),
        Err(e) => {
            tracing::info!("plugins get no index to search: {e:#}");
            None
        }
    }
}

pub async fn run(
    cmd: &PluginsCommand,
    args: &PluginArgs,
    index: &Path,
    models: &crate::flags::ModelArgs,
) -> Result<()> {
    match cmd {
        PluginsCommand::List { json } => {
            let host = open_host(args, None).await?;
            if *json {
                let list: Vec<_> = host
                    .plugins()
                    .map(|p| {
                        serde_json::json!({
                            "name": p.description.name,
                            "version": p.description.version,
                            "summary": p.description.summary,
                            "tools": p.description.tools.iter().map(|t| &t.name).collect::<Vec<_>>(),
                            "granted": p.grants.list(),
                            "load": p.timings,
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&list)?);
                return Ok(());
            }
            if host.plugins().count() == 0 {
                println!("No plugins in {}.", args.dir.display());
            }
            for p in host.plugins() {
                let d = &p.description;
                let granted = p.grants.list();
                println!(
                    "{} {}  {}\n    tools: {}\n    granted: {}",
                    d.name,
                    d.version,
                    d.summary,
                    d.tools
                        .iter()
                        .map(|t| t.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    if granted.is_empty() {
                        "nothing".to_string()
                    } else {
                        granted.join("; ")
                    }
                );
            }
        }
        PluginsCommand::Info { name, json } => {
            let host = open_host(args, None).await?;
            let p = host.plugin(name).with_context(|| {
                format!(
                    "no plugin `{name}` loaded from {} (see `docqa plugins list`)",
                    args.dir.display()
                )
            })?;
            if *json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "description": p.description,
                        "requested": p.manifest.capabilities,
                        "requested_http_hosts": p.manifest.http_hosts,
                        "granted": p.grants,
                        "limits": p.limits,
                        "wasm_bytes": p.wasm_bytes,
                        "load": p.timings,
                        "dir": p.dir,
                    }))?
                );
                return Ok(());
            }
            let d = &p.description;
            println!("{} {}: {}", d.name, d.version, d.summary);
            println!("  directory   {}", p.dir.display());
            println!("  component   {} KiB", p.wasm_bytes / 1024);
            println!(
                "  requested   {}",
                if p.manifest.capabilities.is_empty() {
                    "nothing".to_string()
                } else {
                    p.manifest
                        .capabilities
                        .iter()
                        .map(|c| c.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            );
            let granted = p.grants.list();
            println!(
                "  granted     {}",
                if granted.is_empty() {
                    "nothing".to_string()
                } else {
                    granted.join("; ")
                }
            );
            println!(
                "  limits      {} MiB memory, {:?} per call, {} KiB output",
                p.limits.memory >> 20,
                p.limits.timeout,
                p.limits.output >> 10
            );
            println!(
                "  loaded in   {:.1} ms ({})",
                p.timings.compile_ms + p.timings.prepare_ms,
                if p.timings.cached {
                    "compiled code from the cache"
                } else {
                    "compiled now"
                }
            );
            for t in &d.tools {
                println!("\n  tool {}: {}", t.name, t.description);
                let schema = serde_json::to_string_pretty(&t.parameters)?;
                for line in schema.lines() {
                    println!("    {line}");
                }
            }
        }
        PluginsCommand::Call {
            name,
            tool,
            arguments,
        } => {
            let host = open_host(args, index_search(index, models)).await?;
            let out = host.call(name, tool, arguments).await?;
            println!("{}", serde_json::to_string_pretty(&out.value)?);
            tracing::info!(
                instantiate_us = out.instantiate_us,
                call_us = out.call_us,
                "called"
            );
        }
    }
    Ok(())
}

/// `docqa bench plugins`: load, instantiate and call costs, against a native
/// call of the same calculator code.
pub async fn bench(wasm_dir: &Path, iterations: usize) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("plugins");
    for name in ["calculator", "solver", "search", "fetch", "hostile"] {
        let src = wasm_dir.join(format!("magpie_plugin_{name}.wasm"));
        anyhow::ensure!(
            src.is_file(),
            "{} is missing: run scripts/build_plugins.sh first",
            src.display()
        );
        std::fs::create_dir_all(dir.join(name))?;
        std::fs::copy(&src, dir.join(name).join(format!("{name}.wasm")))?;
        std::fs::write(
            dir.join(name).join("plugin.toml"),
            format!("name = \"{name}\"\nwasm = \"{name}.wasm\"\n"),
        )?;
    }
    let config = || HostConfig {
        cache_dir: Some(tmp.path().join("cache")),
        ..HostConfig::default()
    };
    println!("plugin          size KiB   first load ms   cached load ms");
    let mut host = PluginHost::new(config())?;
    for r in host.load_dir(&dir, &OperatorConfig::default()).await {
        r?;
    }
    let mut cached = PluginHost::new(config())?;
    for r in cached.load_dir(&dir, &OperatorConfig::default()).await {
        r?;
    }
    for p in host.plugins() {
        let c = cached.plugin(&p.description.name).unwrap();
        println!(
            "{:<14} {:>9} {:>15.1} {:>16.1}",
            p.description.name,
            p.wasm_bytes / 1024,
            p.timings.compile_ms + p.timings.prepare_ms,
            c.timings.compile_ms + c.timings.prepare_ms
        );
    }
    let host = Arc::new(cached);

    // Warm: instantiate + no-op call, one at a time.
    for _ in 0..50 {
        host.call("hostile", "noop", "{}").await?;
    }
    let mut inst = Vec::with_capacity(iterations);
    let mut call = Vec::with_capacity(iterations);
    let mut total = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let t0 = Instant::now();
        let out = host.call("hostile", "noop", "{}").await?;
        total.push(t0.elapsed().as_secs_f64() * 1e6);
        inst.push(out.instantiate_us);
        call.push(out.call_us);
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let p99 = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[(v.len() * 99) / 100]
    };
    println!("\nno-op tool, {iterations} calls (µs)   median    p99");
    println!(
        "  instantiate                  {:>8.1} {:>6.1}",
        med(&mut inst),
        p99(&mut inst)
    );
    println!(
        "  call                         {:>8.1} {:>6.1}",
        med(&mut call),
        p99(&mut call)
    );
    println!(
        "  whole call (host side)       {:>8.1} {:>6.1}",
        med(&mut total),
        p99(&mut total)
    );

    // The calculator as a plugin; the same code natively is timed by
    // plugins/mathexpr's `native` example, so docqa links no guest crate.
    let args = r#"{"expression":"2 + 3 * (4 - 1)^2 / sqrt(16)"}"#;
    let mut wasm = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let t0 = Instant::now();
        let out = host.call("calculator", "calculate", args).await?;
        wasm.push(t0.elapsed().as_secs_f64() * 1e6);
        std::hint::black_box(out);
    }
    println!("\ncalculator, {iterations} calls (µs)      median");
    println!("  wasm plugin (fresh instance) {:>8.1}", med(&mut wasm));
    println!(
        "  (natively: cargo run --release --manifest-path plugins/Cargo.toml -p magpie-mathexpr \
         --example native -- {iterations})"
    );

    // Throughput with two threads (tokio tasks on the multi-thread runtime).
    let per_task = iterations;
    for threads in [1usize, 2] {
        let t0 = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..threads {
            let host = host.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..per_task {
                    host.call("calculator", "calculate", args).await?;
                }
                anyhow::Ok(())
            }));
        }
        for t in tasks {
            t.await??;
        }
        let secs = t0.elapsed().as_secs_f64();
        println!(
            "  calls/s with {threads} task(s)        {:>8.0}",
            (threads * per_task) as f64 / secs
        );
    }
    Ok(())
}
