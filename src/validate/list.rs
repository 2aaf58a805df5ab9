//! The `list: FILE` method: a file of valid addresses exported from the directory, one a
//! line, plus `@domain` lines that accept every local part of a (catch-all) domain.
//! `#` starts a comment line; blank lines are ignored. Decided in memory: no I/O at RCPT.
//! Addresses compare case-insensitively (the internal servers fold case).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::verdict::Verdict;

/// Loading a list file failed.
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    /// The file cannot be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A line is not an address nor an `@domain` line.
    #[error("{path}:{line}: {message}")]
    Line {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
}

/// The addresses and catch-all domains of one list file.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RecipientList {
    path: PathBuf,
    addresses: HashSet<String>,
    domains: HashSet<String>,
}

/// Sorted: the configuration hash is taken over this output, the same in every process.
impl std::fmt::Debug for RecipientList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        fn sorted(s: &HashSet<String>) -> std::collections::BTreeSet<&String> {
            s.iter().collect()
        }
        f.debug_struct("RecipientList")
            .field("path", &self.path)
            .field("addresses", &sorted(&self.addresses))
            .field("domains", &sorted(&self.domains))
            .finish()
    }
}

impl RecipientList {
    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<Self, Vec<ListError>> {
        let text = std::fs::read_to_string(path).map_err(|source| {
            vec![ListError::Read {
                path: path.to_owned(),
                source,
            }]
        })?;
        Self::parse(path, &text)
    }

    /// Parses the text of `path`; every bad line is reported, in order.
    pub fn parse(path: &Path, text: &str) -> Result<Self, Vec<ListError>> {
        let mut list = RecipientList {
            path: path.to_owned(),
            ..Default::default()
        };
        let mut errors = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match check_line(line) {
                Ok(()) if line.starts_with('@') => {
                    list.domains.insert(line[1..].to_ascii_lowercase());
                }
                Ok(()) => {
                    list.addresses.insert(line.to_ascii_lowercase());
                }
                Err(message) => errors.push(ListError::Line {
                    path: path.to_owned(),
                    line: i + 1,
                    message,
                }),
            }
        }
        if errors.is_empty() {
            Ok(list)
        } else {
            Err(errors)
        }
    }

    /// The file the list came from (named in log lines).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Listed addresses and catch-all domains.
    pub fn len(&self) -> (usize, usize) {
        (self.addresses.len(), self.domains.len())
    }

    /// True when the file listed nothing.
    pub fn is_empty(&self) -> bool {
        self.addresses.is_empty() && self.domains.is_empty()
    }

    /// Valid when the address or its domain is listed, else Invalid.
    pub fn lookup(&self, address: &str) -> Verdict {
        // ASCII folding only (as the cache key): a Unicode look-alike is another address.
        let lower = address.to_ascii_lowercase();
        let domain = lower.rsplit_once('@').map_or("", |(_, d)| d);
        if self.addresses.contains(&lower) || self.domains.contains(domain) {
            Verdict::Valid
        } else {
            Verdict::Invalid
        }
    }
}

/// Checks one non-comment line: `local@domain` or `@domain`, no white space.
fn check_line(line: &str) -> Result<(), String> {
    if line.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "{line:?}: one address (or @domain) a line, without spaces; comments start the line with #"
        ));
    }
    let Some((local, domain)) = line.rsplit_once('@') else {
        return Err(format!(
            "{line:?} is not an address: expected user@domain or @domain"
        ));
    };
    if domain.is_empty()
        || domain.starts_with('.')
        || domain.ends_with('.')
        || domain.contains("..")
        || domain.contains('@')
    {
        return Err(format!("{line:?}: bad domain {domain:?}"));
    }
    if !local.is_empty() && local.contains('@') && !local.starts_with('"') {
        return Err(format!("{line:?}: more than one @"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(text: &str) -> Result<RecipientList, Vec<ListError>> {
        RecipientList::parse(Path::new("policies/recipients.txt"), text)
    }

    #[test]
    fn addresses_and_catch_all_domains() {
        let l = list(
            "# exported 2026-12-05\n\
             alice@lists.example\n\
             \n\
             Bob@Lists.Example   \n\
             @catchall.example\n",
        )
        .unwrap();
        assert_eq!(l.len(), (2, 1));
        assert_eq!(l.lookup("alice@lists.example"), Verdict::Valid);
        assert_eq!(l.lookup("BOB@lists.EXAMPLE"), Verdict::Valid);
        assert_eq!(l.lookup("carol@lists.example"), Verdict::Invalid);
        assert_eq!(l.lookup("anyone@CatchAll.example"), Verdict::Valid);
        assert_eq!(l.lookup("anyone@sub.catchall.example"), Verdict::Invalid);
        assert_eq!(l.lookup("alice@other.example"), Verdict::Invalid);
        // Only ASCII case folds: a look-alike with the Kelvin sign is not `kim@`.
        let l = list("kim@lists.example\n").unwrap();
        assert_eq!(l.lookup("\u{212A}im@lists.example"), Verdict::Invalid);
    }

    #[test]
    fn errors_name_file_and_line() {
        let errs =
            list("ok@example.com\nnot an address\nplain\nuser@\n# fine\n@.example\n").unwrap_err();
        let texts: Vec<String> = errs.iter().map(ToString::to_string).collect();
        assert_eq!(texts.len(), 4, "{texts:?}");
        assert!(texts[0].starts_with("policies/recipients.txt:2: \"not an address\""));
        assert!(texts[1].starts_with("policies/recipients.txt:3: \"plain\" is not an address"));
        assert!(texts[2].starts_with("policies/recipients.txt:4: \"user@\": bad domain"));
        assert!(texts[3].starts_with("policies/recipients.txt:6:"));
    }

    #[test]
    fn a_missing_file_is_named() {
        let e = RecipientList::load(Path::new("/nonexistent/list.txt")).unwrap_err();
        assert!(
            e[0].to_string().starts_with("/nonexistent/list.txt: "),
            "{}",
            e[0]
        );
    }
}
