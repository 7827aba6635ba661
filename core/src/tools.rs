//! Tools the model may call while it answers (MOSS style), and the loop that
//! runs them: the model writes a call, generation pauses, the tool runs, its
//! result is appended to the prompt, and generation resumes.
//!
//! Two call formats are first class, behind [`ToolFormat`]: MOSS's command
//! lines (`<|Commands|>: Calculate("2+2")` / `<|Results|>: 4`) and JSON calls in
//! `<tool_call>` tags for models trained on them. Where the tools come from is
//! the [`Toolbox`] trait (magpie-plugin-host implements it over WebAssembly
//! plugins).

use std::time::Instant;

use async_trait::async_trait;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::generate::{
    CancelToken, ChatMessage, FinishReason, GenerationEvent, GenerationOptions, GenerationSummary,
    Generator, Prompt, Role, Timings, Usage,
};
use crate::{Error, Result};

/// A tool as the model sees it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ToolSpec {
    /// Name the model calls it by.
    pub name: String,
    /// What it does.
    pub description: String,
    /// JSON Schema of its arguments object.
    pub parameters: Value,
    /// Which plugin (or other provider) offers it.
    pub provider: String,
}

impl ToolSpec {
    /// Parameter names in declaration order: required ones first.
    pub fn parameter_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .parameters
            .get("required")
            .and_then(|r| r.as_array())
            .map(|r| {
                r.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        if let Some(props) = self
            .parameters
            .get("properties")
            .and_then(|p| p.as_object())
        {
            for k in props.keys() {
                if !names.contains(k) {
                    names.push(k.clone());
                }
            }
        }
        names
    }

    fn parameter_type(&self, name: &str) -> Option<&str> {
        self.parameters
            .get("properties")?
            .get(name)?
            .get("type")?
            .as_str()
    }

    /// The MOSS-style command name: `solve_linear` → `SolveLinear`.
    pub fn command_name(&self) -> String {
        self.name
            .split(['_', '-'])
            .map(|w| {
                let mut c = w.chars();
                match c.next() {
                    Some(f) => f.to_uppercase().chain(c).collect::<String>(),
                    None => String::new(),
                }
            })
            .collect()
    }
}

/// Where tools come from.
#[async_trait]
pub trait Toolbox: Send + Sync {
    /// The tools on offer.
    fn tools(&self) -> Vec<ToolSpec>;
    /// Run a tool; `Ok` is its result (JSON text), `Err` a message for the model.
    async fn call_tool(&self, name: &str, arguments: Value) -> std::result::Result<String, String>;
}

/// One tool call made while answering.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ToolCall {
    /// The tool called (as the model wrote it when it named no known tool).
    pub tool: String,
    /// The arguments.
    pub arguments: Value,
    /// The result, when the call worked.
    pub result: Option<String>,
    /// Why it failed, when it did.
    pub error: Option<String>,
    /// Wall time of the call, milliseconds.
    pub ms: f64,
}

/// A call found in the model's output.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedCall {
    /// The tool's name.
    pub tool: String,
    /// The arguments object.
    pub arguments: Value,
}

/// Where a call sits in the generated text.
#[derive(Debug, Clone, PartialEq)]
pub struct FoundCall {
    /// Byte offset where the call's text starts (what comes before is answer text).
    pub start: usize,
    /// Byte offset just past the call's text.
    pub end: usize,
    /// The call, or why it could not be read.
    pub call: std::result::Result<ParsedCall, String>,
}

/// How calls and results are written.
pub trait ToolFormat: Send + Sync {
    /// Instructions and the tool list, for the prompt.
    fn instructions(&self, tools: &[ToolSpec]) -> String;
    /// Where a call may begin (text from here on is held back from the user).
    fn marker(&self) -> &str;
    /// The first complete call in `text`, if there is one.
    fn find_call(&self, text: &str, tools: &[ToolSpec]) -> Option<FoundCall>;
    /// The text that carries a result back to the model (plain prompts).
    fn result_text(&self, result: &std::result::Result<String, String>) -> String;
    /// Stop sequences while tools are on (the model must not write results itself).
    fn stops(&self) -> Vec<String>;
    /// Whether results go back inside the model's own reply as text (MOSS:
    /// call, result and answer are one turn) rather than as a tool turn of a
    /// chat. When true, a chat prompt is rendered once and continued as text.
    fn inline_results(&self) -> bool {
        false
    }
}

