//! Strings that come from clients: how they reach a log, and how they are
//! prepared before they are compared or hashed.
//!
//! - [`LogSafe`] (and [`LogSafeBytes`] for bytes that may not be UTF-8)
//!   displays a client-supplied string (USERNAME, REALM, SOFTWARE, ...) with
//!   every control character escaped, so it cannot forge a log line: tracing's
//!   text format escapes ESC and C1 controls, not CR and LF.
//! - [`opaque_string`] enforces the PRECIS OpaqueString profile (RFC 8265,
//!   section 4.2) that RFC 8489 requires for USERNAME and passwords (sections
//!   14.3 and 9.2.2).
//!
//! Sans-IO: nothing here logs or reads a clock.

use std::borrow::Cow;
use std::fmt::{self, Write as _};

/// Displays a client-supplied string for a log, escaping what could forge or
/// hide log content.
///
/// Escaped: the backslash (`\\`, so an escape cannot be faked), C0 controls
/// (`\n`, `\r`, `\t`, others as `\u{1b}`), DEL and C1 controls
/// (U+0080-U+009F), the line and paragraph separators U+2028 and U+2029, and
/// the bidirectional controls (U+061C, U+200E, U+200F, U+202A-U+202E,
/// U+2066-U+2069) that can reorder what a reader sees. Everything else is
/// written as is. Writes without allocating.
///
/// ```
/// use turnd::untrusted::LogSafe;
/// assert_eq!(LogSafe("alice\nINFO forged").to_string(), r"alice\nINFO forged");
/// ```
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct LogSafe<'a>(pub &'a str);

/// The escape for `c`, or `None` when it is written as is.
fn escape(c: char) -> Option<Escape> {
    Some(match c {
        '\\' => Escape::Short('\\'),
        '\n' => Escape::Short('n'),
        '\r' => Escape::Short('r'),
        '\t' => Escape::Short('t'),
        '\u{2028}' | '\u{2029}' | '\u{061c}' | '\u{200e}' | '\u{200f}' => Escape::Code(c),
        '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' => Escape::Code(c),
        c if c.is_control() => Escape::Code(c), // C0, DEL, C1
        _ => return None,
    })
}

enum Escape {
    /// `\` and this letter.
    Short(char),
    /// `\u{hex}`.
    Code(char),
}

fn write_escaped(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    let mut clean = 0;
    for (i, c) in s.char_indices() {
        if let Some(e) = escape(c) {
            f.write_str(&s[clean..i])?;
            match e {
                Escape::Short(l) => {
                    f.write_char('\\')?;
                    f.write_char(l)?;
                }
                Escape::Code(c) => write!(f, "\\u{{{:x}}}", u32::from(c))?,
            }
            clean = i + c.len_utf8();
        }
    }
    f.write_str(&s[clean..])
}

impl fmt::Display for LogSafe<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_escaped(f, self.0)
    }
}

impl fmt::Debug for LogSafe<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_char('"')?;
        write_escaped(f, self.0)?;
        f.write_char('"')
    }
}

/// [`LogSafe`] for bytes that should be UTF-8 but come from the wire: valid
/// UTF-8 is displayed as [`LogSafe`] does, each invalid byte as `\xNN`.
///
/// ```
/// use turnd::untrusted::LogSafeBytes;
/// assert_eq!(LogSafeBytes(b"bob\r\n\xff").to_string(), r"bob\r\n\xff");
/// ```
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct LogSafeBytes<'a>(pub &'a [u8]);

