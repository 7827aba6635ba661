//! Write magpie tool plugins in Rust.
//!
//! A tool is a plain function from a `Deserialize + JsonSchema` argument type to
//! a `Serialize` result; [`plugin!`] turns a list of them into a WebAssembly
//! component that speaks the magpie plugin contract (`plugins/wit`). The JSON
//! schema the model sees is derived from the argument type, doc comments
//! included.
//!
//! ```ignore
//! use magpie_plugin_sdk::prelude::*;
//!
//! /// Arguments of `greet`.
//! #[derive(Deserialize, JsonSchema)]
//! struct GreetArgs {
//!     /// Who to greet.
//!     name: String,
//! }
//!
//! fn greet(args: GreetArgs) -> Result<String, ToolError> {
//!     if args.name.is_empty() {
//!         return Err(ToolError::invalid("name is empty"));
//!     }
//!     Ok(format!("Hello, {}!", args.name))
//! }
//!
//! magpie_plugin_sdk::plugin! {
//!     name: "greeter",
//!     version: env!("CARGO_PKG_VERSION"),
//!     summary: "Greets people.",
//!     tools: [greet: "Greet someone by name."],
//! }
//! ```
//!
//! Build with `cargo build --release --target wasm32-wasip2`; the `.wasm` in
//! `target/wasm32-wasip2/release/` is the component. See `plugins/README.md`.

extern crate self as magpie_plugin_sdk;

use std::fmt;

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "plugin",
        pub_export_macro: true,
        export_macro_name: "__export_plugin",
        default_bindings_module: "::magpie_plugin_sdk::bindings",
        runtime_path: "::magpie_plugin_sdk::__private::wit_bindgen::rt",
    });
}

use bindings::magpie::plugin as wit;

/// What a plugin author imports.
pub mod prelude {
    pub use crate::{ToolError, ToolResult};
    pub use schemars::JsonSchema;
    pub use serde::{Deserialize, Serialize};
}

pub use schemars;
pub use serde;
pub use serde_json;

/// Why a tool failed; the text is shown to the model, so make it say what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolError {
    /// The arguments were wrong (missing, out of range, malformed).
    InvalidArguments(String),
    /// The tool ran and could not produce a result.
    Failed(String),
}

/// What a tool returns.
pub type ToolResult<T> = Result<T, ToolError>;

impl ToolError {
    /// The arguments were wrong.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::InvalidArguments(message.into())
    }
    /// The tool failed.
    pub fn failed(message: impl Into<String>) -> Self {
        Self::Failed(message.into())
    }
}

impl fmt::Display for ToolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidArguments(m) => write!(f, "invalid arguments: {m}"),
            Self::Failed(m) => f.write_str(m),
        }
    }
}

impl From<String> for ToolError {
    fn from(message: String) -> Self {
        Self::Failed(message)
    }
}

impl From<&str> for ToolError {
    fn from(message: &str) -> Self {
        Self::Failed(message.to_string())
    }
}

/// A passage found by the host's document search.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Hit {
    /// The passage.
    pub text: String,
    /// Where it comes from (path or URL, with lines or page).
    pub source: String,
    /// Document id in the index.
    pub doc_id: String,
    /// Relevance; higher is better.
    pub score: f32,
}

/// Search the magpie index (needs the `search` capability).
pub fn search(query: &str, k: u32) -> Result<Vec<Hit>, String> {
    let hits = wit::search::search(query, k)?;
    Ok(hits
        .into_iter()
        .map(|h| Hit {
            text: h.text,
            source: h.source,
            doc_id: h.doc_id,
            score: h.score,
        })
        .collect())
}

/// HTTP through the host (needs the `http` capability; only allowed hosts).
pub mod http {
    use super::wit::http as h;

    /// A response from [`get`] or [`post`].
    #[derive(Debug, Clone)]
    pub struct Response {
        /// HTTP status.
        pub status: u16,
        /// Response headers, names lowercase.
        pub headers: Vec<(String, String)>,
        /// Body bytes (capped by the host).
        pub body: Vec<u8>,
    }

    impl Response {
        /// The value of a header, by lowercase name.
        pub fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
    }