fn result_body(result: &std::result::Result<String, String>, max: usize) -> String {
    let s = match result {
        Ok(r) => r.clone(),
        Err(e) => format!("error: {e}"),
    };
    if s.chars().count() > max {
        let mut t: String = s.chars().take(max).collect();
        t.push_str(" …(cut)");
        t
    } else {
        s
    }
}

/// Longest tool result put back into the prompt, in characters.
pub const MAX_RESULT_CHARS: usize = 2000;

/// MOSS's format: `<|Commands|>: Calculate("2+2")` on its own line, answered
/// by `<|Results|>: ...`.
#[derive(Debug, Clone, Default)]
pub struct MossFormat;

const MOSS_COMMANDS: &str = "<|Commands|>:";
const MOSS_RESULTS: &str = "<|Results|>:";

impl ToolFormat for MossFormat {
    fn instructions(&self, tools: &[ToolSpec]) -> String {
        let mut s = String::from(
            "You can use tools. To use one, write a line\n<|Commands|>: Tool(\"argument\")\n\
             then stop; the result comes back on a line starting with <|Results|>:. \
             Use a tool only when it helps.\nTools:\n",
        );
        for t in tools {
            s.push_str(&format!(
                "- {}({}): {}\n",
                t.command_name(),
                t.parameter_names().join(", "),
                t.description
            ));
        }
        // A worked call, so a base model sees the shape once.
        if let Some(t) = tools.iter().find(|t| t.name == "calculate") {
            s.push_str(&format!(
                "Example:\nQuestion: What is 12 times 18?\nAnswer: <|Commands|>: {}(\"12 * 18\")\n\
                 <|Results|>: {{\"expression\":\"12 * 18\",\"result\":\"216\",\"value\":216.0}}\n\
                 12 times 18 is 216.\n",
                t.command_name()
            ));
        }
        s
    }

    fn marker(&self) -> &str {
        MOSS_COMMANDS
    }

    fn find_call(&self, text: &str, tools: &[ToolSpec]) -> Option<FoundCall> {
        let start = text.find(MOSS_COMMANDS)?;
        let rest = &text[start + MOSS_COMMANDS.len()..];
        // The command ends at <eoc> or at the end of its line.
        let (cmd, consumed) = if let Some(e) = rest.find("<eoc>") {
            (&rest[..e], e + "<eoc>".len())
        } else if let Some(e) = rest.find('\n') {
            (&rest[..e], e + 1)
        } else {
            return None;
        };
        let end = start + MOSS_COMMANDS.len() + consumed;
        // Line starts before the marker belong to the call, not the answer.
        let start = text[..start].trim_end_matches([' ', '\t']).len();
        Some(FoundCall {
            start,
            end,
            call: parse_command(cmd.trim(), tools),
        })
    }

    fn result_text(&self, result: &std::result::Result<String, String>) -> String {
        format!("{MOSS_RESULTS} {}\n", result_body(result, MAX_RESULT_CHARS))
    }

    fn stops(&self) -> Vec<String> {
        vec![MOSS_RESULTS.to_string()]
    }

    fn inline_results(&self) -> bool {
        true
    }
}

/// Match a command name to a tool: `Calculate`, `calculate` and
/// `CALCULATE` all name `calculate`; `SolveLinear` names `solve_linear`.
pub fn find_tool<'a>(name: &str, tools: &'a [ToolSpec]) -> Option<&'a ToolSpec> {
    let norm = |s: &str| {
        s.chars()
            .filter(|c| c.is_alphanumeric())
            .flat_map(char::to_lowercase)
            .collect::<String>()
    };
    let want = norm(name);
    tools.iter().find(|t| norm(&t.name) == want)
}

