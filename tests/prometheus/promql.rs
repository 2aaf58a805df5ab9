//! Just enough PromQL lexing to list the metric names an expression selects, and the metric
//! names src/metrics/mod.rs defines.

use std::collections::BTreeSet;

/// Words that are never metric names: aggregations, set and grouping operators, modifiers.
const KEYWORDS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "atan2",
    "inf",
    "nan",
    "start",
    "end",
];

/// Keywords followed by a parenthesised list of label names.
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// Metric names selected by `expr` (identifiers that are not functions, keywords or labels).
pub fn metric_names(expr: &str) -> BTreeSet<String> {
    let b = expr.as_bytes();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let is_start = |c: u8| c.is_ascii_alphabetic() || c == b'_' || c == b':';
    let is_part = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
    while i < b.len() {
        let c = b[i];
        match c {
            b'"' | b'\'' | b'`' => i = skip_string(b, i),
            b'{' => i = skip_to(b, i, b'}'),
            b'[' => i = skip_to(b, i, b']'),
            b'#' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            _ if c.is_ascii_digit()
                || (c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit)) =>
            {
                // Numbers and durations (1e3, 0x1f, 5m, 1h30m).
                while i < b.len() && (is_part(b[i]) || b[i] == b'.') {
                    i += 1;
                }
            }
            _ if is_start(c) => {
                let start = i;
                while i < b.len() && is_part(b[i]) {
                    i += 1;
                }
                let word = &expr[start..i];
                let mut j = i;
                while j < b.len() && b[j].is_ascii_whitespace() {
                    j += 1;
                }
                let paren = b.get(j) == Some(&b'(');
                if LABEL_LISTS.contains(&word) {
                    if paren {
                        i = skip_to(b, j, b')');
                    }
                } else if paren || KEYWORDS.contains(&word) {
                    // A function call or an operator.
                } else {
                    names.insert(word.to_string());
                }
            }
            _ => i += 1,
        }
    }
    names
}

fn skip_string(b: &[u8], start: usize) -> usize {
    let q = b[start];
    let mut i = start + 1;
    while i < b.len() {
        if b[i] == b'\\' && q != b'`' {
            i += 2;
            continue;
        }
        if b[i] == q {
            return i + 1;
        }
        i += 1;
    }
    i
}

/// Index after the `close` that ends the bracket at `start` (strings inside are skipped).
fn skip_to(b: &[u8], start: usize, close: u8) -> usize {
    let mut i = start + 1;
    while i < b.len() {
        match b[i] {
            b'"' | b'\'' | b'`' => i = skip_string(b, i),
            c if c == close => return i + 1,
            _ => i += 1,
        }
    }
    i
}

/// The metric names in src/metrics/mod.rs (`pub(crate) const NAME: &str = "mxgate_..."`), with the
/// `_bucket`, `_sum` and `_count` series of those described as histograms.
pub struct Defined {
    pub names: BTreeSet<String>,
    pub series: BTreeSet<String>,
}

pub fn defined_metrics(metrics_rs: &str) -> Defined {
    let mut consts = Vec::new();
    for line in metrics_rs.lines() {
        let l = line.trim();
        let Some(rest) = l
            .strip_prefix("pub const ")
            .or_else(|| l.strip_prefix("pub(crate) const "))
        else {
            continue;
        };
        let Some((ident, value)) = rest.split_once(": &str = \"") else {
            continue;
        };
        let Some(value) = value.strip_suffix("\";") else {
            continue;
        };
        if value.starts_with("mxgate_") {
            consts.push((ident.trim().to_string(), value.to_string()));
        }
    }
    let compact: String = metrics_rs.split_whitespace().collect();
    let mut names = BTreeSet::new();
    let mut series = BTreeSet::new();
    for (ident, value) in &consts {
        names.insert(value.clone());
        series.insert(value.clone());
        if compact.contains(&format!("describe_histogram!({ident},")) {
            for suffix in ["_bucket", "_sum", "_count"] {
                series.insert(format!("{value}{suffix}"));
            }
        }
    }
    Defined { names, series }
}

#[test]
fn metric_names_skips_functions_labels_and_durations() {
    let n = metric_names(
        r#"histogram_quantile(0.95, sum by (le, listener) (rate(mxgate_tls_handshake_seconds_bucket{listener=~"a|b", x="y}"}[5m:1m])))
           / on (instance) group_left (version) mxgate_build_info offset 1d
           and up{job="mxgate"} == 0 or vector(1) > bool 14 * 86400 - time() unless absent(foo:bar)"#,
    );
    let want: BTreeSet<String> = [
        "mxgate_tls_handshake_seconds_bucket",
        "mxgate_build_info",
        "up",
        "foo:bar",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(n, want);
}
