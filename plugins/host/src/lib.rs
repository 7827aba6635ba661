//! magpie-plugin-host: the WebAssembly tool-plugin host.
//!
//! Plugins are components built against the contract in `plugins/wit`
//! (`magpie:plugin@0.1.0`). Each lives in a directory with a `plugin.toml`
//! manifest. The host compiles each once (cached on disk by content hash),
//! keeps an `InstancePre`, and runs every call in a fresh store from the
//! pooling allocator (copy-on-write memory images), so calls are isolated,
//! cheap and may run concurrently.
//!
//! Every call runs under a memory cap, a time budget (epoch interruption, a
//! ticker thread), a stack cap and an output cap. Nothing is granted by
//! default: WASI has no files, no sockets and no environment; `search` and
//! `http` answer with an error unless the operator granted them.
//!
//! ```no_run
//! # async fn demo() -> Result<(), magpie_plugin_host::PluginError> {
//! use magpie_plugin_host::{HostConfig, OperatorConfig, PluginHost};
//! let mut host = PluginHost::new(HostConfig::default())?;
//! host.load_dir("plugins/dist".as_ref(), &OperatorConfig::default()).await;
//! let out = host.call("calculator", "calculate", r#"{"expression":"2+2"}"#).await?;
//! assert_eq!(out.value["result"], "4");
//! # Ok(()) }
//! ```

mod cache;
mod config;
pub mod http;
mod imports;
mod search;

pub use config::{
    valid_name, Capability, Grants, Limits, LimitsRequest, Manifest, OperatorConfig, PluginGrant,
};
pub use http::HttpLimits;
pub use search::RetrieverSearch;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::Serialize;
use serde_json::Value;
use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "plugin",
        imports: { default: async },
        exports: { default: async },
    });
}

use bindings::magpie::plugin as wit;

/// Errors of the plugin host. Each says what went wrong and, where it helps,
/// what to do.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("plugin {plugin}: {message}")]
    Load { plugin: String, message: String },
    #[error("plugin configuration: {0}")]
    Config(String),
    #[error("no plugin named `{0}` is loaded")]
    NotFound(String),
    #[error("plugin {plugin} has no tool `{tool}` (it has: {known})")]
    UnknownTool {
        plugin: String,
        tool: String,
        known: String,
    },
    #[error("{plugin}.{tool}: invalid arguments: {message}")]
    InvalidArguments {
        plugin: String,
        tool: String,
        message: String,
    },
    #[error("{plugin}.{tool} failed: {message}")]
    Failed {
        plugin: String,
        tool: String,
        message: String,
    },
    #[error("{plugin}.{tool} ran past its time budget of {budget:?} and was stopped")]
    Timeout {
        plugin: String,
        tool: String,
        budget: Duration,
    },
    #[error(
        "{plugin}.{tool} used up its instruction budget ({fuel} units of fuel) and was stopped"
    )]
    OutOfFuel {
        plugin: String,
        tool: String,
        fuel: u64,
    },
    #[error("{plugin}.{tool} hit its memory cap of {limit_mib} MiB and was stopped")]
    MemoryCap {
        plugin: String,
        tool: String,
        limit_mib: usize,
    },
    #[error("{plugin}.{tool} overflowed its stack and was stopped")]
    StackOverflow { plugin: String, tool: String },
    #[error("{plugin}.{tool} crashed: {message}")]
    Crashed {
        plugin: String,
        tool: String,
        message: String,
    },
    #[error("{plugin}.{tool} returned an invalid result: {message}")]
    InvalidOutput {
        plugin: String,
        tool: String,
        message: String,
    },
    #[error("{plugin}.{tool} returned {size} bytes; the limit is {limit}")]
    OutputTooLarge {
        plugin: String,
        tool: String,
        size: usize,
        limit: usize,
    },
    #[error("plugin host: {0}")]
    Host(String),
}

/// A passage for the `search` capability.
#[derive(Debug, Clone, Serialize)]
pub struct SearchHit {
    pub text: String,
    pub source: String,
    pub doc_id: String,
    pub score: f32,
}

/// What the `search` capability searches; the application provides it.
#[async_trait]
pub trait SearchBackend: Send + Sync {
    /// The `k` best passages for `query`.
    async fn search(&self, query: &str, k: usize) -> Result<Vec<SearchHit>, String>;
}

