//! Going on after an unknown key, so one misspelt key does not hide the other errors of
//! its file.
//!
//! serde stops at the first unknown key (`deny_unknown_fields`). The loader records that
//! error, blanks the key and its value out of the text with spaces (every other line and
//! column stays where it was), and parses again. Only block-style entries are blanked; an
//! unknown key inside a flow map (`{a: 1, bogus: 2}`) still ends the parsing of its file.

/// True when serde's message is about an unknown key.
pub(super) fn is_unknown_key(message: &str) -> bool {
    message.starts_with("unknown field")
}

/// Number of leading spaces.
fn indent(line: &[char]) -> usize {
    line.iter().take_while(|c| **c == ' ').count()
}

/// True for a line with nothing but spaces or a comment (`\r` of a CRLF file included).
fn is_blank(line: &[char]) -> bool {
    matches!(
        line.iter().find(|c| !matches!(**c, ' ' | '\r')),
        None | Some('#')
    )
}

/// True when `line` holds a map key at `col`: only spaces and `- ` before it.
fn starts_key_at(line: &[char], col: usize) -> bool {
    if col >= line.len() || matches!(line[col], ' ' | '#' | '-') {
        return false;
    }
    let mut i = 0;
    while i < col {
        match line[i] {
            ' ' => i += 1,
            '-' if line.get(i + 1) == Some(&' ') => i += 2,
            _ => return false,
        }
    }
    i == col
}

/// True when the key at `col` starts a list item (`- key: ...`).
fn starts_item(line: &[char], col: usize) -> bool {
    col >= 2 && line[col - 2] == '-' && line[col - 1] == ' '
}

/// Blanks the block-style entry whose key starts at `line`:`column` (1-based); false when
/// the key is not the first thing on its line (a flow map) and nothing was changed.
///
/// When the map loses its only key, `{}` is left in its place, so that it stays a map.
pub(super) fn blank_entry(text: &mut String, line: u32, column: u32) -> bool {
    let mut lines: Vec<Vec<char>> = text.split('\n').map(|l| l.chars().collect()).collect();
    let (Some(at), Some(col)) = (
        (line as usize).checked_sub(1),
        (column as usize).checked_sub(1),
    ) else {
        return false;
    };
    if at >= lines.len() || !starts_key_at(&lines[at], col) {
        return false;
    }
    // The value goes on while lines are indented deeper than the key, or are a `- ` list at
    // the key's own indentation (YAML allows that for a list under a map key).
    let mut end = at + 1;
    while end < lines.len() {
        let l = &lines[end];
        let n = indent(l);
        if is_blank(l) || n > col || (n == col && l.get(n) == Some(&'-')) {
            end += 1;
        } else {
            break;
        }
    }
    // Trailing blank or comment lines belong to what follows.
    while end > at + 1 && is_blank(&lines[end - 1]) {
        end -= 1;
    }
    let sibling_after = lines[end..]
        .iter()
        .take_while(|l| is_blank(l) || indent(l) >= col)
        .any(|l| !is_blank(l) && indent(l) == col && l.get(col) != Some(&'-'));
    let sibling_before = !starts_item(&lines[at], col) && {
        let mut found = false;
        for l in lines[..at].iter().rev() {
            if is_blank(l) || indent(l) > col {
                continue;
            }
            found = starts_key_at(l, col);
            break;
        }
        found
    };
    for l in &mut lines[at..end] {
        for c in l.iter_mut() {
            if *c != '\r' {
                *c = ' ';
            }
        }
    }
    // Put back what stood before the key on its line (indentation and `- `).
    let original: Vec<char> = text.split('\n').nth(at).unwrap_or("").chars().collect();
    lines[at][..col].copy_from_slice(&original[..col]);
    if !sibling_after && !sibling_before {
        lines[at][col] = '{';
        if let Some(c) = lines[at].get_mut(col + 1) {
            *c = '}';
        } else {
            lines[at].push('}');
        }
    }
    *text = lines
        .iter()
        .map(|l| l.iter().collect::<String>())
        .collect::<Vec<_>>()
        .join("\n");
    true
}

#[cfg(test)]
mod tests {
    use super::blank_entry;

    fn blanked(text: &str, line: u32, column: u32) -> Option<String> {
        let mut t = text.to_string();
        blank_entry(&mut t, line, column).then_some(t)
    }

    #[test]
    fn blanks_a_key_and_its_nested_value_keeping_positions() {
        let t = "a: 1\nbogus:\n  x: 1\n  y: [1,\n    2]\nb: 2\n";
        let b = blanked(t, 2, 1).unwrap();
        assert_eq!(b, "a: 1\n      \n      \n        \n      \nb: 2\n");
    }

    #[test]
    fn a_list_item_keeps_its_dash_and_an_emptied_map_stays_a_map() {
        let t = "entries:\n  - recipient: x\n    bogus: 1\n  - bogus: 2\n";
        let b = blanked(t, 3, 5).unwrap();
        assert_eq!(
            b,
            "entries:\n  - recipient: x\n            \n  - bogus: 2\n"
        );
        let b = blanked(&b, 4, 5).unwrap();
        assert_eq!(
            b,
            "entries:\n  - recipient: x\n            \n  - {}      \n"
        );
        let b = blanked("p:\n  bogus: 1\n", 2, 3).unwrap();
        assert_eq!(b, "p:\n  {}      \n");
    }

    #[test]
    fn a_key_starting_an_item_has_no_sibling_in_the_item_before() {
        let b = blanked("l:\n  - a: 1\n  - bogus: 2\n", 3, 5).unwrap();
        assert_eq!(b, "l:\n  - a: 1\n  - {}      \n");
    }

    #[test]
    fn a_list_under_the_key_at_the_same_indentation_is_part_of_it() {
        let b = blanked("bogus:\n- a\n- b\nx: 1\n", 1, 1).unwrap();
        assert_eq!(b, "      \n   \n   \nx: 1\n");
    }

    #[test]
    fn crlf_blank_lines_inside_the_value_are_part_of_it() {
        let b = blanked("bogus:\r\n  a: 1\r\n\r\n  b: 2\r\nx: 1\r\n", 1, 1).unwrap();
        assert_eq!(b, "      \r\n      \r\n\r\n      \r\nx: 1\r\n");
    }

    #[test]
    fn a_key_in_a_flow_map_is_left_alone() {
        assert_eq!(blanked("p: {a: 1, bogus: 2}\n", 1, 11), None);
    }
}
