//! The fetch plugin: reads a web page from a host the operator allowed and
//! returns its text. Needs the `http` capability; the host enforces the
//! allowlist, the size cap and the time limit.

use magpie_plugin_sdk::prelude::*;

/// Arguments of `fetch`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct FetchArgs {
    /// The page's URL (http or https).
    url: String,
    /// Longest text to return, in characters (100-20000, default 4000).
    #[serde(default = "default_max")]
    max_chars: usize,
}

fn default_max() -> usize {
    4000
}

/// A fetched page.
#[derive(Serialize)]
struct Page {
    url: String,
    status: u16,
    content_type: String,
    /// The text (HTML reduced to its words), cut at `max_chars`.
    text: String,
    /// Whether the text was cut.
    truncated: bool,
}

fn fetch(args: FetchArgs) -> ToolResult<Page> {
    if !(100..=20_000).contains(&args.max_chars) {
        return Err(ToolError::invalid("max_chars must be 100 to 20000"));
    }
    let url = args.url.trim();
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(ToolError::invalid(format!("`{url}` is not an http(s) URL")));
    }
    let resp = magpie_plugin_sdk::http::get(url, &[("accept", "text/html, text/plain;q=0.9")])
        .map_err(ToolError::failed)?;
    let content_type = resp.header("content-type").unwrap_or("").to_string();
    if !(200..300).contains(&resp.status) {
        return Err(ToolError::failed(format!(
            "{url} answered HTTP {}",
            resp.status
        )));
    }
    let body = String::from_utf8_lossy(&resp.body);
    let text = if content_type.contains("html") || body.trim_start().starts_with('<') {
        html_text(&body)
    } else if content_type.is_empty()
        || content_type.starts_with("text/")
        || content_type.contains("json")
    {
        body.to_string()
    } else {
        return Err(ToolError::failed(format!(
            "{url} is {content_type}, not text; the fetch tool reads text and HTML only"
        )));
    };
    let truncated = text.chars().count() > args.max_chars;
    let text: String = text.chars().take(args.max_chars).collect();
    Ok(Page {
        url: url.to_string(),
        status: resp.status,
        content_type,
        text,
        truncated,
    })
}

/// The words of an HTML page: tags dropped, script and style contents dropped,
/// block elements as line breaks, common entities decoded.
fn html_text(html: &str) -> String {
    let lower = html.to_ascii_lowercase();
    let mut out = String::new();
    let mut pos = 0;
    while let Some(lt) = html[pos..].find('<').map(|i| pos + i) {
        out.push_str(&decode(&html[pos..lt]));
        let Some(gt) = html[lt..].find('>').map(|i| lt + i) else {
            pos = html.len();
            break;
        };
        let tag = &lower[lt + 1..gt];
        let closing = tag.starts_with('/');
        let name: String = tag
            .trim_start_matches('/')
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect();
        pos = gt + 1;
        if !closing && matches!(name.as_str(), "script" | "style" | "noscript") {
            pos = lower[pos..]
                .find(&format!("</{name}"))
                .map(|i| pos + i)
                .unwrap_or(html.len());
        }
        if matches!(
            name.as_str(),
            "p" | "div"
                | "br"
                | "li"
                | "tr"
                | "h1"
                | "h2"
                | "h3"
                | "h4"
                | "h5"
                | "h6"
                | "section"
                | "article"
                | "title"
        ) {
            out.push('\n');
        }
    }
    out.push_str(&decode(&html[pos..]));
    let mut text = String::new();
    for line in out.lines() {
        let line = line.split_whitespace().collect::<Vec<_>>().join(" ");
        if !line.is_empty() {
            text.push_str(&line);
            text.push('\n');
        }
    }
    text
}

fn decode(s: &str) -> String {
    s.replace("&nbsp;", " ")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

magpie_plugin_sdk::plugin! {
    name: "fetch",
    version: env!("CARGO_PKG_VERSION"),
    summary: "Reads web pages from the hosts the operator allowed.",
    tools: [
        fetch: "Fetch a web page (http or https, allowed hosts only) and return its text.",
    ],
}

#[cfg(test)]
mod tests {
    #[test]
    fn html_to_text() {
        let t = super::html_text(
            "<html><head><title>T</title><style>p{}</style></head><body><h1>Head</h1>\
             <script>var x = '<p>';</script><p>One &amp; two</p><p>three</p></body></html>",
        );
        assert_eq!(t, "T\nHead\nOne & two\nthree\n");
    }
}