/// Parse `Name(args)`: positional literals map to the tool's parameters in
/// order (all of them into the one array parameter when that is all it has),
/// `key=value` pairs by name, or one JSON object as the whole arguments.
pub fn parse_command(cmd: &str, tools: &[ToolSpec]) -> std::result::Result<ParsedCall, String> {
    let open = cmd
        .find('(')
        .ok_or_else(|| format!("`{cmd}` is not a command: write Tool(\"argument\")"))?;
    if !cmd.ends_with(')') {
        return Err(format!("`{cmd}` is missing its closing `)`"));
    }
    let name = cmd[..open].trim();
    let inner = &cmd[open + 1..cmd.len() - 1];
    let tool = find_tool(name, tools).ok_or_else(|| {
        format!(
            "there is no tool `{name}`; the tools are: {}",
            tools
                .iter()
                .map(|t| t.command_name())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })?;
    let inner_t = inner.trim();
    if inner_t.starts_with('{') {
        let v: Value = serde_json::from_str(inner_t)
            .map_err(|e| format!("the arguments of {name} are not valid JSON: {e}"))?;
        return Ok(ParsedCall {
            tool: tool.name.clone(),
            arguments: v,
        });
    }
    let items = split_args(inner_t)?;
    let params = tool.parameter_names();
    let mut args = serde_json::Map::new();
    let mut positional = Vec::new();
    for item in items {
        match named(&item) {
            Some((k, v)) if params.contains(&k) => {
                args.insert(k, literal(v));
            }
            _ => positional.push(literal(&item)),
        }
    }
    if !positional.is_empty() {
        let only_array = params.len() == 1 && tool.parameter_type(&params[0]) == Some("array");
        if only_array {
            args.insert(params[0].clone(), Value::Array(positional));
        } else {
            let free: Vec<&String> = params.iter().filter(|p| !args.contains_key(*p)).collect();
            if positional.len() > free.len() {
                return Err(format!(
                    "{} takes {} argument(s) ({}), got {}",
                    tool.command_name(),
                    params.len(),
                    params.join(", "),
                    positional.len() + args.len()
                ));
            }
            for (p, v) in free.into_iter().zip(positional) {
                let v = match (tool.parameter_type(p), &v) {
                    (Some("array"), Value::String(s)) => Value::Array(
                        s.split(';')
                            .map(|x| Value::String(x.trim().into()))
                            .collect(),
                    ),
                    _ => v,
                };
                args.insert(p.clone(), v);
            }
        }
    }
    Ok(ParsedCall {
        tool: tool.name.clone(),
        arguments: Value::Object(args),
    })
}

fn named(item: &str) -> Option<(String, &str)> {
    let eq = item.find('=')?;
    let key = item[..eq].trim();
    if key.is_empty()
        || !key.chars().all(|c| c.is_alphanumeric() || c == '_')
        || item.starts_with('"')
    {
        return None;
    }
    Some((key.to_string(), item[eq + 1..].trim()))
}

/// Split on top-level commas, respecting quotes and brackets.
fn split_args(s: &str) -> std::result::Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut depth = 0i32;
    let mut escaped = false;
    for c in s.chars() {
        if let Some(q) = quote {
            cur.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '"' | '\'' => {
                quote = Some(c);
                cur.push(c);
            }
            '(' | '[' | '{' => {
                depth += 1;
                cur.push(c);
            }
            ')' | ']' | '}' => {
                depth -= 1;
                cur.push(c);
            }
            ',' if depth == 0 => {
                out.push(cur.trim().to_string());
                cur.clear();
            }
            _ => cur.push(c),
        }
    }
    if quote.is_some() {
        return Err("an argument's quotes are not closed".into());
    }
    if !cur.trim().is_empty() || !out.is_empty() {
        out.push(cur.trim().to_string());
    }
    Ok(out)
}

