//! Filters on chunks: by source, by document, by metadata field (equality or
//! numeric range). One syntax for every store; each store turns a [`Filter`]
//! into its own query, and [`Filter::matches`] is the reference semantics.
//!
//! ```
//! use magpie_core::Filter;
//! let f = Filter::parse_all(["source=guide.md", "meta.year>=2020", "meta.lang=en|fr"]).unwrap();
//! assert_eq!(f.clauses.len(), 3);
//! ```

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::types::Chunk;

/// What a clause looks at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FilterField {
    /// The chunk's source (the document's uri: relative path or URL).
    Source,
    /// The chunk's document id.
    Doc,
    /// A metadata field of the document (`meta.<name>`).
    Meta(String),
}

impl FilterField {
    /// Where the field sits in a stored point's payload (both Qdrant stores).
    pub fn payload_key(&self) -> String {
        match self {
            FilterField::Source => "source".into(),
            FilterField::Doc => "doc_id".into(),
            FilterField::Meta(name) => format!("chunk.metadata.{name}"),
        }
    }
}

impl fmt::Display for FilterField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FilterField::Source => f.write_str("source"),
            FilterField::Doc => f.write_str("doc"),
            FilterField::Meta(n) => write!(f, "meta.{n}"),
        }
    }
}

/// One condition; a [`Filter`] holds when all of its clauses do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Clause {
    /// The field equals one of `values`. A value matches a text field with the
    /// same text, an integer field with the same number (when it parses as an
    /// integer) and a boolean field (`true`/`false`). A list field matches when
    /// any element does.
    Eq {
        /// The field.
        field: FilterField,
        /// Accepted values (any of).
        values: Vec<String>,
    },
    /// The field is a number within the bounds (at least one set).
    Range {
        /// The field.
        field: FilterField,
        /// The bounds.
        bounds: Bounds,
    },
}

/// Numeric bounds of a range clause; each is optional.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Bounds {
    /// Greater than.
    pub gt: Option<f64>,
    /// Greater than or equal.
    pub gte: Option<f64>,
    /// Less than.
    pub lt: Option<f64>,
    /// Less than or equal.
    pub lte: Option<f64>,
}

impl Bounds {
    /// Whether `x` is within every bound.
    pub fn contains(&self, x: f64) -> bool {
        self.gt.is_none_or(|b| x > b)
            && self.gte.is_none_or(|b| x >= b)
            && self.lt.is_none_or(|b| x < b)
            && self.lte.is_none_or(|b| x <= b)
    }

    /// Each bound that is set, with its operator.
    pub fn set(&self) -> impl Iterator<Item = (&'static str, f64)> {
        [
            (">", self.gt),
            (">=", self.gte),
            ("<", self.lt),
            ("<=", self.lte),
        ]
        .into_iter()
        .filter_map(|(op, b)| b.map(|b| (op, b)))
    }
}

/// A conjunction of clauses; the empty filter accepts everything.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Filter {
    /// All must hold.
    pub clauses: Vec<Clause>,
}

const SYNTAX: &str = "write FIELD=VALUE (several values: a|b), or FIELD>N, FIELD>=N, FIELD<N, \
                      FIELD<=N, where FIELD is source, doc or meta.NAME";

fn parse_field(s: &str) -> Result<FilterField> {
    let s = s.trim();
    match s {
        "source" => Ok(FilterField::Source),
        "doc" | "doc_id" => Ok(FilterField::Doc),
        _ => match s.strip_prefix("meta.") {
            Some(name)
                if !name.is_empty()
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') =>
            {
                Ok(FilterField::Meta(name.to_string()))
            }
            _ => Err(Error::InvalidInput(format!(
                "filter field {s:?} is not known: use source, doc or meta.NAME \
                 (NAME of letters, digits, '_' or '-')"
            ))),
        },
    }
}

/// The typed readings of a filter value besides its text: as an integer and
/// as a boolean, when it has them (the rule of [`Clause::Eq`]; stores build
/// their conditions from it).
pub fn readings(v: &str) -> (Option<i64>, Option<bool>) {
    let b = match v {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    };
    (v.trim().parse::<i64>().ok(), b)
}

fn json_matches(v: &serde_json::Value, wanted: &str) -> bool {
    match v {
        serde_json::Value::String(s) => s == wanted,
        serde_json::Value::Number(n) => n.as_i64().is_some() && n.as_i64() == readings(wanted).0,
        serde_json::Value::Bool(b) => readings(wanted).1 == Some(*b),
        serde_json::Value::Array(items) => items.iter().any(|i| json_matches(i, wanted)),
        _ => false,
    }
}

