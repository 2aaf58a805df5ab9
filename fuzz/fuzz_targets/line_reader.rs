//! The command-line framer on arbitrary bytes cut into arbitrary chunks: never panics, always
//! makes progress, and a line it returns is CRLF-framed, within the limit and free of CR/LF.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mxgate::smtp::line::{LineEvent, LineReader};

fuzz_target!(|input: &[u8]| {
    // Two leading bytes choose the line limit and the chunk size.
    let (max, step, data) = match input {
        [a, b, rest @ ..] => (usize::from(*a) * 4 + 2, usize::from(*b % 32) + 1, rest),
        _ => (512, 1, input),
    };
    let mut reader = LineReader::new(max);
    let mut buf: Vec<u8> = Vec::new();
    for chunk in data.chunks(step) {
        buf.extend_from_slice(chunk);
        loop {
            let used = match reader.next(&buf) {
                LineEvent::Incomplete => break,
                LineEvent::Line { line, consumed } => {
                    assert_eq!(consumed, line.len() + 2);
                    assert!(consumed <= max);
                    assert_eq!(&buf[line.len()..consumed], b"\r\n");
                    assert!(!line.contains(&b'\r') && !line.contains(&b'\n'));
                    consumed
                }
                LineEvent::TooLong { consumed, .. } | LineEvent::BareNewline { consumed } => {
                    consumed
                }
            };
            assert!(used > 0 && used <= buf.len());
            buf.drain(..used);
        }
        assert!(buf.len() < max || reader.is_discarding());
    }
});