/// A literal as JSON: quoted strings (either quote), numbers, true/false,
/// JSON arrays and objects; anything else as a bare string.
fn literal(s: &str) -> Value {
    let s = s.trim();
    if s.len() >= 2 && s.starts_with('\'') && s.ends_with('\'') {
        return Value::String(s[1..s.len() - 1].replace("\\'", "'"));
    }
    if let Ok(v) = serde_json::from_str::<Value>(s) {
        return v;
    }
    Value::String(s.to_string())
}

/// JSON tool calls in `<tool_call>` tags (Hermes, Qwen and others).
#[derive(Debug, Clone, Default)]
pub struct JsonFormat;

impl ToolFormat for JsonFormat {
    fn instructions(&self, tools: &[ToolSpec]) -> String {
        let mut s = String::from(
            "You can call tools. To call one, write\n<tool_call>\n{\"name\": \"tool\", \"arguments\": {...}}\n</tool_call>\n\
             and stop; the result comes back in <tool_response> tags. Tools:\n",
        );
        for t in tools {
            let spec = serde_json::json!({
                "name": t.name, "description": t.description, "parameters": t.parameters
            });
            s.push_str(&spec.to_string());
            s.push('\n');
        }
        s
    }

    fn marker(&self) -> &str {
        "<tool_call>"
    }

    fn find_call(&self, text: &str, tools: &[ToolSpec]) -> Option<FoundCall> {
        let start = text.find("<tool_call>")?;
        let body_start = start + "<tool_call>".len();
        let close = text[body_start..].find("</tool_call>")?;
        let body = text[body_start..body_start + close].trim();
        let end = body_start + close + "</tool_call>".len();
        let call = (|| {
            let v: Value = serde_json::from_str(body)
                .map_err(|e| format!("the tool call is not valid JSON: {e}"))?;
            let name = v
                .get("name")
                .and_then(|n| n.as_str())
                .ok_or("the tool call has no \"name\"")?;
            let tool =
                find_tool(name, tools).ok_or_else(|| format!("there is no tool `{name}`"))?;
            let mut arguments = v
                .get("arguments")
                .cloned()
                .unwrap_or(Value::Object(Default::default()));
            // Some models send the arguments as a JSON string.
            if let Value::String(s) = &arguments {
                arguments = serde_json::from_str(s)
                    .map_err(|e| format!("the arguments are not valid JSON: {e}"))?;
            }
            Ok(ParsedCall {
                tool: tool.name.clone(),
                arguments,
            })
        })();
        Some(FoundCall { start, end, call })
    }

    fn result_text(&self, result: &std::result::Result<String, String>) -> String {
        format!(
            "\n<tool_response>\n{}\n</tool_response>\n",
            result_body(result, MAX_RESULT_CHARS)
        )
    }

    fn stops(&self) -> Vec<String> {
        vec!["<tool_response>".to_string()]
    }
}

/// What a tool-using generation produced.
#[derive(Debug, Clone)]
pub struct ToolRun {
    /// The answer text the user sees (calls and results removed).
    pub text: String,
    /// Every call, in order.
    pub calls: Vec<ToolCall>,
    /// Tokens and times summed over all rounds; the last round's finish reason.
    pub summary: GenerationSummary,
}

/// Runs generation with tools.
pub struct ToolLoop<'a> {
    /// The model.
    pub generator: &'a dyn Generator,
    /// The tools.
    pub toolbox: &'a dyn Toolbox,
    /// How calls are written.
    pub format: &'a dyn ToolFormat,
    /// Most calls in one answer; past it the model is told to answer.
    pub max_calls: usize,
}