fn json_in_range(v: &serde_json::Value, bounds: &Bounds) -> bool {
    match v {
        serde_json::Value::Number(n) => n.as_f64().is_some_and(|x| bounds.contains(x)),
        serde_json::Value::Array(items) => items.iter().any(|i| json_in_range(i, bounds)),
        _ => false,
    }
}

/// Most clauses in one filter.
pub const MAX_FILTER_CLAUSES: usize = 64;
/// Most values, over all clauses, in one filter (`a|b|c` is three).
pub const MAX_FILTER_VALUES: usize = 1024;
/// Longest filter clause, bytes.
pub const MAX_FILTER_BYTES: usize = 16 * 1024;

/// Split `a|b` into trimmed values; `\|` is a literal `|`, `\\` a backslash.
fn split_values(v: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(n @ ('|' | '\\')) => cur.push(n),
                Some(n) => {
                    cur.push('\\');
                    cur.push(n);
                }
                None => cur.push('\\'),
            },
            '|' => out.push(std::mem::take(&mut cur).trim().to_string()),
            c => cur.push(c),
        }
    }
    out.push(cur.trim().to_string());
    out
}

/// A value as [`Clause::parse`] reads it back (`|` and `\` escaped).
fn escape_value(v: &str) -> String {
    v.replace('\\', "\\\\").replace('|', "\\|")
}

impl Clause {
    /// Parse one clause: `source=a.md`, `doc=ID`, `meta.lang=en|fr`, `meta.year>=2020`.
    ///
    /// The operator is the first one after the field name, so values may hold
    /// `<`, `>` and `=` (`meta.title=a<b`). In a value, `\|` is a literal `|`
    /// and `\\` a literal backslash.
    pub fn parse(text: &str) -> Result<Self> {
        let t = text.trim();
        if t.is_empty() {
            return Err(Error::InvalidInput(format!(
                "the filter is empty: {SYNTAX}"
            )));
        }
        if t.len() > MAX_FILTER_BYTES {
            return Err(Error::InvalidInput(format!(
                "a filter clause is {} bytes; at most {MAX_FILTER_BYTES} are allowed",
                t.len()
            )));
        }
        // The field name: letters, digits, '.', '_', '-' and spaces around it.
        let end = t
            .find(|c: char| !(c.is_ascii_alphanumeric() || "._- ".contains(c)))
            .unwrap_or(t.len());
        let (f, rest) = t.split_at(end);
        let op = [">=", "<=", ">", "<", "="]
            .into_iter()
            .find(|op| rest.starts_with(op));
        let Some(op) = op else {
            return Err(Error::InvalidInput(format!(
                "filter {t:?} has no operator: {SYNTAX}"
            )));
        };
        let v = &rest[op.len()..];
        let field = parse_field(f)?;
        if op == "=" {
            let values = split_values(v);
            if values.iter().any(String::is_empty) {
                return Err(Error::InvalidInput(format!(
                    "filter {t:?} has an empty value: {SYNTAX}"
                )));
            }
            return Ok(Clause::Eq { field, values });
        }
        let n: f64 = v.trim().parse().map_err(|_| {
            Error::InvalidInput(format!(
                "filter {t:?}: {:?} is not a number; ranges compare numbers",
                v.trim()
            ))
        })?;
        if !n.is_finite() {
            return Err(Error::InvalidInput(format!(
                "filter {t:?}: the bound must be a finite number"
            )));
        }
        let mut bounds = Bounds::default();
        *match op {
            ">=" => &mut bounds.gte,
            "<=" => &mut bounds.lte,
            ">" => &mut bounds.gt,
            _ => &mut bounds.lt,
        } = Some(n);
        Ok(Clause::Range { field, bounds })
    }

    /// Whether `chunk` satisfies the clause.
    pub fn matches(&self, chunk: &Chunk) -> bool {
        match self {
            Clause::Eq { field, values } => match field {
                FilterField::Source => values.contains(&chunk.source),
                FilterField::Doc => values.contains(&chunk.doc_id),
                FilterField::Meta(n) => chunk
                    .metadata
                    .get(n)
                    .is_some_and(|j| values.iter().any(|v| json_matches(j, v))),
            },
            Clause::Range { field, bounds } => match field {
                FilterField::Meta(n) => chunk
                    .metadata
                    .get(n)
                    .is_some_and(|j| json_in_range(j, bounds)),
                // Source and document id are text: no range holds.
                _ => false,
            },
        }
    }