    fn send(
        method: h::Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Result<Response, String> {
        let r = h::send(&h::Request {
            method,
            url: url.to_string(),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            body,
        })?;
        Ok(Response {
            status: r.status,
            headers: r.headers,
            body: r.body,
        })
    }

    /// GET `url`.
    pub fn get(url: &str, headers: &[(&str, &str)]) -> Result<Response, String> {
        send(h::Method::Get, url, headers, None)
    }

    /// POST `body` to `url`.
    pub fn post(url: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Result<Response, String> {
        send(h::Method::Post, url, headers, Some(body))
    }
}

/// Log into the host's logs.
pub mod log {
    use super::wit::log::{log, Level};

    /// Debug-level message.
    pub fn debug(message: &str) {
        log(Level::Debug, message)
    }
    /// Info-level message.
    pub fn info(message: &str) {
        log(Level::Info, message)
    }
    /// Warning.
    pub fn warn(message: &str) {
        log(Level::Warn, message)
    }
    /// Error.
    pub fn error(message: &str) {
        log(Level::Error, message)
    }
}

#[doc(hidden)]
pub mod __private {
    pub use wit_bindgen;

    use super::wit::types::{PluginInfo, Tool, ToolError as WitError};
    use super::ToolError;
    use schemars::JsonSchema;
    use serde::{de::DeserializeOwned, Serialize};

    /// The schema of `A` as JSON text (draft 2020-12, subschemas inlined).
    pub fn schema<A: JsonSchema>() -> String {
        let settings = schemars::generate::SchemaSettings::draft2020_12().with(|s| {
            s.inline_subschemas = true;
        });
        let schema = settings.into_generator().into_root_schema_for::<A>();
        serde_json::to_string(&schema).unwrap_or_else(|_| "{}".to_string())
    }

    pub fn tool<A, R, F>(name: &str, description: &str, _f: &F) -> Tool
    where
        A: JsonSchema,
        F: Fn(A) -> R,
    {
        Tool {
            name: name.to_string(),
            description: description.trim().to_string(),
            parameters: schema::<A>(),
        }
    }

    pub fn info(name: &str, version: &str, summary: &str, tools: Vec<Tool>) -> PluginInfo {
        PluginInfo {
            name: name.to_string(),
            version: version.to_string(),
            summary: summary.trim().to_string(),
            tools,
        }
    }

    pub fn run<A, T, F>(f: &F, arguments: &str) -> Result<String, WitError>
    where
        A: DeserializeOwned,
        T: Serialize,
        F: Fn(A) -> Result<T, ToolError>,
    {
        let arguments = if arguments.trim().is_empty() {
            "{}"
        } else {
            arguments
        };
        let args: A = serde_json::from_str(arguments)
            .map_err(|e| WitError::InvalidArguments(e.to_string()))?;
        match f(args) {
            Ok(value) => serde_json::to_string(&value)
                .map_err(|e| WitError::Failed(format!("result is not JSON: {e}"))),
            Err(ToolError::InvalidArguments(m)) => Err(WitError::InvalidArguments(m)),
            Err(ToolError::Failed(m)) => Err(WitError::Failed(m)),
        }
    }

    pub fn unknown(tool: &str, known: &[&str]) -> WitError {
        WitError::UnknownTool(format!(
            "no tool `{tool}` in this plugin (it has: {})",
            known.join(", ")
        ))
    }
}

/// Export a list of tool functions as a magpie plugin.
///
/// Each entry is `function_name: "description"`; the function takes one
/// argument type that is `Deserialize + JsonSchema` and returns
/// `Result<impl Serialize, ToolError>`. The tool's name is the function's name.
#[macro_export]
macro_rules! plugin {
    (
        name: $name:expr,
        version: $version:expr,
        summary: $summary:expr,
        tools: [ $( $tool:ident : $desc:expr ),* $(,)? ] $(,)?
    ) => {
        struct __MagpiePlugin;

        impl $crate::bindings::Guest for __MagpiePlugin {
            fn describe() -> $crate::bindings::magpie::plugin::types::PluginInfo {
                $crate::__private::info(
                    $name,
                    $version,
                    $summary,
                    ::std::vec![ $( $crate::__private::tool(stringify!($tool), $desc, &$tool) ),* ],
                )
            }

            fn call(
                tool: ::std::string::String,
                arguments: ::std::string::String,
            ) -> ::std::result::Result<
                ::std::string::String,
                $crate::bindings::magpie::plugin::types::ToolError,
            > {
                match tool.as_str() {
                    $( stringify!($tool) => $crate::__private::run(&$tool, &arguments), )*
                    other => ::std::result::Result::Err(
                        $crate::__private::unknown(other, &[ $( stringify!($tool) ),* ]),
                    ),
                }
            }
        }

        $crate::bindings::__export_plugin!(__MagpiePlugin with_types_in $crate::bindings);
    };
}
