//! String literals of the script languages the deobfuscator rewrites.
//!
//! Each language quotes differently: JavaScript and Python escape with backslashes, PowerShell
//! doubles single quotes and escapes with backticks (and interpolates `$` in double quotes, which
//! is why double-quoted literals containing `$` are not treated as constants), VBScript doubles
//! double quotes. Literals are single-line only: a stray apostrophe in a comment can then
//! mis-pair quotes on one line at most, never across the whole file.

use crate::report::FileType;

/// Quoting family of a script language.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lang {
    Js,
    Ps,
    Vb,
    Py,
    /// Shell and batch: only language-neutral layers (base64, escapes) apply.
    Other,
}

impl Lang {
    pub fn of(ty: FileType) -> Lang {
        match ty {
            FileType::JavaScript => Lang::Js,
            FileType::PowerShell => Lang::Ps,
            FileType::VbScript => Lang::Vb,
            FileType::Python => Lang::Py,
            _ => Lang::Other,
        }
    }

    /// Regex source matching one literal, quotes included, with no capture groups.
    pub fn literal(self) -> &'static str {
        match self {
            Lang::Js | Lang::Py | Lang::Other => {
                r#"(?:"(?:[^"\\\r\n]|\\.)*"|'(?:[^'\\\r\n]|\\.)*')"#
            }
            Lang::Ps => r#"(?:'(?:[^'\r\n]|'')*'|"(?:[^"`$\r\n]|`.|"")*")"#,
            Lang::Vb => r#"(?:"(?:[^"\r\n]|"")*")"#,
        }
    }

    /// The value of a literal token (quotes included), or `None` if it is not one.
    pub fn unquote(self, lit: &str) -> Option<String> {
        let q = lit.chars().next().filter(|c| *c == '"' || *c == '\'')?;
        let inner = lit.strip_prefix(q)?.strip_suffix(q)?;
        Some(match self {
            Lang::Js | Lang::Py | Lang::Other => unescape_backslash(inner),
            Lang::Ps if q == '\'' => inner.replace("''", "'"),
            Lang::Ps => unescape_backtick(inner),
            Lang::Vb => inner.replace("\"\"", "\""),
        })
    }

    /// A literal with this value, in the language's plainest quoting.
    pub fn quote(self, value: &str) -> String {
        match self {
            Lang::Ps => format!("'{}'", value.replace('\'', "''")),
            Lang::Vb => format!("\"{}\"", value.replace('"', "\"\"")),
            Lang::Js | Lang::Py | Lang::Other => {
                let mut out = String::with_capacity(value.len() + 2);
                out.push('"');
                for c in value.chars() {
                    match c {
                        '"' => out.push_str("\\\""),
                        '\\' => out.push_str("\\\\"),
                        '\n' => out.push_str("\\n"),
                        '\r' => out.push_str("\\r"),
                        '\t' => out.push_str("\\t"),
                        c if (c as u32) < 0x20 => out.push_str(&format!("\\x{:02x}", c as u32)),
                        c => out.push(c),
                    }
                }
                out.push('"');
                out
            }
        }
    }
}

fn hex_char(digits: &str) -> Option<char> {
    u32::from_str_radix(digits, 16).ok().and_then(char::from_u32)
}

/// JavaScript/Python escapes: `\n \t \r \b \f \v \0 \xHH \uHHHH \u{H..}`, others as the char.
pub fn unescape_backslash(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        let Some((j, e)) = chars.next() else {
            out.push('\\');
            break;
        };
        debug_assert_eq!(j, i + 1);
        let rest = &s[j + e.len_utf8()..];
        let (decoded, skip) = match e {
            'n' => (Some('\n'), 0),
            't' => (Some('\t'), 0),
            'r' => (Some('\r'), 0),
            'b' => (Some('\u{8}'), 0),
            'f' => (Some('\u{c}'), 0),
            'v' => (Some('\u{b}'), 0),
            '0' => (Some('\0'), 0),
            'x' => (rest.get(..2).and_then(hex_char), 2),
            'u' if rest.starts_with('{') => match rest.find('}') {
                Some(end) if end <= 7 => (hex_char(&rest[1..end]), end + 1),
                _ => (None, 0),
            },
            'u' => (rest.get(..4).and_then(hex_char), 4),
            other => (Some(other), 0),
        };
        match decoded {
            Some(d) => {
                out.push(d);
                for _ in 0..skip {
                    chars.next();
                }
            }
            None => {
                out.push('\\');
                out.push(e);
            }
        }
    }
    out
}

/// PowerShell double-quoted escapes: `` `n `r `t `0 `a `b `e `f `v `` and `""`.
fn unescape_backtick(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '`' => match chars.next() {
                Some('n') => out.push('\n'),
                Some('r') => out.push('\r'),
                Some('t') => out.push('\t'),
                Some('0') => out.push('\0'),
                Some('a') => out.push('\u{7}'),
                Some('b') => out.push('\u{8}'),
                Some('e') => out.push('\u{1b}'),
                Some('f') => out.push('\u{c}'),
                Some('v') => out.push('\u{b}'),
                Some(other) => out.push(other),
                None => out.push('`'),
            },
            '"' if chars.peek() == Some(&'"') => {
                chars.next();
                out.push('"');
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for lang in [Lang::Js, Lang::Ps, Lang::Vb, Lang::Py, Lang::Other] {
            for value in ["plain", "it's \"quoted\"", "back\\slash", "line\nbreak", ""] {
                let lit = lang.quote(value);
                let re = regex::Regex::new(&format!("^{}$", lang.literal()));
                let single_line =
                    !value.contains('\n') || matches!(lang, Lang::Js | Lang::Py | Lang::Other);
                if single_line {
                    assert!(re.is_ok_and(|r| r.is_match(&lit)), "{lang:?} {lit}");
                }
                assert_eq!(lang.unquote(&lit).as_deref(), Some(value), "{lang:?} {lit}");
            }
        }
    }

    #[test]
    fn escapes() {
        assert_eq!(unescape_backslash(r"\x41\u0042\u{43}\n\q\"), "ABC\nq\\");
        assert_eq!(unescape_backslash(r"\xZZ"), r"\xZZ");
        assert_eq!(unescape_backslash("\\é\\"), "é\\", "a multibyte escaped char");
        assert_eq!(Lang::Ps.unquote("\"a`tb\"\"c\""), Some("a\tb\"c".into()));
        assert_eq!(Lang::Ps.unquote("'it''s'"), Some("it's".into()));
        assert_eq!(Lang::Vb.unquote("\"say \"\"hi\"\"\""), Some("say \"hi\"".into()));
        assert_eq!(Lang::Js.unquote("noquote"), None);
    }
}