    /// Check the clause can be used (ranges are for metadata and have a bound).
    pub fn validate(&self) -> Result<()> {
        match self {
            Clause::Eq { values, .. } if values.is_empty() => Err(Error::InvalidInput(
                "a filter clause needs at least one value".into(),
            )),
            Clause::Range { field, bounds } => {
                if !matches!(field, FilterField::Meta(_)) {
                    return Err(Error::InvalidInput(format!(
                        "{field} is text: ranges work on numeric meta.NAME fields"
                    )));
                }
                if bounds.set().next().is_none() {
                    return Err(Error::InvalidInput(format!(
                        "the range on {field} has no bound"
                    )));
                }
                if bounds.set().any(|(_, x)| !x.is_finite()) {
                    return Err(Error::InvalidInput(format!(
                        "the range on {field} has a bound that is not a finite number"
                    )));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

impl Filter {
    /// The filter that accepts every chunk.
    pub fn none() -> Self {
        Self::default()
    }

    /// Parse clauses (all must hold), as given to `--filter` or the HTTP API.
    pub fn parse_all<I, S>(clauses: I) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut parsed = Vec::new();
        for c in clauses {
            if parsed.len() == MAX_FILTER_CLAUSES {
                return Err(Error::InvalidInput(format!(
                    "the filter has more than {MAX_FILTER_CLAUSES} clauses"
                )));
            }
            parsed.push(Clause::parse(c.as_ref())?);
        }
        let clauses = parsed;
        let f = Self { clauses };
        f.validate()?;
        Ok(f)
    }

    /// Add a clause.
    pub fn and(mut self, clause: Clause) -> Self {
        self.clauses.push(clause);
        self
    }

    /// True when the filter accepts everything.
    pub fn is_empty(&self) -> bool {
        self.clauses.is_empty()
    }

    /// Whether `chunk` satisfies every clause.
    pub fn matches(&self, chunk: &Chunk) -> bool {
        self.clauses.iter().all(|c| c.matches(chunk))
    }

    /// Check every clause (used by stores before building a query).
    pub fn validate(&self) -> Result<()> {
        if self.clauses.len() > MAX_FILTER_CLAUSES {
            return Err(Error::InvalidInput(format!(
                "the filter has {} clauses; at most {MAX_FILTER_CLAUSES} are allowed",
                self.clauses.len()
            )));
        }
        let values: usize = self
            .clauses
            .iter()
            .map(|c| match c {
                Clause::Eq { values, .. } => values.len(),
                Clause::Range { .. } => 1,
            })
            .sum();
        if values > MAX_FILTER_VALUES {
            return Err(Error::InvalidInput(format!(
                "the filter has {values} values; at most {MAX_FILTER_VALUES} are allowed \
                 (filter on a metadata field the documents share instead)"
            )));
        }
        self.clauses.iter().try_for_each(Clause::validate)
    }
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .clauses
            .iter()
            .map(|c| match c {
                Clause::Eq { field, values } => format!(
                    "{field}={}",
                    values
                        .iter()
                        .map(|v| escape_value(v))
                        .collect::<Vec<_>>()
                        .join("|")
                ),
                Clause::Range { field, bounds } => bounds
                    .set()
                    .map(|(op, b)| format!("{field}{op}{b}"))
                    .collect::<Vec<_>>()
                    .join(" "),
            })
            .collect();
        f.write_str(&parts.join(" "))
    }
}

/// Retrieve with a store that cannot filter: ask for more and more hits until
/// `k` pass the filter or the store has no more. An empty filter asks once
/// for `k`; an invalid one is an error.
pub async fn overfetch<F, Fut>(k: usize, filter: &Filter, mut fetch: F) -> Result<Vec<crate::Hit>>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<crate::Hit>>>,
{
    if filter.is_empty() {
        return fetch(k).await;
    }
    filter.validate()?;
    let mut n = k.saturating_mul(4).max(32);
    loop {
        let hits = fetch(n).await?;
        let exhausted = hits.len() < n;
        let kept: Vec<_> = hits
            .into_iter()
            .filter(|h| filter.matches(&h.chunk))
            .collect();
        if kept.len() >= k || exhausted || n >= OVERFETCH_CAP {
            return Ok(kept.into_iter().take(k).collect());
        }
        n = (n * 4).min(OVERFETCH_CAP);
    }
}

/// The most hits [`overfetch`] asks a store for.
pub const OVERFETCH_CAP: usize = 20_000;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Span;

    fn chunk(source: &str, meta: serde_json::Value) -> Chunk {
        Chunk {
            id: "c".into(),
            doc_id: "d1".into(),
            doc_hash: "h".into(),
            source: source.into(),
            index: 0,
            text: "t".into(),
            span: Span::default(),
            heading_path: vec![],
            title: None,
            metadata: serde_json::from_value(meta).unwrap(),
        }
    }

    #[test]
    fn parses_every_form() {
        let f = Filter::parse_all([
            "source = a.md",
            "doc=d1",
            "meta.lang=en|fr",
            "meta.year>=2020",
            "meta.year<2024.5",
        ])
        .unwrap();
        assert_eq!(f.clauses.len(), 5);
        assert_eq!(
            f.clauses[2],
            Clause::Eq {
                field: FilterField::Meta("lang".into()),
                values: vec!["en".into(), "fr".into()]
            }
        );
        assert!(
            matches!(f.clauses[3], Clause::Range { bounds: Bounds { gte: Some(x), .. }, .. } if x == 2020.0)
        );
        assert_eq!(
            f.to_string(),
            "source=a.md doc=d1 meta.lang=en|fr meta.year>=2020 meta.year<2024.5"
        );
    }

    #[test]
    fn bad_filters_say_what_to_write() {
        for (bad, says) in [
            ("", "empty"),
            ("year=1", "not known"),
            ("meta.=1", "not known"),
            ("meta.a b=1", "not known"),
            ("meta.year>abc", "not a number"),
            ("meta.year>inf", "finite"),
            ("source", "no operator"),
            ("meta.x=a||b", "empty value"),
            ("source>3", "ranges work on numeric"),
        ] {
            let e = Filter::parse_all([bad]).unwrap_err().to_string();
            assert!(e.contains(says), "{bad:?}: {e}");
        }
    }

    #[test]
    fn values_may_hold_operators_and_escaped_bars() {
        let f = Filter::parse_all(["meta.title=a<b>=c", r"meta.x=p\|q|r\\s"]).unwrap();
        assert_eq!(
            f.clauses[0],
            Clause::Eq {
                field: FilterField::Meta("title".into()),
                values: vec!["a<b>=c".into()]
            }
        );
        assert_eq!(
            f.clauses[1],
            Clause::Eq {
                field: FilterField::Meta("x".into()),
                values: vec!["p|q".into(), r"r\s".into()]
            }
        );
        // What Display writes parses back to the same filter.
        let again = Filter::parse_all(f.to_string().split(' ')).unwrap();
        assert_eq!(again.clauses, f.clauses);
    }

    #[test]
    fn filters_are_bounded() {
        let many = format!("doc={}", vec!["x"; MAX_FILTER_VALUES + 1].join("|"));
        let e = Filter::parse_all([many]).unwrap_err().to_string();
        assert!(e.contains("at most 1024"), "{e}");
        let clauses = vec!["doc=x"; MAX_FILTER_CLAUSES + 1];
        let e = Filter::parse_all(clauses).unwrap_err().to_string();
        assert!(e.contains("more than 64 clauses"), "{e}");
        let long = format!("doc={}", "y".repeat(MAX_FILTER_BYTES));
        assert!(Filter::parse_all([long]).is_err());
    }

    #[test]
    fn matching_follows_the_documented_rules() {
        let c = chunk(
            "a.md",
            serde_json::json!({"year": 2021, "lang": "en", "tags": ["x", "y"], "draft": false, "code": "2021"}),
        );
        let yes = |s: &[&str]| Filter::parse_all(s.iter().copied()).unwrap().matches(&c);
        assert!(yes(&[]));
        assert!(yes(&["source=a.md", "doc=d1"]));
        assert!(!yes(&["source=b.md"]));
        assert!(yes(&["meta.lang=fr|en"]));
        assert!(yes(&["meta.year=2021"]), "integer field, integer value");
        assert!(yes(&["meta.code=2021"]), "text field, same text");
        assert!(yes(&["meta.tags=y"]), "any element of a list");
        assert!(yes(&["meta.draft=false"]));
        assert!(yes(&["meta.year>=2021", "meta.year<2022"]));
        assert!(!yes(&["meta.year>2021"]));
        assert!(
            !yes(&["meta.code>2000"]),
            "ranges compare numbers, not text"
        );
        assert!(!yes(&["meta.missing=1"]));
    }
}