impl fmt::Display for LogSafeBytes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for chunk in self.0.utf8_chunks() {
            write_escaped(f, chunk.valid())?;
            for b in chunk.invalid() {
                write!(f, "\\x{b:02x}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for LogSafeBytes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

/// A string that the PRECIS OpaqueString profile (RFC 8265, section 4.2)
/// refuses: empty, or with a code point the FreeformClass disallows (control
/// characters, unassigned code points, ...). A USERNAME that fails it gets
/// 400 Bad Request (RFC 8489, section 14.3).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("string refused by the PRECIS OpaqueString profile (RFC 8265 section 4.2): {0}")]
pub struct PrecisError(precis_core::Error);

/// Enforces the PRECIS OpaqueString profile (RFC 8265, section 4.2) on `s`:
/// non-ASCII spaces become U+0020, the result is normalised to NFC, and it
/// must be non-empty and hold only FreeformClass code points (RFC 8264). No
/// width or case mapping: fullwidth letters stay fullwidth.
///
/// Apply it to USERNAME (RFC 8489, section 14.3) and to passwords (sections
/// 9.2.2) before they are compared or hashed into a long-term
/// key; apply it to configured user names and passwords too, so both sides
/// match. Returns `s` borrowed when it was already in the profile's form.
///
/// # Errors
/// [`PrecisError`] when `s` is empty (after mapping) or holds a disallowed
/// code point, such as a control character (`"a\nb"`).
pub fn opaque_string(s: &str) -> Result<Cow<'_, str>, PrecisError> {
    use precis_core::profile::PrecisFastInvocation;
    precis_profiles::OpaqueString::enforce(s).map_err(PrecisError)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use std::sync::{Arc, Mutex};

    /// What a tracing text subscriber writes while `f` runs.
    fn logged(f: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let out = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || out.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let bytes = buf.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    /// Issue 10: a USERNAME with `\n` forged a second line in the text log.
    #[test]
    fn a_username_cannot_forge_a_log_line() {
        for username in [
            "mallory\n2026-12-05T18:00:00Z  INFO turnd: admin logged in",
            "mallory\r\u{2028}x\u{85}y",
        ] {
            let text = logged(|| tracing::info!(username = %LogSafe(username), "401"));
            assert_eq!(text.lines().count(), 1, "{text:?}");
            assert!(
                !text.contains('\r') && !text.contains('\u{2028}'),
                "{text:?}"
            );
        }
    }

    #[test]
    fn controls_are_escaped_and_the_rest_kept() {
        let cases = [
            ("alice", "alice"),
            ("", ""),
            ("a\nb", r"a\nb"),
            ("a\r\n", r"a\r\n"),
            ("tab\there", r"tab\there"),
            ("back\\slash", r"back\\slash"),
            ("\u{1b}[31mred", r"\u{1b}[31mred"),
            ("nul\0", r"nul\u{0}"),
            ("del\u{7f}", r"del\u{7f}"),
            ("c1\u{85}\u{9b}", r"c1\u{85}\u{9b}"),
            ("ls\u{2028}ps\u{2029}", r"ls\u{2028}ps\u{2029}"),
            ("bidi\u{202e}txt.exe", r"bidi\u{202e}txt.exe"),
            ("\u{2066}iso\u{2069}", r"\u{2066}iso\u{2069}"),
            ("ünïcødé ☠ 用户", "ünïcødé ☠ 用户"),
        ];
        for (raw, shown) in cases {
            assert_eq!(LogSafe(raw).to_string(), shown, "{raw:?}");
            assert_eq!(LogSafeBytes(raw.as_bytes()).to_string(), shown, "{raw:?}");
        }
        assert_eq!(format!("{:?}", LogSafe("a\"\n")), "\"a\"\\n\"");
        assert_eq!(
            LogSafeBytes(b"\xff\xfeok\n\xc3").to_string(),
            r"\xff\xfeok\n\xc3"
        );
        // No control character survives, whatever the input.
        let all: String = (0u32..0x3000).filter_map(char::from_u32).collect();
        let shown = LogSafe(&all).to_string();
        assert!(!shown
            .chars()
            .any(|c| c.is_control() || matches!(c, '\u{2028}' | '\u{2029}')));
    }

    #[test]
    fn opaque_string_enforces_rfc8265_4_2() {
        // Unchanged: borrowed.
        assert!(matches!(opaque_string("alice"), Ok(Cow::Borrowed("alice"))));
        assert_eq!(
            opaque_string("Guybrush Threepwood ☠").unwrap(),
            "Guybrush Threepwood ☠"
        );
        // NFC: "e" + COMBINING ACUTE ACCENT becomes U+00E9.
        assert_eq!(opaque_string("caf\u{65}\u{301}").unwrap(), "caf\u{e9}");
        // Non-ASCII spaces become SPACE.
        assert_eq!(opaque_string("a\u{a0}b\u{3000}c").unwrap(), "a b c");
        // No width or case mapping.
        assert_eq!(opaque_string("ＡＢｃ").unwrap(), "ＡＢｃ");
        assert_eq!(opaque_string("Alice").unwrap(), "Alice");
        // Refused: empty, controls, unassigned code points.
        for bad in [
            "",
            "a\nb",
            "a\rb",
            "tab\t",
            "nul\0",
            "esc\u{1b}",
            "c1\u{85}",
            "ls\u{2028}",
            "rlo\u{202e}",
            "\u{e0001}x",
        ] {
            assert!(opaque_string(bad).is_err(), "{bad:?}");
        }
        let e = opaque_string("a\nb").unwrap_err().to_string();
        assert!(e.contains("OpaqueString"), "{e}");
    }
}
