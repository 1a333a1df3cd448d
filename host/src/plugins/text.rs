//! Text from guests, made safe to log and to report.
//!
//! A guest chooses every byte of its error strings, log messages and stdout: newlines that
//! would forge host log lines, terminal escape sequences, bidirectional overrides, megabytes.
//! This module owns the two rules applied to all of it before it leaves the plugin module:
//! cut to a byte limit on a character boundary (saying how much was cut), and every control or
//! formatting character written as a visible escape. It must not decide the limits.

use std::fmt::Write;

/// `text` cut to at most `max` bytes (plus a note of what was cut), with control characters
/// escaped. One line out, whatever came in.
pub(super) fn sanitize(text: &str, max: usize) -> String {
    let kept = cut(text, max);
    let mut out = String::with_capacity(kept.len() + 16);
    for c in kept.chars() {
        if needs_escape(c) {
            match c {
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                other => {
                    let _ = write!(out, "\\u{{{:x}}}", other as u32);
                }
            }
        } else {
            out.push(c);
        }
    }
    if kept.len() < text.len() {
        let _ = write!(out, "… ({} more bytes cut)", text.len() - kept.len());
    }
    out
}

/// The longest prefix of `text` of at most `max` bytes that ends on a character boundary.
pub(super) fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Control characters (C0, DEL, C1) and the invisible formatting characters that reorder or
/// hide text on a terminal (bidirectional overrides and isolates, zero-width joiners).
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newlines_and_escapes_cannot_forge_lines() {
        let forged = "ok\n2026-01-01T00:00:00Z  INFO busbar: admin logged in\r\x1b[2J\u{202e}";
        assert_eq!(
            sanitize(forged, 1000),
            "ok\\n2026-01-01T00:00:00Z  INFO busbar: admin logged in\\r\\u{1b}[2J\\u{202e}"
        );
    }

    #[test]
    fn long_text_is_cut_on_a_character_boundary() {
        assert_eq!(sanitize("ééé", 3), "é… (4 more bytes cut)");
        assert_eq!(cut("abc", 10), "abc");
        assert_eq!(sanitize("plain text", 100), "plain text");
    }
}
