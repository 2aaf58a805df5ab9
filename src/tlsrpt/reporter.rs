//! The bounded `reporter` label: a report's `organization-name` (free text chosen by whoever
//! sends it) mapped to a short name from a shipped table of the large reporters, else
//! `other`. Matching is on whole words, so "notgoogle" is not Google.

/// Label of every organisation the table does not know.
pub const OTHER: &str = "other";

/// Label of a report whose organisation could not be read (too large, a bomb, not JSON).
pub const UNKNOWN: &str = "unknown";

/// `(label, word sequences)`: a name matches when its words contain one of the sequences.
const REPORTERS: &[(&str, &[&[&str]])] = &[
    ("google", &[&["google"], &["googlemail"], &["gmail"]]),
    (
        "microsoft",
        &[&["microsoft"], &["outlook"], &["hotmail"], &["office365"]],
    ),
    ("yahoo", &[&["yahoo"], &["aol"]]),
    ("comcast", &[&["comcast"], &["xfinity"]]),
    ("mailru", &[&["mail", "ru"], &["mailru"]]),
    ("zoho", &[&["zoho"]]),
    ("apple", &[&["apple"], &["icloud"]]),
    ("yandex", &[&["yandex"]]),
    ("proton", &[&["proton"], &["protonmail"]]),
    ("fastmail", &[&["fastmail"]]),
    ("gmx", &[&["gmx"], &["web", "de"]]),
    ("mimecast", &[&["mimecast"]]),
];

/// Every label [`reporter`] can return, [`OTHER`] last.
pub fn labels() -> impl Iterator<Item = &'static str> {
    REPORTERS.iter().map(|(l, _)| *l).chain([OTHER])
}

/// The `reporter` label of an `organization-name`.
pub fn reporter(organization_name: &str) -> &'static str {
    let lower = organization_name.to_lowercase();
    let words: Vec<&str> = lower
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    for (label, seqs) in REPORTERS {
        if seqs
            .iter()
            .any(|seq| words.windows(seq.len()).any(|w| w == *seq))
        {
            return label;
        }
    }
    OTHER
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn big_reporters_by_their_usual_names_and_everyone_else_is_other() {
        for (name, want) in [
            ("google.com", "google"),
            ("Google Inc.", "google"),
            ("Microsoft Corporation", "microsoft"),
            ("Yahoo! Inc.", "yahoo"),
            ("Comcast Cable Communications", "comcast"),
            ("Mail.Ru", "mailru"),
            ("mail.ru", "mailru"),
            ("Zoho Corporation", "zoho"),
            ("Company-X", "other"),
            ("notgoogle.example", "other"),
            ("mail.example", "other"),
            ("", "other"),
        ] {
            assert_eq!(reporter(name), want, "{name}");
        }
        let all: Vec<_> = labels().collect();
        assert_eq!(all.last(), Some(&"other"));
        assert!(all.len() < 20);
    }
}
