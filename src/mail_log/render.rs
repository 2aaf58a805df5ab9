//! One event to one line of text or JSON, with its timestamp.

use std::fmt::Write as _;

use super::event::{Event, Level};
use crate::config::model::MailLogFormat;

/// Formats an ESA timestamp (`Tue Apr 17 00:57:53 2018`) in local time.
pub fn timestamp() -> String {
    chrono::Local::now()
        .format("%a %b %e %H:%M:%S %Y")
        .to_string()
}

fn json_escape(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Renders one full line (with timestamp) in the given format.
pub fn render(event: &Event, format: MailLogFormat, ts: &str) -> String {
    let mut s = String::new();
    render_into(event, format, ts, &mut s);
    s
}

/// Appends one full line (with timestamp) in the given format to `s`.
pub(super) fn render_into(event: &Event, format: MailLogFormat, ts: &str, s: &mut String) {
    let level = match event.level() {
        Level::Info => "Info",
        Level::Warning => "Warning",
    };
    match format {
        MailLogFormat::Text => {
            let _ = writeln!(s, "{ts} {level}: {}", event.text());
        }
        MailLogFormat::Json => {
            s.push_str("{\"time\":");
            json_escape(ts, s);
            s.push_str(",\"level\":");
            json_escape(level, s);
            s.push_str(",\"event\":");
            json_escape(event.kind(), s);
            s.push_str(",\"text\":");
            json_escape(&event.text(), s);
            s.push_str("}\n");
        }
    }
}