/// How the host runs plugins.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// Maximum limits for any plugin (a manifest may ask for less).
    pub limits: Limits,
    /// Wasm stack cap in bytes.
    pub max_stack: usize,
    /// Where compiled components are cached (None: no disk cache). It must be
    /// writable only by the operator: cached code is trusted.
    pub cache_dir: Option<PathBuf>,
    /// Caps for HTTP requests.
    pub http: HttpLimits,
    /// Most hits a `search` call returns.
    pub max_search_k: usize,
    /// Time for one host `search` call.
    pub search_timeout: Duration,
    /// Calls that may run at once (pool size of the allocator).
    pub max_concurrent: u32,
    /// Epoch tick; time budgets are checked at this granularity.
    pub tick: Duration,
    /// Instructions budget per call (deterministic, unlike time; costs some
    /// speed). None: time budgets only.
    pub fuel: Option<u64>,
}

impl Default for HostConfig {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            max_stack: 512 << 10,
            cache_dir: default_cache_dir(),
            http: HttpLimits::default(),
            max_search_k: 20,
            search_timeout: Duration::from_secs(10),
            max_concurrent: 64,
            tick: Duration::from_millis(5),
            fuel: None,
        }
    }
}

/// `$XDG_CACHE_HOME/magpie/plugins`, else `~/.cache/magpie/plugins`.
pub fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("magpie").join("plugins"))
}

/// A tool of a loaded plugin.
#[derive(Debug, Clone, Serialize)]
pub struct ToolInfo {
    pub name: String,
    pub description: String,
    pub parameters: Value,
}

/// What `describe` said, checked.
#[derive(Debug, Clone, Serialize)]
pub struct PluginDescription {
    pub name: String,
    pub version: String,
    pub summary: String,
    pub tools: Vec<ToolInfo>,
}

/// How long loading took.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct LoadTimings {
    /// Compiling (or reading from the cache), milliseconds.
    pub compile_ms: f64,
    /// Whether the compiled code came from the disk cache.
    pub cached: bool,
    /// Linking and the first instantiation + describe, milliseconds.
    pub prepare_ms: f64,
}

/// A loaded plugin.
pub struct LoadedPlugin {
    pub manifest: Manifest,
    pub dir: PathBuf,
    pub description: PluginDescription,
    pub grants: Grants,
    pub limits: Limits,
    pub timings: LoadTimings,
    /// Size of the component file, bytes.
    pub wasm_bytes: usize,
    pre: bindings::PluginPre<State>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("name", &self.description.name)
            .field("grants", &self.grants)
            .finish()
    }
}

/// The output of a successful call.
#[derive(Debug, Clone, Serialize)]
pub struct CallOutput {
    /// The result, parsed.
    pub value: Value,
    /// The result as the plugin wrote it.
    pub json: String,
    /// Instantiation time, microseconds.
    pub instantiate_us: f64,
    /// The call itself, microseconds.
    pub call_us: f64,
}

/// Per-plugin state shared by its calls.
struct Shared {
    name: String,
    grants: Grants,
    http: Option<http::GuardedClient>,
    search: Option<Arc<dyn SearchBackend>>,
    max_search_k: usize,
    search_timeout: Duration,
}

