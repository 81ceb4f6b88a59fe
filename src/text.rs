//! Text from outside (file names, paths, messages that quote them) made safe to show: the
//! CLI prints errors to a terminal and the app draws them, and a file name can hold escape
//! sequences or bidirectional overrides.

/// `text` with every control or bidirectional-override character but the line break written
/// as an escape (`\x1b`, `\u{9b}`, `\u{202e}`), so that printing it cannot move the cursor,
/// recolour the terminal or reorder what follows. Idempotent: its output holds no character
/// it would escape.
pub fn escape_control(text: &str) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let bidi = matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
        if c == '\n' || !(c.is_control() || bidi) {
            out.push(c);
        } else if (c as u32) < 0x80 {
            let _ = write!(out, "\\x{:02x}", c as u32);
        } else {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_but_line_breaks_kept() {
        let escaped = escape_control("a\x1b[31mb\tc\u{9b}d\u{202e}e\nf");
        assert_eq!(escaped, "a\\x1b[31mb\\x09c\\u{9b}d\\u{202e}e\nf");
        // Escaping twice changes nothing: a text may pass through more than one display.
        assert_eq!(escape_control(&escaped), escaped);
    }
}
