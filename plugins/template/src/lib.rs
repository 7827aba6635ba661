//! A plugin template: copy this directory, rename the package, write your tools.
//! See plugins/README.md for the walk-through.

use magpie_plugin_sdk::prelude::*;

/// Arguments of `word_count`. Doc comments become the schema's descriptions,
/// which the model reads: say what each field is.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct WordCountArgs {
    /// The text to count.
    text: String,
}

/// What `word_count` returns: any `Serialize` type.
#[derive(Serialize)]
struct Counts {
    words: usize,
    characters: usize,
    lines: usize,
}

/// A tool is a plain function: typed arguments in, a result or a `ToolError` out.
fn word_count(args: WordCountArgs) -> ToolResult<Counts> {
    if args.text.is_empty() {
        return Err(ToolError::invalid("the text is empty"));
    }
    magpie_plugin_sdk::log::debug(&format!("counting {} bytes", args.text.len()));
    Ok(Counts {
        words: args.text.split_whitespace().count(),
        characters: args.text.chars().count(),
        lines: args.text.lines().count(),
    })
}

magpie_plugin_sdk::plugin! {
    name: "template",
    version: env!("CARGO_PKG_VERSION"),
    summary: "An example plugin: counts words.",
    tools: [
        word_count: "Count the words, characters and lines of a text.",
    ],
}