/// Per-call state: WASI (nothing granted), the memory cap, the plugin's grants.
struct State {
    wasi: WasiCtx,
    table: ResourceTable,
    memory: MemoryCap,
    shared: Arc<Shared>,
    logged: usize,
    /// The guest's stderr (a panic message lands here).
    stderr: MemoryOutputPipe,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Refuses growth past the cap and remembers that it did.
struct MemoryCap {
    limit: usize,
    hit: bool,
}

impl wasmtime::ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.limit {
            self.hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

/// Stops the epoch ticker when the host goes.
struct Ticker {
    stop: Arc<AtomicBool>,
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The plugin host.
pub struct PluginHost {
    engine: Engine,
    linker: Linker<State>,
    config: HostConfig,
    plugins: BTreeMap<String, Arc<LoadedPlugin>>,
    search: Option<Arc<dyn SearchBackend>>,
    /// One permit per pool slot: calls past the pool's size wait their turn.
    slots: Arc<tokio::sync::Semaphore>,
    _ticker: Ticker,
}

impl PluginHost {
    /// A host with no plugins loaded.
    pub fn new(config: HostConfig) -> Result<Self, PluginError> {
        let mut wc = Config::new();
        wc.wasm_component_model(true)
            .epoch_interruption(true)
            .max_wasm_stack(config.max_stack)
            .async_stack_size(config.max_stack + (1 << 20))
            .memory_init_cow(true)
            .parallel_compilation(true)
            .consume_fuel(config.fuel.is_some());
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(config.max_concurrent)
            .total_core_instances(config.max_concurrent * 8)
            .total_memories(config.max_concurrent * 2)
            .total_tables(config.max_concurrent * 4)
            .total_stacks(config.max_concurrent)
            .max_memory_size(config.limits.memory)
            .max_memories_per_component(2)
            .max_core_instances_per_component(32)
            .max_tables_per_component(8)
            .max_component_instance_size(1 << 20)
            .max_core_instance_size(1 << 20)
            .table_elements(100_000)
            .linear_memory_keep_resident(0);
        wc.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        // A pool this size reserves address space for every slot; fall back to
        // on-demand allocation where that is refused (low `ulimit -v`).
        let engine = match Engine::new(&wc) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!("pooling allocator unavailable ({e}); allocating on demand");
                wc.allocation_strategy(InstanceAllocationStrategy::OnDemand);
                Engine::new(&wc).map_err(|e| PluginError::Host(e.to_string()))?
            }
        };
        let mut linker: Linker<State> = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| PluginError::Host(format!("linking WASI: {e}")))?;
        bindings::Plugin::add_to_linker::<State, HasSelf<State>>(&mut linker, |s| s)
            .map_err(|e| PluginError::Host(format!("linking the host interfaces: {e}")))?;
        let stop = Arc::new(AtomicBool::new(false));
        {
            let engine = engine.clone();
            let stop = stop.clone();
            let tick = config.tick;
            std::thread::Builder::new()
                .name("magpie-plugin-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(tick);
                        engine.increment_epoch();
                    }
                })
                .map_err(|e| PluginError::Host(format!("starting the epoch ticker: {e}")))?;
        }
        let slots = Arc::new(tokio::sync::Semaphore::new(config.max_concurrent as usize));
        Ok(Self {
            engine,
            linker,
            config,
            plugins: BTreeMap::new(),
            search: None,
            slots,
            _ticker: Ticker { stop },
        })
    }

    /// A host with the default limits and every plugin under `dir` loaded
    /// with the operator's grants; plugins granted `search` search `search`.
    /// A plugin that fails to load is logged and left out; a missing
    /// directory is an error.
    pub async fn open(
        dir: &Path,
        operator: &OperatorConfig,
        search: Option<Arc<dyn SearchBackend>>,
    ) -> Result<Self, PluginError> {
        if !dir.is_dir() {
            return Err(PluginError::Config(format!(
                "no plugin directory at {}",
                dir.display()
            )));
        }
        let mut host = Self::new(HostConfig::default())?;
        host.search = search;
        for r in host.load_dir(dir, operator).await {
            if let Err(e) = r {
                tracing::warn!("{e}");
            }
        }
        Ok(host)
    }

    /// Give plugins granted `search` this index to search (set before loading).
    pub fn set_search(&mut self, backend: Arc<dyn SearchBackend>) {
        self.search = Some(backend);
    }

    /// The host's configuration.
    pub fn config(&self) -> &HostConfig {
        &self.config
    }

    /// Load every plugin under `dir` (each subdirectory with a `plugin.toml`).
    /// One broken plugin does not stop the others: each result is returned.
    pub async fn load_dir(
        &mut self,
        dir: &Path,
        operator: &OperatorConfig,
    ) -> Vec<Result<String, PluginError>> {
        let mut out = Vec::new();
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) => {
                out.push(Err(PluginError::Config(format!(
                    "cannot read the plugin directory {}: {e}",
                    dir.display()
                ))));
                return out;
            }
        };
        let mut manifests: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("plugin.toml"))
            .filter(|p| p.is_file())
            .collect();
        manifests.sort();
        for m in manifests {
            let name = match Manifest::read(&m) {
                Ok(man) => man.name,
                Err(e) => {
                    out.push(Err(e));
                    continue;
                }
            };
            let grant = operator.grant_for(&name);
            if !grant.enabled {
                tracing::info!(plugin = %name, "disabled by the operator");
                continue;
            }
            out.push(self.load(&m, &grant, &operator.limits).await);
        }
        out
    }

    /// Load one plugin from its manifest with the operator's grant.
    pub async fn load(
        &mut self,
        manifest_path: &Path,
        grant: &PluginGrant,
        max_limits: &LimitsRequest,
    ) -> Result<String, PluginError> {
        let manifest = Manifest::read(manifest_path)?;
        let name = manifest.name.clone();
        let err = |message: String| PluginError::Load {
            plugin: name.clone(),
            message,
        };
        if self.plugins.contains_key(&name) {
            return Err(err("a plugin of this name is already loaded".into()));
        }
        let dir = manifest_path
            .parent()
            .unwrap_or(Path::new("."))
            .to_path_buf();
        if manifest.wasm.is_absolute()
            || manifest
                .wasm
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(err(format!(
                "wasm = {:?} must be a file inside the plugin's directory",
                manifest.wasm
            )));
        }
        let wasm_path = dir.join(&manifest.wasm);
        let bytes = std::fs::read(&wasm_path)
            .map_err(|e| err(format!("cannot read {}: {e}", wasm_path.display())))?;
        let t0 = Instant::now();
        let (component, cached) =
            cache::compile(&self.engine, self.config.cache_dir.as_deref(), &bytes).map_err(&err)?;
        let compile_ms = t0.elapsed().as_secs_f64() * 1000.0;
        let t1 = Instant::now();
        let instance_pre = self.linker.instantiate_pre(&component).map_err(|e| {
            err(format!(
                "it does not fit this host's contract (magpie:plugin@0.1.0): {e}"
            ))
        })?;
        let pre = bindings::PluginPre::new(instance_pre)
            .map_err(|e| err(format!("it does not export the plugin world: {e}")))?;
        let operator_max = self.config.limits.capped(max_limits);
        let limits = operator_max.capped(&manifest.limits);
        let grants = Grants::effective(&manifest, grant);
        for cap in &manifest.capabilities {
            if !grant.grant.contains(cap) {
                tracing::info!(plugin = %name, capability = %cap, "asked for but not granted");
            }
        }
        let http = if grants.http {
            Some(http::GuardedClient::new(grants.clone(), self.config.http).map_err(&err)?)
        } else {
            None
        };
        let shared = Arc::new(Shared {
            name: name.clone(),
            grants: grants.clone(),
            http,
            search: if grants.search {
                self.search.clone()
            } else {
                None
            },
            max_search_k: self.config.max_search_k,
            search_timeout: self.config.search_timeout,
        });
        let description = self
            .describe(&pre, &shared, &limits)
            .await
            .map_err(|e| err(format!("describe failed: {e}")))?;
        if description.name != name {
            return Err(err(format!(
                "the component calls itself {:?} but the manifest says {:?}",
                description.name, name
            )));
        }
        let prepare_ms = t1.elapsed().as_secs_f64() * 1000.0;
        tracing::info!(plugin = %name, tools = description.tools.len(), compile_ms, cached, "plugin loaded");
        self.plugins.insert(
            name.clone(),
            Arc::new(LoadedPlugin {
                manifest,
                dir,
                description,
                grants,
                limits,
                timings: LoadTimings {
                    compile_ms,
                    cached,
                    prepare_ms,
                },
                wasm_bytes: bytes.len(),
                pre,
                shared,
            }),
        );
        Ok(name)
    }

    fn new_store(&self, shared: &Arc<Shared>, limits: &Limits) -> Store<State> {
        let stderr = MemoryOutputPipe::new(16 << 10);
        let mut wasi = WasiCtxBuilder::new();
        wasi.stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        let state = State {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            memory: MemoryCap {
                limit: limits.memory,
                hit: false,
            },
            shared: shared.clone(),
            logged: 0,
            stderr,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.memory);
        if let Some(fuel) = self.config.fuel {
            // Only fails when fuel is off, and it is on when `fuel` is set.
            let _ = store.set_fuel(fuel);
        }
        let deadline = Instant::now() + limits.timeout;
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            if Instant::now() >= deadline {
                Ok(wasmtime::UpdateDeadline::Interrupt)
            } else {
                Ok(wasmtime::UpdateDeadline::Yield(1))
            }
        });
        store
    }

    async fn describe(
        &self,
        pre: &bindings::PluginPre<State>,
        shared: &Arc<Shared>,
        limits: &Limits,
    ) -> Result<PluginDescription, String> {
        let mut store = self.new_store(shared, limits);
        let plugin = pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| e.to_string())?;
        let info = plugin
            .call_describe(&mut store)
            .await
            .map_err(|e| e.to_string())?;
        if !valid_name(&info.name) {
            return Err(format!("invalid plugin name {:?}", info.name));
        }
        let mut tools = Vec::new();
        for t in info.tools {
            if !valid_name(&t.name) {
                return Err(format!("invalid tool name {:?}", t.name));
            }
            if tools.iter().any(|x: &ToolInfo| x.name == t.name) {
                return Err(format!("tool {:?} is listed twice", t.name));
            }
            let parameters: Value = serde_json::from_str(&t.parameters)
                .map_err(|e| format!("tool {}: parameters are not JSON: {e}", t.name))?;
            if !parameters.is_object() {
                return Err(format!(
                    "tool {}: parameters must be a JSON Schema object",
                    t.name
                ));
            }
            tools.push(ToolInfo {
                name: t.name,
                description: t.description,
                parameters,
            });
        }
        Ok(PluginDescription {
            name: info.name,
            version: info.version,
            summary: info.summary,
            tools,
        })
    }

    /// The loaded plugins, by name.
    pub fn plugins(&self) -> impl Iterator<Item = &Arc<LoadedPlugin>> {
        self.plugins.values()
    }

    /// One loaded plugin.
    pub fn plugin(&self, name: &str) -> Option<&Arc<LoadedPlugin>> {
        self.plugins.get(name)
    }

    /// Call `tool` of `plugin` with `arguments` (a JSON object as text).
    pub async fn call(
        &self,
        plugin: &str,
        tool: &str,
        arguments: &str,
    ) -> Result<CallOutput, PluginError> {
        let p = self
            .plugins
            .get(plugin)
            .ok_or_else(|| PluginError::NotFound(plugin.to_string()))?;
        let (pn, tn) = (plugin.to_string(), tool.to_string());
        if !p.description.tools.iter().any(|t| t.name == tool) {
            return Err(PluginError::UnknownTool {
                plugin: pn,
                tool: tn,
                known: p
                    .description
                    .tools
                    .iter()
                    .map(|t| t.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        let args: Value =
            serde_json::from_str(arguments).map_err(|e| PluginError::InvalidArguments {
                plugin: pn.clone(),
                tool: tn.clone(),
                message: format!("not valid JSON: {e}"),
            })?;
        if !args.is_object() {
            return Err(PluginError::InvalidArguments {
                plugin: pn,
                tool: tn,
                message: "arguments must be a JSON object".into(),
            });
        }
        let _slot = self
            .slots
            .acquire()
            .await
            .map_err(|_| PluginError::Host("the plugin host is shutting down".into()))?;
        let mut store = self.new_store(&p.shared, &p.limits);
        let t0 = Instant::now();
        let mut instantiate_us = 0.0;
        let mut t1 = t0;
        // The epoch deadline stops guest code; this one also stops a call
        // blocked in a host function (an HTTP request, a search), so the
        // budget is wall time whatever the plugin waits on.
        let run = async {
            let instance = p
                .pre
                .instantiate_async(&mut store)
                .await
                .map_err(|e| self.classify(&mut store, p, tool, e))?;
            instantiate_us = t0.elapsed().as_secs_f64() * 1e6;
            t1 = Instant::now();
            instance
                .call_call(&mut store, tool, arguments)
                .await
                .map_err(|e| self.classify(&mut store, p, tool, e))
        };
        let result = match tokio::time::timeout(p.limits.timeout, run).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(PluginError::Timeout {
                    plugin: pn,
                    tool: tn,
                    budget: p.limits.timeout,
                })
            }
        };
        let call_us = t1.elapsed().as_secs_f64() * 1e6;
        match result {
            Ok(json) => {
                if json.len() > p.limits.output {
                    return Err(PluginError::OutputTooLarge {
                        plugin: pn,
                        tool: tn,
                        size: json.len(),
                        limit: p.limits.output,
                    });
                }
                let value: Value =
                    serde_json::from_str(&json).map_err(|e| PluginError::InvalidOutput {
                        plugin: pn.clone(),
                        tool: tn.clone(),
                        message: format!("the result is not JSON ({e})"),
                    })?;
                Ok(CallOutput {
                    value,
                    json,
                    instantiate_us,
                    call_us,
                })
            }
            Err(wit::types::ToolError::UnknownTool(m)) => Err(PluginError::UnknownTool {
                plugin: pn,
                tool: tn,
                known: m,
            }),
            Err(wit::types::ToolError::InvalidArguments(m)) => Err(PluginError::InvalidArguments {
                plugin: pn,
                tool: tn,
                message: cap_text(&m),
            }),
            Err(wit::types::ToolError::Failed(m)) => Err(PluginError::Failed {
                plugin: pn,
                tool: tn,
                message: cap_text(&m),
            }),
        }
    }

    /// Turn a wasmtime error into what happened, in words.
    fn classify(
        &self,
        store: &mut Store<State>,
        p: &LoadedPlugin,
        tool: &str,
        e: wasmtime::Error,
    ) -> PluginError {
        let (plugin, tool) = (p.description.name.clone(), tool.to_string());
        if store.data().memory.hit {
            return PluginError::MemoryCap {
                plugin,
                tool,
                limit_mib: p.limits.memory >> 20,
            };
        }
        match e.downcast_ref::<wasmtime::Trap>() {
            Some(wasmtime::Trap::Interrupt) => {
                return PluginError::Timeout {
                    plugin,
                    tool,
                    budget: p.limits.timeout,
                }
            }
            Some(wasmtime::Trap::OutOfFuel) => {
                return PluginError::OutOfFuel {
                    plugin,
                    tool,
                    fuel: self.config.fuel.unwrap_or(0),
                }
            }
            Some(wasmtime::Trap::StackOverflow) => {
                return PluginError::StackOverflow { plugin, tool }
            }
            _ => {}
        }
        let stderr = stderr_of(store);
        let mut message = match e.downcast_ref::<wasmtime::Trap>() {
            Some(trap) => trap.to_string(),
            None => format!("{e:#}"),
        };
        if let Some(panic) = stderr
            .lines()
            .find(|l| l.contains("panicked at"))
            .map(|l| l.to_string())
        {
            let detail: Vec<&str> = stderr
                .lines()
                .skip_while(|l| !l.contains("panicked at"))
                .skip(1)
                .take_while(|l| !l.starts_with("note:"))
                .collect();
            message = format!("{} {}", panic.trim(), detail.join(" ").trim());
        } else if message.contains("utf-8") || message.contains("utf8") {
            message = format!("the result is not valid UTF-8 ({message})");
        }
        PluginError::Crashed {
            plugin,
            tool,
            message: cap_text(&message),
        }
    }
}

fn stderr_of(store: &mut Store<State>) -> String {
    String::from_utf8_lossy(&store.data().stderr.contents()).into_owned()
}

fn cap_text(s: &str) -> String {
    if s.len() > 4000 {
        let mut end = 4000;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &s[..end])
    } else {
        s.to_string()
    }
}