impl ToolLoop<'_> {
    /// Add the tool instructions to a prompt (system message or preamble).
    pub fn with_instructions(&self, prompt: Prompt) -> Prompt {
        let tools = self.toolbox.tools();
        if tools.is_empty() {
            return prompt;
        }
        let text = self.format.instructions(&tools);
        match prompt {
            Prompt::Text(t) => Prompt::Text(format!("{text}\n{t}")),
            Prompt::Chat(mut msgs) => {
                match msgs.first_mut() {
                    Some(m) if m.role == Role::System => {
                        m.content = format!("{}\n\n{text}", m.content);
                    }
                    _ => msgs.insert(0, ChatMessage::new(Role::System, text)),
                }
                Prompt::Chat(msgs)
            }
        }
    }

    /// Generate, running each call the model makes; `on_text` receives the
    /// answer text as it streams (never the calls or results).
    pub async fn run(
        &self,
        prompt: Prompt,
        options: GenerationOptions,
        on_text: &mut (dyn FnMut(&str) + Send),
    ) -> Result<ToolRun> {
        let tools = self.toolbox.tools();
        let mut options = options;
        for s in self.format.stops() {
            if !options.stop.contains(&s) {
                options.stop.push(s);
            }
        }
        let marker = self.format.marker().to_string();
        let mut prompt = match prompt {
            // The reply, its calls and their results stay one turn, as in the
            // worked example the model was shown.
            Prompt::Chat(msgs) if self.format.inline_results() => {
                match self.generator.render_chat(&msgs)? {
                    Some(text) => Prompt::Text(text),
                    None => Prompt::Chat(msgs),
                }
            }
            p => p,
        };
        let mut visible = String::new();
        let mut calls: Vec<ToolCall> = Vec::new();
        let mut total: Option<GenerationSummary> = None;
        let max_rounds = self.max_calls + 2;
        let user_cancel = options.cancel.clone();
        for round in 0..max_rounds {
            // Each round has its own token, so a found call can stop the model
            // and still collect its counts; the caller's token is passed on.
            let round_cancel = CancelToken::new();
            let mut round_options = options.clone();
            round_options.cancel = Some(round_cancel.clone());
            let mut stream = self
                .generator
                .generate(prompt.clone(), round_options)
                .await?;
            let mut text = String::new();
            let mut shown = 0usize;
            let mut found: Option<FoundCall> = None;
            let mut summary = None;
            while let Some(ev) = stream.next().await {
                match ev? {
                    GenerationEvent::Delta { text: t } => {
                        if user_cancel.as_ref().is_some_and(|c| c.is_cancelled()) {
                            round_cancel.cancel();
                        }
                        if found.is_some() {
                            continue; // draining after the call, for the summary
                        }
                        text.push_str(&t);
                        if !tools.is_empty() {
                            if let Some(f) = self.format.find_call(&text, &tools) {
                                found = Some(f);
                                round_cancel.cancel();
                                continue;
                            }
                        }
                        // Show what cannot be the start of a call.
                        let limit = match text.find(&marker) {
                            Some(p) => text[..p].trim_end_matches([' ', '\t']).len(),
                            None => safe_prefix(&text, &marker),
                        };
                        if limit > shown {
                            on_text(&text[shown..limit]);
                            shown = limit;
                        }
                    }
                    GenerationEvent::Done(s) => summary = Some(s),
                }
            }
            drop(stream);
            let summary = summary.unwrap_or(GenerationSummary {
                finish_reason: FinishReason::Stop,
                usage: Usage::default(),
                timings: Timings::default(),
            });
            total = Some(add(total, &summary));
            if user_cancel.as_ref().is_some_and(|c| c.is_cancelled()) {
                visible.push_str(&text[..shown]);
                break;
            }
            let Some(found) = found else {
                // No call: the rest of the text is answer (an unfinished call is dropped).
                let end = match text.find(&marker) {
                    Some(p) => text[..p].trim_end_matches([' ', '\t']).len(),
                    None => text.len(),
                };
                if end > shown {
                    on_text(&text[shown..end]);
                }
                visible.push_str(&text[..end]);
                break;
            };
            let before = &text[..found.start];
            if found.start > shown {
                on_text(&text[shown..found.start]);
            }
            visible.push_str(before);
            let call_text = &text[..found.end];
            let t0 = Instant::now();
            let (record, result) = match found.call {
                _ if calls.len() >= self.max_calls => {
                    let e = format!(
                        "the limit of {} tool calls per answer is reached; answer now with what you have",
                        self.max_calls
                    );
                    (None, Err(e))
                }
                Ok(call) => {
                    let earlier = calls
                        .iter()
                        .find(|c| c.tool == call.tool && c.arguments == call.arguments);
                    let r = match earlier {
                        // Small models tend to repeat a call instead of using
                        // its result: say so rather than run it again.
                        Some(c) => Err(format!(
                            "{} was already called with these arguments and returned {}; \
                             write the answer with that result",
                            call.tool,
                            c.result
                                .as_deref()
                                .or(c.error.as_deref())
                                .unwrap_or("nothing")
                        )),
                        None => {
                            self.toolbox
                                .call_tool(&call.tool, call.arguments.clone())
                                .await
                        }
                    };
                    (Some(call), r)
                }
                Err(e) => (None, Err(e)),
            };
            let ms = t0.elapsed().as_secs_f64() * 1000.0;
            let over_limit = calls.len() >= self.max_calls;
            tracing::info!(
                round,
                tool = record.as_ref().map(|c| c.tool.as_str()).unwrap_or("?"),
                ok = result.is_ok(),
                ms,
                "tool call"
            );
            if !over_limit {
                calls.push(ToolCall {
                    tool: record
                        .as_ref()
                        .map(|c| c.tool.clone())
                        .unwrap_or_else(|| call_text[found.start..].trim().to_string()),
                    arguments: record.map(|c| c.arguments).unwrap_or(Value::Null),
                    result: result.as_ref().ok().cloned(),
                    error: result.as_ref().err().cloned(),
                    ms,
                });
            }
            prompt = continue_prompt(
                prompt,
                call_text,
                &self.format.result_text(&result),
                &result,
            );
            if round + 1 >= max_rounds {
                // The model was still calling tools when the rounds ran out.
                if let Some(t) = total.as_mut() {
                    t.finish_reason = FinishReason::ToolLimit;
                }
                break;
            }
        }
        let summary = total.ok_or_else(|| Error::stage("tools", "no generation ran"))?;
        Ok(ToolRun {
            text: visible,
            calls,
            summary,
        })
    }
}

