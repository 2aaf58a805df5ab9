//! The DATA reader on arbitrary bytes cut into arbitrary chunks: never panics, consumes no
//! more than it was given, the verdict and output do not depend on the chunking, the output
//! never holds a bare LF, a NUL, or a CR not followed by LF (except a last CR while more input
//! is awaited), and only CRLF.CRLF (or "." CRLF as the first line) ends the message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mxgate::smtp::data::{DataReader, DataStatus};

/// Feeds the chunks; returns (output, consumed, done) or the error text.
fn feed(chunks: &[&[u8]]) -> Result<(Vec<u8>, usize, bool), String> {
    let mut r = DataReader::new();
    let mut out = Vec::new();
    let mut consumed = 0;
    for c in chunks {
        let p = r.feed(c, &mut out).map_err(|e| e.to_string())?;
        assert!(p.consumed <= c.len());
        consumed += p.consumed;
        if p.status == DataStatus::Done {
            return Ok((out, consumed, true));
        }
        assert_eq!(p.consumed, c.len());
    }
    Ok((out, consumed, false))
}

fuzz_target!(|input: &[u8]| {
    // The first byte chooses the cut points, the rest is the data.
    let (cuts, data) = match input.split_first() {
        Some((c, d)) => (*c, d),
        None => (0, input),
    };
    let step = usize::from(cuts % 16) + 1;
    let chunks: Vec<&[u8]> = data.chunks(step).collect();
    let whole = feed(&[data]);
    let split = feed(&chunks);
    assert_eq!(whole, split, "chunking changed the result");
    if let Ok((out, consumed, done)) = whole {
        assert!(consumed <= data.len());
        assert!(out.len() <= consumed);
        assert!(!out.contains(&0));
        for (i, &b) in out.iter().enumerate() {
            if b == b'\n' {
                assert!(i > 0 && out[i - 1] == b'\r', "bare LF in output at {i}");
            }
            if b == b'\r' {
                let last = i + 1 == out.len();
                assert!(
                    out.get(i + 1) == Some(&b'\n') || (last && !done),
                    "bare CR at {i}"
                );
            }
        }
        if done {
            let end = &data[..consumed];
            assert!(end == b".\r\n" || end.ends_with(b"\r\n.\r\n"));
        }
    }
});
