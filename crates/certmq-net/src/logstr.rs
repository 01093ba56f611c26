//! Client-supplied strings in logs: truncated and escaped, so that a
//! client can neither flood the log with a 64 KiB client id nor forge a
//! line (a client id holding `listening protocol=admin-http addr=...`
//! must not look like the start-up line scripts read).

use std::fmt;

/// Characters kept from an untrusted string in a log line.
const KEEP: usize = 64;

/// Displays an untrusted string for a log: at most 64 characters, with
/// anything but letters, digits and `-_.:/+#$@` escaped as `\u{..}` (so no
/// space, `=`, quote or line break gets through), and the length noted
/// when cut.
pub struct LogStr<'a>(pub &'a str);

impl fmt::Display for LogStr<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars().take(KEEP) {
            if c.is_ascii_alphanumeric() || "-_.:/+#$@".contains(c) {
                write!(f, "{c}")?;
            } else {
                write!(f, "\\u{{{:x}}}", u32::from(c))?;
            }
        }
        if self.0.chars().nth(KEEP).is_some() {
            write!(f, "...({} bytes)", self.0.len())?;
        }
        Ok(())
    }
}

/// An untrusted string kept in memory (rejection records): at most 256
/// bytes, cut at a character boundary.
pub fn bounded(s: &str) -> String {
    let mut end = s.len().min(256);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forged_lines_and_floods_are_neutralised() {
        let forged = "x listening protocol=admin-http addr=1.2.3.4:5\nINFO";
        let shown = LogStr(forged).to_string();
        assert!(!shown.contains("listening protocol="), "{shown}");
        assert!(!shown.contains('\n') && !shown.contains(' ') && !shown.contains('='));
        let long = "a".repeat(65_536);
        let shown = LogStr(&long).to_string();
        assert!(shown.len() < 100, "{}", shown.len());
        assert!(shown.ends_with("(65536 bytes)"));
        assert_eq!(bounded(&"é".repeat(200)).len(), 256);
    }
}
