//! Deobfuscation layers that fold string literals: concatenation, reversal, replace and split
//! tricks, the PowerShell format operator, and PowerShell backtick noise.
//!
//! These layers match literals anywhere in the text, so they must not pair the closing quote of
//! one literal with the opening quote of the next (`'a' and '+'` in prose would "concatenate").
//! [`LiteralScanner`] follows the quoting along each line and rejects matches that start inside
//! a literal or a comment. Concatenation also refuses to fold when a neighbouring operator
//! binds tighter than `+` (`'-' + 'O' * n` is not `'-O' * n`).

use regex::Regex;

use super::deob_patterns::{self as pat, LangRx};
use super::deobfuscate::{lit, rewrite_all};
use super::literals::Lang;

/// Tracks whether a position is inside a string literal or a comment, judging from the start of
/// its line (literals here are single-line by construction). It only moves forward, so checking
/// every match of one scan costs one pass over the text, even on a single 1 MiB line.
pub struct LiteralScanner<'t> {
    text: &'t str,
    lang: Lang,
    pos: usize,
    quote: Option<char>,
    escaped: bool,
    comment: bool,
    prev: Option<char>,
}

impl<'t> LiteralScanner<'t> {
    pub fn new(text: &'t str, lang: Lang) -> Self {
        LiteralScanner {
            text,
            lang,
            pos: 0,
            quote: None,
            escaped: false,
            comment: false,
            prev: None,
        }
    }

    /// True when byte `target` (a char boundary) is outside literals and comments. Positions
    /// should not decrease; an earlier one restarts the scan from the top.
    pub fn outside(&mut self, target: usize) -> bool {
        if target < self.pos {
            *self = LiteralScanner::new(self.text, self.lang);
        }
        let Some(span) = self.text.get(self.pos..target) else { return false };
        for c in span.chars() {
            self.step(c);
        }
        self.pos = target;
        self.quote.is_none() && !self.comment
    }

    fn step(&mut self, c: char) {
        if c == '\n' {
            (self.quote, self.escaped, self.comment, self.prev) = (None, false, false, None);
            return;
        }
        if self.comment {
            return;
        }
        match self.quote {
            Some(_) if self.escaped => self.escaped = false,
            Some(q) => {
                self.escaped = match self.lang {
                    Lang::Js | Lang::Py | Lang::Other => c == '\\',
                    Lang::Ps => c == '`' && q == '"',
                    Lang::Vb => false,
                };
                if !self.escaped && c == q {
                    self.quote = None;
                }
            }
            None => match (c, self.lang) {
                ('\'', Lang::Vb) | ('#', Lang::Ps | Lang::Py | Lang::Other) => self.comment = true,
                ('/', Lang::Js) if self.prev == Some('/') => self.comment = true,
                ('"' | '\'', _) => self.quote = Some(c),
                _ => {}
            },
        }
        self.prev = Some(c);
    }
}

/// PowerShell reads a backtick before a letter as that letter (`I`E`X`), except inside
/// double-quoted strings where `` `n `t `0 ``... are escapes, and inside single-quoted strings
/// where a backtick is literal. Quote state resets at each newline so that a stray apostrophe
/// (in a comment, say) cannot flip the rest of the file.
pub fn backticks(text: &str, lang: Lang, _: &LangRx) -> (String, usize) {
    #[derive(PartialEq)]
    enum In {
        Code,
        Single,
        Double,
    }
    if lang != Lang::Ps || !text.contains('`') {
        return (text.to_string(), 0);
    }
    let mut out = String::with_capacity(text.len());
    let mut count = 0;
    let mut state = In::Code;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, &state) {
            ('\n', _) => state = In::Code,
            ('\'', In::Code) => state = In::Single,
            ('\'', In::Single) => state = In::Code,
            ('"', In::Code) => state = In::Double,
            ('"', In::Double) => state = In::Code,
            ('`', In::Code | In::Double) => {
                let next = chars.peek().copied();
                let special = next.is_some_and(|n| "0abefnrtuv".contains(n));
                if next.is_some_and(|n| n.is_ascii_alphabetic())
                    && !(special && state == In::Double)
                {
                    count += 1;
                    continue;
                }
                // Keep an escape pair intact so its second char is not read as a quote.
                out.push(c);
                if let Some(n) = chars.next() {
                    out.push(n);
                }
                continue;
            }
            _ => {}
        }
        out.push(c);
    }
    (out, count)
}

pub fn format_operator(text: &str, lang: Lang, rx: &LangRx) -> (String, usize) {
    let (Some(re), Some(lit_re)) = (rx.format.as_ref(), rx.lit.as_ref()) else {
        return (text.to_string(), 0);
    };
    rewrite_all(text, &[re], |c| {
        let fmt = lit(c, "fmt", lang)?;
        let args: Vec<String> = lit_re
            .find_iter(c.name("args")?.as_str())
            .map(|m| lang.unquote(m.as_str()))
            .collect::<Option<_>>()?;
        Some(lang.quote(&apply_format(&fmt, &args)?))
    })
}

/// .NET composite formatting restricted to `{N}`, `{{` and `}}`.
fn apply_format(fmt: &str, args: &[String]) -> Option<String> {
    let mut out = String::new();
    let mut chars = fmt.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                out.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                out.push('}');
            }
            '{' => {
                let mut idx = String::new();
                for d in chars.by_ref() {
                    if d == '}' {
                        break;
                    }
                    idx.push(d);
                }
                out.push_str(args.get(idx.trim().parse::<usize>().ok()?)?);
            }
            '}' => return None,
            c => out.push(c),
        }
    }
    Some(out)
}

