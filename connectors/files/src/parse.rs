//! Format-specific parsing: MIME types by extension, Markdown sections, HTML text extraction.

use magpie_core::Section;

/// How a file's text is turned into a document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Plain text, indexed as is.
    Text,
    /// Markdown: indexed as is, with heading sections.
    Markdown,
    /// HTML: visible text extracted, headings kept as sections.
    Html,
    /// Source code or configuration: indexed as is.
    Code,
    /// Word document (DOCX): paragraphs, with heading styles as headings.
    Docx,
    /// EPUB e-book: chapters in reading order.
    Epub,
    /// PDF: text per page, pages carried into chunk spans.
    Pdf,
}

/// Formats this loader recognises by extension but cannot read yet.
const UNSUPPORTED: &[(&str, &str)] = &[
    ("doc", "Word (DOC)"),
    ("xlsx", "Excel (XLSX)"),
    ("xls", "Excel (XLS)"),
    ("pptx", "PowerPoint (PPTX)"),
    ("odt", "OpenDocument text"),
    ("rtf", "RTF"),
    ("png", "PNG image"),
    ("jpg", "JPEG image"),
    ("jpeg", "JPEG image"),
    ("gif", "GIF image"),
    ("webp", "WebP image"),
    ("zip", "ZIP archive"),
    ("gz", "gzip archive"),
    ("tar", "tar archive"),
    ("mp3", "MP3 audio"),
    ("mp4", "MP4 video"),
];

const CODE: &[(&str, &str)] = &[
    ("rs", "text/x-rust"),
    ("py", "text/x-python"),
    ("js", "text/javascript"),
    ("mjs", "text/javascript"),
    ("ts", "text/x-typescript"),
    ("tsx", "text/x-typescript"),
    ("jsx", "text/javascript"),
    ("go", "text/x-go"),
    ("java", "text/x-java"),
    ("kt", "text/x-kotlin"),
    ("c", "text/x-c"),
    ("h", "text/x-c"),
    ("cc", "text/x-c++"),
    ("cpp", "text/x-c++"),
    ("hpp", "text/x-c++"),
    ("cs", "text/x-csharp"),
    ("rb", "text/x-ruby"),
    ("php", "text/x-php"),
    ("swift", "text/x-swift"),
    ("scala", "text/x-scala"),
    ("sh", "text/x-shellscript"),
    ("bash", "text/x-shellscript"),
    ("sql", "text/x-sql"),
    ("toml", "application/toml"),
    ("yaml", "application/yaml"),
    ("yml", "application/yaml"),
    ("json", "application/json"),
    ("xml", "application/xml"),
    ("css", "text/css"),
    ("wit", "text/x-wit"),
];

