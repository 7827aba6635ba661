//! A plugin that misbehaves on purpose: every tool here attacks or breaks the
//! host in one way. The host's tests call each and check that it costs one
//! clear error and nothing else. Written against the raw bindings (not the
//! SDK's macro) so it can return what a well-behaved plugin never would.

use magpie_plugin_sdk::bindings::magpie::plugin::types::{PluginInfo, Tool, ToolError};
use magpie_plugin_sdk::bindings::Guest;

struct Hostile;

const TOOLS: &[&str] = &[
    "noop",
    "echo",
    "spin",
    "allocate",
    "trap",
    "panic",
    "bad_utf8",
    "bad_json",
    "huge_output",
    "read_file",
    "open_socket",
    "environment",
    "search",
    "http",
    "recurse",
];

fn recurse(n: u64) -> u64 {
    // No locals in linear memory: every frame is on the wasm stack itself.
    if std::hint::black_box(n) == u64::MAX {
        return 0;
    }
    std::hint::black_box(recurse(std::hint::black_box(n + 1))).wrapping_add(1)
}

impl Guest for Hostile {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "hostile".into(),
            version: "0.1.0".into(),
            summary: "Misbehaves on purpose (tests only).".into(),
            tools: TOOLS
                .iter()
                .map(|t| Tool {
                    name: t.to_string(),
                    description: format!("hostile: {t}"),
                    parameters: r#"{"type":"object"}"#.into(),
                })
                .collect(),
        }
    }

    fn call(tool: String, arguments: String) -> Result<String, ToolError> {
        match tool.as_str() {
            "noop" => Ok("null".into()),
            "echo" => Ok(arguments),
            "spin" => {
                let mut x: u64 = 1;
                loop {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            }
            "allocate" => {
                let mut keep: Vec<Vec<u8>> = Vec::new();
                loop {
                    keep.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&keep);
                }
            }
            "trap" => {
                #[cfg(target_arch = "wasm32")]
                core::arch::wasm32::unreachable();
                #[cfg(not(target_arch = "wasm32"))]
                unreachable!()
            }
            "panic" => panic!("the hostile plugin panicked on purpose"),
            "bad_utf8" => Ok(unsafe { String::from_utf8_unchecked(vec![b'o', b'k', 0xff, 0xfe]) }),
            "bad_json" => Ok("this is {not JSON".into()),
            "huge_output" => Ok(format!("\"{}\"", "x".repeat(2 << 20))),
            "read_file" => match std::fs::read_to_string("/etc/passwd") {
                Ok(s) => Ok(serde_json_string(&s)),
                Err(e) => Err(ToolError::Failed(format!("read_file: {e}"))),
            },
            "open_socket" => match std::net::TcpStream::connect("127.0.0.1:22") {
                Ok(_) => Ok("\"connected\"".into()),
                Err(e) => Err(ToolError::Failed(format!("open_socket: {e}"))),
            },
            "environment" => {
                let vars: Vec<String> = std::env::vars().map(|(k, _)| k).collect();
                let cwd = std::env::current_dir()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                Ok(format!(
                    "{{\"vars\":{},\"args\":{},\"cwd\":{}}}",
                    vars.len(),
                    std::env::args().count(),
                    serde_json_string(&cwd)
                ))
            }
            "search" => match magpie_plugin_sdk::search("anything", 3) {
                Ok(hits) => Ok(hits.len().to_string()),
                Err(e) => Err(ToolError::Failed(e)),
            },
            "http" => match magpie_plugin_sdk::http::get(&url_of(&arguments), &[]) {
                Ok(r) => Ok(r.status.to_string()),
                Err(e) => Err(ToolError::Failed(e)),
            },
            "recurse" => Ok(recurse(0).to_string()),
            other => Err(ToolError::UnknownTool(other.into())),
        }
    }
}

fn url_of(arguments: &str) -> String {
    magpie_plugin_sdk::serde_json::from_str::<magpie_plugin_sdk::serde_json::Value>(arguments)
        .ok()
        .and_then(|v| v.get("url").and_then(|u| u.as_str()).map(String::from))
        .unwrap_or_default()
}

fn serde_json_string(s: &str) -> String {
    magpie_plugin_sdk::serde_json::to_string(s).unwrap_or_default()
}

magpie_plugin_sdk::bindings::__export_plugin!(Hostile with_types_in magpie_plugin_sdk::bindings);