pub fn replaces(text: &str, lang: Lang, rx: &LangRx) -> (String, usize) {
    let regexes: Vec<&Regex> = rx.replaces.iter().collect();
    rewrite_all(text, &regexes, |c| {
        let (s, a, b) = (lit(c, "s", lang)?, lit(c, "a", lang)?, lit(c, "b", lang)?);
        let lower = c[0].to_ascii_lowercase();
        let is_regex_op = lower.contains("-replace") || lower.contains("-creplace");
        if a.is_empty() || (is_regex_op && !a.chars().all(char::is_alphanumeric)) {
            return None;
        }
        let first_only = lang == Lang::Js && c.name("all").is_none() && !c[0].contains(".split");
        let replaced = if first_only { s.replacen(&a, &b, 1) } else { s.replace(&a, &b) };
        Some(lang.quote(&replaced))
    })
}

pub fn reverses(text: &str, lang: Lang, rx: &LangRx) -> (String, usize) {
    let regexes: Vec<&Regex> = rx.reverses.iter().collect();
    rewrite_all(text, &regexes, |c| {
        Some(lang.quote(&lit(c, "lit", lang)?.chars().rev().collect::<String>()))
    })
}

/// `$a = 'lit'.ToCharArray(); [array]::Reverse($a)`: reverses the literal, drops the call.
pub fn ps_array_reverse(text: &str, lang: Lang, _: &LangRx) -> (String, usize) {
    let (Some(assign), Some(call)) = (pat::PS_CHAR_ARRAY.as_ref(), pat::PS_ARRAY_REVERSE.as_ref())
    else {
        return (text.to_string(), 0);
    };
    if lang != Lang::Ps {
        return (text.to_string(), 0);
    }
    let Some(rev) = call.captures(text) else {
        return (text.to_string(), 0);
    };
    let (var, whole) = (rev["var"].to_string(), rev.get(0).map_or(0..0, |m| m.range()));
    let source = assign
        .captures_iter(&text[..whole.start])
        .filter(|c| c["var"].eq_ignore_ascii_case(&var))
        .last()
        .and_then(|c| c.name("lit1").or_else(|| c.name("lit2")));
    let Some(src) = source else {
        return (text.to_string(), 0);
    };
    let Some(value) = lang.unquote(src.as_str()) else {
        return (text.to_string(), 0);
    };
    let reversed = lang.quote(&value.chars().rev().collect::<String>());
    let out = format!(
        "{}{}{}{}",
        &text[..src.start()],
        reversed,
        &text[src.end()..whole.start],
        &text[whole.end..]
    );
    (out, 1)
}

pub fn concat(text: &str, lang: Lang, rx: &LangRx) -> (String, usize) {
    let Some(re) = rx.concat.as_ref() else {
        return (text.to_string(), 0);
    };
    let mut current = text.to_string();
    let mut split_pieces = 0;
    // Each round merges disjoint pairs, so a chain of n pieces needs about log2(n) rounds.
    for _ in 0..64 {
        let source = current.clone();
        let mut scanner = LiteralScanner::new(&source, lang);
        let (next, _) = rewrite_all(&source, &[re], |c| {
            let whole = c.get(0)?;
            let before = source[..whole.start()].trim_end().chars().next_back();
            let after = source[whole.end()..].trim_start().chars().next();
            let tighter = |ch: Option<char>| matches!(ch, Some('*' | '/' | '%' | '.' | '[' | '('));
            if tighter(before) || tighter(after) || !scanner.outside(whole.start()) {
                return None;
            }
            let (a, b) = (lit(c, "a", lang)?, lit(c, "b", lang)?);
            // Obfuscators cut strings into short pieces; ordinary code joins long ones.
            if a.chars().count().min(b.chars().count()) <= 4 {
                split_pieces += 1;
            }
            Some(lang.quote(&format!("{a}{b}")))
        });
        if next == current {
            break;
        }
        current = next;
    }
    (current, split_pieces)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::deob_patterns::rx;

    fn outside_string(text: &str, pos: usize, lang: Lang) -> bool {
        LiteralScanner::new(text, lang).outside(pos)
    }

    #[test]
    fn string_and_comment_state() {
        let t = "say 'it' + 'x' // 'a' + 'b'";
        assert!(outside_string(t, 4, Lang::Js));
        assert!(!outside_string(t, 7, Lang::Js), "closing quote of 'it' opens nothing");
        assert!(!outside_string(t, 18, Lang::Js), "inside a // comment");
        assert!(!outside_string("x = 1 ' comment \"a\"", 17, Lang::Vb));
        assert!(!outside_string("# 'a' + 'b'", 2, Lang::Py));
        assert!(outside_string("a\n'b'", 2, Lang::Js), "state resets per line");
    }

    #[test]
    fn concat_refuses_prose_and_tighter_operators() {
        let prose = "uses '-' instead of '+' and '_' instead of";
        assert_eq!(concat(prose, Lang::Py, rx(Lang::Py)).0, prose);
        let precedence = "args.append('-' + 'O' * value)";
        assert_eq!(concat(precedence, Lang::Py, rx(Lang::Py)).0, precedence);
        let (folded, short) = concat("'Do'+'wn'+'load'", Lang::Ps, rx(Lang::Ps));
        assert_eq!(folded, "'Download'");
        assert!(short >= 2);
        let (_, long) =
            concat("\"a long sentence \" + \"and another one\"", Lang::Js, rx(Lang::Js));
        assert_eq!(long, 0, "joining long literals is ordinary code");
    }
}