/// The format and MIME type for a file extension (lower case, no dot).
/// `Err` names a format that is recognised but not supported.
pub fn format_for(ext: Option<&str>) -> Result<(Format, &'static str), &'static str> {
    let Some(ext) = ext else {
        return Ok((Format::Text, "text/plain"));
    };
    let ext = ext.to_ascii_lowercase();
    match ext.as_str() {
        "md" | "markdown" | "mdx" => return Ok((Format::Markdown, "text/markdown")),
        "html" | "htm" | "xhtml" => return Ok((Format::Html, "text/html")),
        "docx" => {
            return Ok((
                Format::Docx,
                "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
            ))
        }
        "epub" => return Ok((Format::Epub, "application/epub+zip")),
        "pdf" => return Ok((Format::Pdf, "application/pdf")),
        "txt" | "text" | "rst" | "adoc" | "org" | "log" | "csv" | "tsv" => {
            return Ok((Format::Text, "text/plain"))
        }
        _ => {}
    }
    if let Some((_, mime)) = CODE.iter().find(|(e, _)| *e == ext) {
        return Ok((Format::Code, mime));
    }
    if let Some((_, name)) = UNSUPPORTED.iter().find(|(e, _)| *e == ext) {
        return Err(name);
    }
    // Unknown extension: treated as text if its content decodes as text.
    Ok((Format::Text, "text/plain"))
}

/// Heading sections of a Markdown text (ATX `#` and setext headings, outside code fences),
/// and the title (first level-1 heading).
pub fn markdown_sections(text: &str) -> (Vec<Section>, Option<String>) {
    let mut sections: Vec<Section> = Vec::new();
    let mut stack: Vec<(usize, String)> = Vec::new();
    let mut title = None;
    let mut fence: Option<&str> = None;
    let mut pos = 0usize;
    let mut prev_line: Option<(usize, &str)> = None;
    let mut cur_start = 0usize;
    let mut cur_path: Vec<String> = Vec::new();

    let mut push_heading = |level: usize,
                            name: String,
                            line_start: usize,
                            sections: &mut Vec<Section>,
                            cur_start: &mut usize,
                            cur_path: &mut Vec<String>| {
        if line_start > *cur_start {
            sections.push(Section {
                heading_path: cur_path.clone(),
                start: *cur_start,
                end: line_start,
            });
        }
        while stack.last().is_some_and(|(l, _)| *l >= level) {
            stack.pop();
        }
        stack.push((level, name));
        *cur_path = stack.iter().map(|(_, n)| n.clone()).collect();
        *cur_start = line_start;
    };

    for line in text.split_inclusive('\n') {
        let line_start = pos;
        pos += line.len();
        let trimmed = line.trim_end_matches(['\n', '\r']);
        let t = trimmed.trim_start();
        let indent = trimmed.len() - t.len();
        if let Some(f) = fence {
            if t.starts_with(f) {
                fence = None;
            }
            prev_line = None;
            continue;
        }
        if indent < 4 && (t.starts_with("```") || t.starts_with("~~~")) {
            fence = Some(if t.starts_with("```") { "```" } else { "~~~" });
            prev_line = None;
            continue;
        }
        if indent < 4 && t.starts_with('#') {
            let level = t.chars().take_while(|c| *c == '#').count();
            let rest = &t[level..];
            if level <= 6 && (rest.is_empty() || rest.starts_with(' ') || rest.starts_with('\t')) {
                let name = rest.trim().trim_end_matches('#').trim().to_string();
                if level == 1 && title.is_none() && !name.is_empty() {
                    title = Some(name.clone());
                }
                push_heading(
                    level,
                    name,
                    line_start,
                    &mut sections,
                    &mut cur_start,
                    &mut cur_path,
                );
                prev_line = None;
                continue;
            }
        }
        // Setext: a line of = or - under a non-empty paragraph line.
        if indent < 4
            && !t.is_empty()
            && (t.chars().all(|c| c == '=') || (t.len() >= 2 && t.chars().all(|c| c == '-')))
        {
            if let Some((pstart, ptext)) = prev_line {
                let level = if t.starts_with('=') { 1 } else { 2 };
                let name = ptext.trim().to_string();
                if level == 1 && title.is_none() {
                    title = Some(name.clone());
                }
                push_heading(
                    level,
                    name,
                    pstart,
                    &mut sections,
                    &mut cur_start,
                    &mut cur_path,
                );
                prev_line = None;
                continue;
            }
        }
        prev_line = if t.is_empty() {
            None
        } else {
            Some((line_start, trimmed))
        };
    }
    if text.len() > cur_start {
        sections.push(Section {
            heading_path: cur_path,
            start: cur_start,
            end: text.len(),
        });
    }
    (sections, title)
}

/// Visible text of an HTML page with heading sections and the page title.
/// Scripts, styles, templates, navigation and comments are dropped.
pub fn html_to_text(html: &str) -> (String, Vec<Section>, Option<String>) {
    let mut out = String::with_capacity(html.len() / 2);
    let mut sections: Vec<Section> = Vec::new();
    let mut stack: Vec<(usize, String)> = Vec::new();
    let mut cur_start = 0usize;
    let mut title: Option<String> = None;
    let mut page_title: Option<String> = None;
    let mut heading: Option<(usize, String)> = None; // level, text so far
    let mut skip_until: Option<String> = None;
    let mut in_title = false;
    let mut pre_depth = 0usize;
    let bytes = html.as_bytes();
    let mut i = 0usize;

    fn push_text(out: &mut String, s: &str, pre: bool) {
        if pre {
            out.push_str(s);
            return;
        }
        for c in s.chars() {
            if c.is_whitespace() {
                if !out.is_empty() && !out.ends_with([' ', '\n']) {
                    out.push(' ');
                }
            } else {
                out.push(c);
            }
        }
    }
    fn newline(out: &mut String, n: usize) {
        while out.ends_with(' ') {
            out.pop();
        }
        if out.is_empty() {
            return;
        }
        let have = out.len() - out.trim_end_matches('\n').len();
        for _ in have..n {
            out.push('\n');
        }
    }

    while i < bytes.len() {
        if bytes[i] == b'<' {
            if html[i..].starts_with("<!--") {
                i = html[i..]
                    .find("-->")
                    .map(|p| i + p + 3)
                    .unwrap_or(bytes.len());
                continue;
            }
            let end = match html[i..].find('>') {
                Some(p) => i + p,
                None => break,
            };
            let tag = &html[i + 1..end];
            i = end + 1;
            let closing = tag.starts_with('/');
            let name: String = tag
                .trim_start_matches('/')
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric())
                .collect::<String>()
                .to_ascii_lowercase();
            if let Some(until) = &skip_until {
                if closing && &name == until {
                    skip_until = None;
                }
                continue;
            }
            match name.as_str() {
                "script" | "style" | "noscript" | "template" | "svg" | "nav" | "iframe"
                | "object"
                    if !closing && !tag.ends_with('/') =>
                {
                    skip_until = Some(name);
                }
                "title" => in_title = !closing,
                "pre" => {
                    newline(&mut out, 2);
                    if closing {
                        pre_depth = pre_depth.saturating_sub(1);
                    } else {
                        pre_depth += 1;
                    }
                }
                "h1" | "h2" | "h3" | "h4" | "h5" | "h6" => {
                    let level = (name.as_bytes()[1] - b'0') as usize;
                    newline(&mut out, 2);
                    if !closing {
                        if out.len() > cur_start {
                            sections.push(Section {
                                heading_path: stack.iter().map(|(_, n)| n.clone()).collect(),
                                start: cur_start,
                                end: out.len(),
                            });
                        }
                        cur_start = out.len();
                        heading = Some((level, String::new()));
                    } else if let Some((level, text)) = heading.take() {
                        let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
                        while stack.last().is_some_and(|(l, _)| *l >= level) {
                            stack.pop();
                        }
                        if level == 1 && title.is_none() && !text.is_empty() {
                            title = Some(text.clone());
                        }
                        stack.push((level, text));
                    }
                }
                "br" => newline(&mut out, 1),
                "p" | "div" | "li" | "ul" | "ol" | "tr" | "table" | "section" | "article"
                | "header" | "footer" | "main" | "blockquote" | "dd" | "dt" | "dl" | "hr"
                | "figure" | "figcaption" | "aside" | "form" | "body" => {
                    newline(&mut out, if name == "li" || name == "tr" { 1 } else { 2 })
                }
                "td" | "th" => push_text(&mut out, " ", false),
                _ => {}
            }
            continue;
        }
        let next = html[i..].find('<').map(|p| i + p).unwrap_or(bytes.len());
        let raw = &html[i..next];
        i = next;
        if skip_until.is_some() {
            continue;
        }
        let text = decode_entities(raw);
        if in_title {
            let t = text.split_whitespace().collect::<Vec<_>>().join(" ");
            if !t.is_empty() {
                page_title = Some(t);
            }
            continue;
        }
        if let Some((_, h)) = heading.as_mut() {
            h.push_str(&text);
        }
        push_text(&mut out, &text, pre_depth > 0);
    }
    while out.ends_with([' ', '\n']) {
        out.pop();
    }
    if out.len() > cur_start {
        sections.push(Section {
            heading_path: stack.iter().map(|(_, n)| n.clone()).collect(),
            start: cur_start,
            end: out.len(),
        });
    }
    // The trim above may have cut into sections closed by a heading with no
    // text after it: keep every section inside the text.
    for s in &mut sections {
        s.end = s.end.min(out.len());
    }
    sections.retain(|s| s.start < s.end);
    (out, sections, page_title.or(title))
}

