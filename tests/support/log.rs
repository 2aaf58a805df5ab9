//! The one mail-log matcher: a pattern is literal text with three placeholders (no regex crate
//! among the dependencies):
//! - `{n}`: one or more ASCII digits, captured;
//! - `{w}`: one or more non-space characters, captured;
//! - `.*`: any text, not captured.
//!
//! A pattern matches anywhere in a line. The waits poll a log file from a byte offset (a
//! "mark") and return the first matching line after it with its captures and where it ends,
//! so a sequence of lines can be waited for in order.

use std::path::Path;
use std::time::{Duration, Instant};

/// How long a wait for a log line lasts before it fails (generous for a loaded 2-core CI
/// machine; the usual wait is well under a second).
pub const LOG_TIMEOUT: Duration = Duration::from_secs(30);

/// A log line that matched.
#[derive(Debug, Clone)]
pub struct Found {
    /// The whole line, without its newline.
    pub line: String,
    /// The values of the `{n}` and `{w}` placeholders, in order.
    pub caps: Vec<String>,
    /// Byte offset just after the line: the mark for waiting for the next line in order.
    pub end: usize,
}

enum Part {
    Lit(String),
    /// `{n}`: one or more ASCII digits.
    Num,
    /// `{w}`: one or more non-whitespace characters.
    Word,
    /// `.*`: anything, not captured.
    Any,
}

fn parse_pattern(pattern: &str) -> Vec<Part> {
    let mut parts = Vec::new();
    let mut rest = pattern;
    while !rest.is_empty() {
        let next = [rest.find("{n}"), rest.find("{w}"), rest.find(".*")]
            .into_iter()
            .flatten()
            .min();
        match next {
            Some(i) => {
                if i > 0 {
                    parts.push(Part::Lit(rest[..i].to_string()));
                }
                let (part, len) = match &rest[i..i + 2] {
                    ".*" => (Part::Any, 2),
                    _ if &rest[i..i + 3] == "{n}" => (Part::Num, 3),
                    _ => (Part::Word, 3),
                };
                parts.push(part);
                rest = &rest[i + len..];
            }
            None => {
                parts.push(Part::Lit(rest.to_string()));
                rest = "";
            }
        }
    }
    parts
}

fn match_here(s: &str, parts: &[Part], caps: &mut Vec<String>) -> bool {
    let Some((first, more)) = parts.split_first() else {
        return true;
    };
    match first {
        Part::Lit(l) => s.starts_with(l.as_str()) && match_here(&s[l.len()..], more, caps),
        Part::Any => (0..=s.len())
            .rev()
            .any(|k| s.is_char_boundary(k) && match_here(&s[k..], more, caps)),
        Part::Num | Part::Word => {
            let ok = |c: char| match first {
                Part::Num => c.is_ascii_digit(),
                _ => !c.is_whitespace(),
            };
            let max: usize = s.chars().take_while(|c| ok(*c)).map(char::len_utf8).sum();
            // Longest first, backing off so a following literal can match.
            let mut ends: Vec<usize> = s[..max]
                .char_indices()
                .map(|(i, c)| i + c.len_utf8())
                .collect();
            ends.reverse();
            for end in ends {
                caps.push(s[..end].to_string());
                if match_here(&s[end..], more, caps) {
                    return true;
                }
                caps.pop();
            }
            false
        }
    }
}

/// Finds `pattern` anywhere in `line`; returns the captured placeholder values in order.
pub fn match_line(line: &str, pattern: &str) -> Option<Vec<String>> {
    let parts = parse_pattern(pattern);
    line.char_indices()
        .map(|(i, _)| i)
        .chain(std::iter::once(line.len()))
        .find_map(|start| {
            let mut caps = Vec::new();
            match_here(&line[start..], &parts, &mut caps).then_some(caps)
        })
}

/// Captures of the first line of `text` matching `pattern`, or a panic showing `text`.
pub fn find_in(text: &str, pattern: &str) -> Vec<String> {
    text.lines()
        .find_map(|l| match_line(l, pattern))
        .unwrap_or_else(|| panic!("no line matching {pattern:?} in:\n{text}"))
}

/// The text of the file (empty while it does not exist; invalid UTF-8 replaced).
pub fn read(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// The current end of the file: a mark for [`find_after`] and the waits.
pub fn mark(path: &Path) -> usize {
    std::fs::metadata(path)
        .map(|m| m.len() as usize)
        .unwrap_or(0)
}

/// The first whole line after byte `mark` of the file that matches `pattern`.
pub fn find_after(path: &Path, mark: usize, pattern: &str) -> Option<Found> {
    let bytes = std::fs::read(path).unwrap_or_default();
    let mut pos = mark.min(bytes.len());
    for raw in bytes[pos..].split_inclusive(|b| *b == b'\n') {
        pos += raw.len();
        if raw.last() != Some(&b'\n') {
            break; // a line still being written
        }
        let line = String::from_utf8_lossy(&raw[..raw.len() - 1]).into_owned();
        if let Some(caps) = match_line(&line, pattern) {
            return Some(Found {
                line,
                caps,
                end: pos,
            });
        }
    }
    None
}

fn timed_out(path: &Path, mark: usize, pattern: &str) -> ! {
    let text = read(path);
    panic!(
        "no log line matching {pattern:?} within {LOG_TIMEOUT:?} in {}; since the mark:\n{}",
        path.display(),
        text.get(mark..).unwrap_or(&text)
    );
}

/// Polls the file (blocking) until a line after `mark` matches `pattern`.
pub fn wait_after(path: &Path, mark: usize, pattern: &str) -> Found {
    let deadline = Instant::now() + LOG_TIMEOUT;
    loop {
        if let Some(f) = find_after(path, mark, pattern) {
            return f;
        }
        if Instant::now() >= deadline {
            timed_out(path, mark, pattern);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// [`wait_after`] for async tests: sleeps on the runtime between polls.
pub async fn wait_after_async(path: &Path, mark: usize, pattern: &str) -> Found {
    let deadline = Instant::now() + LOG_TIMEOUT;
    loop {
        if let Some(f) = find_after(path, mark, pattern) {
            return f;
        }
        if Instant::now() >= deadline {
            timed_out(path, mark, pattern);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