/// The host as a [`magpie_core::Toolbox`]: every tool of every loaded plugin.
/// A tool name that two plugins share is offered as `plugin.tool` for the
/// second one.
#[async_trait]
impl magpie_core::Toolbox for PluginHost {
    fn tools(&self) -> Vec<magpie_core::ToolSpec> {
        let mut out: Vec<magpie_core::ToolSpec> = Vec::new();
        for p in self.plugins.values() {
            for t in &p.description.tools {
                let name = if out.iter().any(|o| o.name == t.name) {
                    format!("{}_{}", p.description.name, t.name)
                } else {
                    t.name.clone()
                };
                out.push(magpie_core::ToolSpec {
                    name,
                    description: t.description.clone(),
                    parameters: t.parameters.clone(),
                    provider: p.description.name.clone(),
                });
            }
        }
        out
    }

    async fn call_tool(&self, name: &str, arguments: Value) -> Result<String, String> {
        let tools = magpie_core::Toolbox::tools(self);
        let spec = tools
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| format!("there is no tool `{name}`"))?;
        let plugin = &spec.provider;
        let tool = name
            .strip_prefix(&format!("{plugin}_"))
            .filter(|t| {
                self.plugins[plugin]
                    .description
                    .tools
                    .iter()
                    .any(|x| x.name == *t)
            })
            .unwrap_or(name);
        self.call(plugin, tool, &arguments.to_string())
            .await
            .map(|o| o.json)
            .map_err(|e| e.to_string())
    }
}
