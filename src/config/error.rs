//! Configuration errors: each names the file, line, column and key path.

use std::fmt;
use std::path::PathBuf;

use serde_saphyr::Spanned;

/// How the message of a warning starts (a warning does not stop the configuration loading).
pub(crate) const WARNING: &str = "warning: ";

/// One configuration problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.render())]
pub struct ConfigError {
    /// File relative to the config dir (`policies/hat.yaml`); empty for command-line overrides.
    pub file: PathBuf,
    /// 1-based line; 0 when the problem concerns the whole file.
    pub line: u32,
    /// 1-based column; 0 when unknown.
    pub column: u32,
    /// Key path inside the file (`inbound.sender_groups[2].policy`); empty when unknown.
    pub path: String,
    /// What is wrong, in plain words.
    pub message: String,
}

impl ConfigError {
    /// True for a warning (see [`FileErrors::warn_on`]), false for an error.
    pub(crate) fn is_warning(&self) -> bool {
        self.message.starts_with(WARNING)
    }

    /// The one-line form `file:line:column: path: message`, leaving out unknown parts.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if !self.file.as_os_str().is_empty() {
            out.push_str(&self.file.display().to_string());
            if self.line > 0 {
                out.push_str(&format!(":{}:{}", self.line, self.column));
            }
            out.push_str(": ");
        }
        if !self.path.is_empty() {
            out.push_str(&self.path);
            out.push_str(": ");
        }
        out.push_str(&self.message);
        out
    }
}

/// Every problem found in one load, sorted by file and position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            f.write_str(&e.render())?;
        }
        Ok(())
    }
}

/// A line and column (1-based; 0 = unknown).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Pos {
    /// Line.
    pub line: u32,
    /// Column.
    pub column: u32,
}

impl Pos {
    /// Where a spanned value was written (the reference site for aliases).
    pub(crate) fn of<T>(s: &Spanned<T>) -> Pos {
        Pos {
            line: clamp(s.referenced.line()),
            column: clamp(s.referenced.column()),
        }
    }
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// A line or column number as `u32` (saturating).
fn clamp(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Collects errors for one file.
pub(crate) struct FileErrors<'a> {
    /// File relative to the config dir.
    pub file: PathBuf,
    /// Where the errors go.
    sink: &'a mut Vec<ConfigError>,
}

impl<'a> FileErrors<'a> {
    /// Starts collecting for `file`.
    pub(crate) fn new(file: impl Into<PathBuf>, sink: &'a mut Vec<ConfigError>) -> Self {
        FileErrors {
            file: file.into(),
            sink,
        }
    }

    /// Records an error at a position.
    pub(crate) fn at(&mut self, pos: Pos, path: impl Into<String>, message: impl Into<String>) {
        self.sink.push(ConfigError {
            file: self.file.clone(),
            line: pos.line,
            column: pos.column,
            path: path.into(),
            message: message.into(),
        });
    }

    /// Records an error at a spanned value.
    pub(crate) fn on<T>(
        &mut self,
        s: &Spanned<T>,
        path: impl Into<String>,
        message: impl Into<String>,
    ) {
        self.at(Pos::of(s), path, message);
    }

    /// Records a warning at a spanned value: the configuration still loads. Its message
    /// starts with [`WARNING`], so it prints as `file:line:col: warning: path: message`.
    pub(crate) fn warn_on<T>(&mut self, s: &Spanned<T>, path: &str, message: impl Into<String>) {
        let message = format!("{WARNING}{path}: {}", message.into());
        self.at(Pos::of(s), "", message);
    }

    /// Errors and warnings recorded so far (in every file of the sink).
    pub(crate) fn count(&self) -> usize {
        self.sink.len()
    }

    /// Records an error about the whole file.
    pub(crate) fn whole(&mut self, message: impl Into<String>) {
        self.at(Pos::default(), "", message);
    }

    /// Records a YAML parse or shape error, made friendlier.
    pub(crate) fn parse(&mut self, e: &serde_saphyr::Error) {
        let mut message = e.without_snippet().to_string();
        let pos = e
            .location()
            .map(|l| Pos {
                line: clamp(l.line()),
                column: clamp(l.column()),
            })
            .unwrap_or_default();
        if pos.line > 0 {
            let suffix = format!(" at line {}, column {}", pos.line, pos.column);
            if let Some(stripped) = message.strip_suffix(&suffix) {
                message = stripped.to_string();
            }
        }
        self.at(pos, "", friendly_parse_message(&message));
    }
}

/// Rewords serde's and the parser's messages for administrators.
fn friendly_parse_message(m: &str) -> String {
    if let Some(rest) = m.strip_prefix("duplicate mapping key: ") {
        let key = rest
            .split(", set DuplicateKeyPolicy")
            .next()
            .unwrap_or(rest);
        return format!("duplicate key `{key}`");
    }
    match m {
        "expected string scalar" => {
            return "expected a single value here, not a list or a map".to_string()
        }
        "expected sequence start" => {
            return "expected a list here: [a, b], or one `- item` per line".to_string()
        }
        "expected mapping start" => return "expected a map here: `key: value` lines".to_string(),
        _ => {}
    }
    m.replace("unknown field", "unknown key")
        .replace("missing field", "missing key")
}

/// Joins a key path and a child key.
pub(crate) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Joins a key path and a list index.
pub(crate) fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}