fn decode_entities(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(p) = rest.find('&') {
        out.push_str(&rest[..p]);
        rest = &rest[p..];
        let Some(semi) = rest.as_bytes()[..rest.len().min(12)]
            .iter()
            .position(|b| *b == b';')
        else {
            out.push('&');
            rest = &rest[1..];
            continue;
        };
        let ent = &rest[1..semi];
        let decoded = match ent {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            "nbsp" => Some(' '),
            "mdash" => Some('—'),
            "ndash" => Some('–'),
            "hellip" => Some('…'),
            "copy" => Some('©'),
            "rsquo" => Some('’'),
            "lsquo" => Some('‘'),
            "rdquo" => Some('”'),
            "ldquo" => Some('“'),
            _ if ent.starts_with("#x") || ent.starts_with("#X") => {
                u32::from_str_radix(&ent[2..], 16)
                    .ok()
                    .and_then(char::from_u32)
            }
            _ if ent.starts_with('#') => ent[1..].parse().ok().and_then(char::from_u32),
            _ => None,
        };
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &rest[semi + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heading_with_nothing_after_it_leaves_sections_inside_the_text() {
        // Found by the property tests: the final trim cut the last section short.
        let (out, sections, _) = html_to_text("<p>e\u{301}<h2>");
        assert_eq!(out, "e\u{301}");
        assert!(sections
            .iter()
            .all(|s| s.start < s.end && s.end <= out.len()));
    }

    #[test]
    fn markdown_heading_paths() {
        let md = "# Guide\nintro\n## Install\nrun it\n```\n# not a heading\n```\n### Linux\napt\n## Use\nask\n";
        let (secs, title) = markdown_sections(md);
        assert_eq!(title.as_deref(), Some("Guide"));
        let paths: Vec<String> = secs.iter().map(|s| s.heading_path.join("/")).collect();
        assert_eq!(
            paths,
            ["Guide", "Guide/Install", "Guide/Install/Linux", "Guide/Use"]
        );
        assert!(md[secs[1].start..secs[1].end].contains("# not a heading"));
        assert_eq!(secs.last().unwrap().end, md.len());
    }

    #[test]
    fn markdown_setext_and_preamble() {
        let md = "preamble\n\nTitle\n=====\nbody\n";
        let (secs, title) = markdown_sections(md);
        assert_eq!(title.as_deref(), Some("Title"));
        assert_eq!(secs[0].heading_path, Vec::<String>::new());
        assert_eq!(secs[1].heading_path, vec!["Title".to_string()]);
    }

    #[test]
    fn html_drops_scripts_and_keeps_headings() {
        let html = "<html><head><title>Page &amp; Co</title><style>body{}</style></head><body>\
            <nav>Home | About</nav><h1>Intro</h1><p>Hello&nbsp;<b>world</b> &#x263A;</p>\
            <script>var x = '<p>no</p>';</script><h2>Details</h2><p>More<br>lines</p><!-- hidden --></body></html>";
        let (text, secs, title) = html_to_text(html);
        assert_eq!(title.as_deref(), Some("Page & Co"));
        assert!(text.contains("Hello world ☺"), "{text}");
        assert!(!text.contains("var x"), "{text}");
        assert!(!text.contains("Home | About"), "{text}");
        assert!(!text.contains("hidden"));
        assert!(text.contains("More\nlines"), "{text}");
        let last = secs.last().unwrap();
        assert_eq!(
            last.heading_path,
            vec!["Intro".to_string(), "Details".to_string()]
        );
        assert!(text[last.start..last.end].contains("More"));
    }

    #[test]
    fn formats_by_extension() {
        assert_eq!(format_for(Some("MD")).unwrap().0, Format::Markdown);
        assert_eq!(format_for(Some("rs")).unwrap().1, "text/x-rust");
        assert_eq!(format_for(Some("pdf")).unwrap().0, Format::Pdf);
        assert_eq!(format_for(Some("DOCX")).unwrap().0, Format::Docx);
        assert_eq!(format_for(Some("epub")).unwrap().0, Format::Epub);
        assert_eq!(format_for(Some("pptx")).unwrap_err(), "PowerPoint (PPTX)");
        assert_eq!(format_for(None).unwrap().0, Format::Text);
    }
}
