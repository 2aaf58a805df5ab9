//! `parse_command` and `parse_path` on arbitrary bytes: never panic; every error renders a
//! 5xx reply without control bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mxgate::smtp::address::parse_path;
use mxgate::smtp::command::parse_command;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = parse_command(data) {
        let wire = e.reply().to_wire();
        assert!(wire.starts_with('5'), "{wire:?}");
        assert!(
            !wire[..wire.len() - 2].bytes().any(|b| b < 0x20),
            "{wire:?}"
        );
    }
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok((_, n)) = parse_path(s) {
            assert!(n <= s.len() && s.is_char_boundary(n));
        }
    }
});
