//! The search plugin: lets the model search the document index itself, with
//! its own query, when the passages it was given do not answer the question.
//! Needs the `search` capability.

use magpie_plugin_sdk::prelude::*;

/// Arguments of `search`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct SearchArgs {
    /// What to look for, in words.
    query: String,
    /// How many passages to return (1-20, default 5).
    #[serde(default = "default_k")]
    k: u32,
}

fn default_k() -> u32 {
    5
}

/// One passage found.
#[derive(Serialize)]
struct Passage {
    text: String,
    source: String,
}

fn search(args: SearchArgs) -> ToolResult<Vec<Passage>> {
    let query = args.query.trim();
    if query.is_empty() {
        return Err(ToolError::invalid(
            "the query is empty; say what to look for",
        ));
    }
    if !(1..=20).contains(&args.k) {
        return Err(ToolError::invalid(format!(
            "k must be 1 to 20, got {}",
            args.k
        )));
    }
    let hits = magpie_plugin_sdk::search(query, args.k).map_err(ToolError::failed)?;
    Ok(hits
        .into_iter()
        .map(|h| Passage {
            text: h.text,
            source: h.source,
        })
        .collect())
}

magpie_plugin_sdk::plugin! {
    name: "search",
    version: env!("CARGO_PKG_VERSION"),
    summary: "Searches the indexed documents.",
    tools: [
        search: "Search the indexed documents for passages about a query; returns the passages \
                 with their sources.",
    ],
}