/// The length of the longest prefix of `text` that cannot be the beginning of
/// `marker` split across deltas.
fn safe_prefix(text: &str, marker: &str) -> usize {
    for n in (1..marker.len().min(text.len() + 1)).rev() {
        let cut = text.len() - n;
        if text.is_char_boundary(cut) && marker.starts_with(&text[cut..]) {
            return cut;
        }
    }
    text.len()
}

fn add(total: Option<GenerationSummary>, s: &GenerationSummary) -> GenerationSummary {
    let Some(mut t) = total else {
        return s.clone();
    };
    t.finish_reason = s.finish_reason;
    t.usage.prompt_tokens += s.usage.prompt_tokens;
    t.usage.completion_tokens += s.usage.completion_tokens;
    t.usage.total_tokens += s.usage.total_tokens;
    t.timings.prompt_ms += s.timings.prompt_ms;
    t.timings.generation_ms += s.timings.generation_ms;
    t.timings.context_shifts += s.timings.context_shifts;
    t
}

/// The prompt after a call: the model's text up to and including the call,
/// then the result.
fn continue_prompt(
    prompt: Prompt,
    call_text: &str,
    result_text: &str,
    result: &std::result::Result<String, String>,
) -> Prompt {
    match prompt {
        Prompt::Text(mut p) => {
            p.push_str(call_text);
            if !call_text.ends_with('\n') {
                p.push('\n');
            }
            p.push_str(result_text);
            Prompt::Text(p)
        }
        Prompt::Chat(mut msgs) => {
            msgs.push(ChatMessage::new(Role::Assistant, call_text.trim_end()));
            msgs.push(ChatMessage::new(
                Role::Tool,
                result_body(result, MAX_RESULT_CHARS),
            ));
            Prompt::Chat(msgs)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tools() -> Vec<ToolSpec> {
        vec![
            ToolSpec {
                name: "calculate".into(),
                description: "Arithmetic.".into(),
                parameters: json!({"type":"object","properties":{"expression":{"type":"string"}},"required":["expression"]}),
                provider: "calculator".into(),
            },
            ToolSpec {
                name: "solve_linear".into(),
                description: "Linear systems.".into(),
                parameters: json!({"type":"object","properties":{"equations":{"type":"array","items":{"type":"string"}}},"required":["equations"]}),
                provider: "solver".into(),
            },
            ToolSpec {
                name: "search".into(),
                description: "Search.".into(),
                parameters: json!({"type":"object","properties":{"query":{"type":"string"},"k":{"type":"integer"}},"required":["query"]}),
                provider: "search".into(),
            },
        ]
    }

    #[test]
    fn moss_commands_parse() {
        let t = tools();
        let c = parse_command("Calculate(\"2+2\")", &t).unwrap();
        assert_eq!(c.tool, "calculate");
        assert_eq!(c.arguments, json!({"expression": "2+2"}));
        let c = parse_command("SolveLinear(\"2x+3y=7\", \"x-y=1\")", &t).unwrap();
        assert_eq!(c.arguments, json!({"equations": ["2x+3y=7", "x-y=1"]}));
        let c = parse_command("Search('magpies, mirrors', k=3)", &t).unwrap();
        assert_eq!(c.arguments, json!({"query": "magpies, mirrors", "k": 3}));
        let c = parse_command("search({\"query\": \"q\"})", &t).unwrap();
        assert_eq!(c.arguments, json!({"query": "q"}));
        assert!(parse_command("Draw(\"a cat\")", &t)
            .unwrap_err()
            .contains("no tool `Draw`"));
        assert!(parse_command("Calculate(\"2+2\"", &t).is_err());
        assert!(parse_command("Calculate(\"1\", \"2\")", &t)
            .unwrap_err()
            .contains("takes 1"));
        assert!(parse_command("Calculate(\"unclosed)", &t).is_err());
    }

    #[test]
    fn moss_calls_are_found_in_text() {
        let t = tools();
        let f = MossFormat;
        assert!(f
            .find_call("The answer is <|Commands|>: Calculate(\"2", &t)
            .is_none());
        let text = "Let me compute.\n<|Commands|>: Calculate(\"6*7\")\nmore";
        let found = f.find_call(text, &t).unwrap();
        assert_eq!(&text[..found.start], "Let me compute.\n");
        assert_eq!(&text[found.end..], "more");
        assert_eq!(found.call.unwrap().arguments, json!({"expression": "6*7"}));
        let text = "<|Commands|>: Calculate(\"1+1\")<eoc>";
        assert_eq!(f.find_call(text, &t).unwrap().end, text.len());
    }

    #[test]
    fn json_calls_are_found_in_text() {
        let t = tools();
        let f = JsonFormat;
        let text = "ok <tool_call>\n{\"name\": \"calculate\", \"arguments\": {\"expression\": \"1+2\"}}\n</tool_call>";
        let found = f.find_call(text, &t).unwrap();
        assert_eq!(found.start, 3);
        assert_eq!(found.call.unwrap().arguments, json!({"expression": "1+2"}));
        let text = "<tool_call>{\"name\": \"calculate\", \"arguments\": \"{\\\"expression\\\": \\\"3\\\"}\"}</tool_call>";
        assert_eq!(
            f.find_call(text, &t).unwrap().call.unwrap().arguments,
            json!({"expression": "3"})
        );
        let bad = "<tool_call>{not json</tool_call>";
        assert!(f.find_call(bad, &t).unwrap().call.is_err());
        assert!(f.find_call("<tool_call>{\"name\":\"x\"", &t).is_none());
    }

    #[test]
    fn markers_split_across_deltas_are_held_back() {
        assert_eq!(safe_prefix("hello <|Comm", "<|Commands|>:"), 6);
        assert_eq!(safe_prefix("hello", "<|Commands|>:"), 5);
        assert_eq!(safe_prefix("a <", "<tool_call>"), 2);
        assert_eq!(
            ToolSpec {
                name: "solve_linear".into(),
                description: String::new(),
                parameters: Value::Null,
                provider: String::new()
            }
            .command_name(),
            "SolveLinear"
        );
    }
}
