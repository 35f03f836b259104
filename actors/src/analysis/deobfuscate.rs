//! Removes common script obfuscation layers by rewriting the text until it stops changing.
//!
//! Each layer is a rewrite that replaces an encoded form with its constant value: base64 calls and
//! blobs, char-code lists, hex/unicode escapes, string concatenation, reversal, replace and format
//! tricks, PowerShell `-EncodedCommand`, and finally `eval`/`IEX` of a constant, whose argument
//! *is* code and is spliced in so the next pass can peel it. A pass applies every layer once; at
//! most `max_passes` passes run, and the text never grows beyond `max_len` (it is cut there), so
//! adversarial input costs at most passes x layers x regex scans of `max_len` bytes. Rewrites only
//! fold constants: nothing is executed, and a layer whose result is not clearly text is left as is.

use std::collections::BTreeMap;

use base64::alphabet::STANDARD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;
use regex::{Captures, Regex};

use super::deob_patterns::{self as pat, rx, LangRx};
use super::deob_strings as strs;
use super::indicators::Ind;
use super::literals::Lang;
use super::text::{bytes_as_text, clip, clip_in_place};
use crate::report::Indicator;

/// The result of deobfuscation.
#[derive(Debug, Clone, Default)]
pub struct Deobfuscated {
    pub text: String,
    /// How much of each significant layer was removed (see `significant`).
    pub layers: BTreeMap<&'static str, (Ind, usize)>,
    /// The text differs from the input (possibly through rewrites too minor to report).
    pub rewritten: bool,
}

impl Deobfuscated {
    /// At least one obfuscation layer was removed.
    pub fn changed(&self) -> bool {
        !self.layers.is_empty()
    }

    /// One indicator per layer that was removed.
    pub fn indicators(&self) -> Vec<Indicator> {
        self.layers
            .values()
            .map(|(ind, n)| ind.with(format!("{} ({n} removed)", describe(*ind))))
            .collect()
    }
}

fn describe(ind: Ind) -> &'static str {
    match ind {
        Ind::PowershellEncodedCommand => "PowerShell -EncodedCommand (base64 UTF-16LE) payload",
        Ind::ObfuscationBase64 => "Base64-encoded code or strings",
        Ind::ObfuscationFromCharCode => "String.fromCharCode character-code strings",
        Ind::ObfuscationCharCodes => "Strings built from character codes (Chr/[char]/chr)",
        Ind::ObfuscationHexEscapes => "Hex (\\xHH or %HH) escaped strings",
        Ind::ObfuscationUnicodeEscapes => "Unicode (\\uHHHH) escaped strings",
        Ind::ObfuscationStringConcat => "Strings split into concatenated pieces",
        Ind::ObfuscationStringReversal => "Reversed strings",
        Ind::ObfuscationStringReplace => "Strings padded with junk removed by replace/split",
        Ind::ObfuscationFormatString => "Strings reordered with the -f format operator",
        Ind::ObfuscationBacktick => "PowerShell backtick-escaped identifiers",
        Ind::EvalChain => "eval/Invoke-Expression/Execute of constant code",
        _ => "Obfuscation layer",
    }
}

const B64: GeneralPurpose = GeneralPurpose::new(
    &STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Decodes base64 that encodes text (UTF-8 or UTF-16LE), or `None`.
fn b64_text(s: &str) -> Option<String> {
    let trimmed = s.trim().trim_end_matches('=');
    let bytes = B64.decode(trimmed).ok()?;
    bytes_as_text(&bytes).filter(|t| t.chars().count() >= 4)
}

type Step = fn(&str, Lang, &LangRx) -> (String, usize);

/// Layers in the order a pass applies them (decoders before folders before `eval`).
const STEPS: &[(Ind, Step)] = &[
    (Ind::PowershellEncodedCommand, encoded_command),
    (Ind::ObfuscationBase64, b64_calls),
    (Ind::ObfuscationFromCharCode, char_codes),
    (Ind::ObfuscationHexEscapes, hex_escapes),
    (Ind::ObfuscationUnicodeEscapes, unicode_escapes),
    (Ind::ObfuscationHexEscapes, unescape_calls),
    (Ind::ObfuscationBacktick, strs::backticks),
    (Ind::ObfuscationFormatString, strs::format_operator),
    (Ind::ObfuscationStringReplace, strs::replaces),
    (Ind::ObfuscationStringReversal, strs::reverses),
    (Ind::ObfuscationStringReversal, strs::ps_array_reverse),
    (Ind::ObfuscationStringConcat, strs::concat),
    (Ind::ObfuscationBase64, b64_blobs),
    (Ind::EvalChain, evals),
];

/// How much of a layer must be seen before it counts as obfuscation. Ordinary code escapes a
/// few characters and joins a few literals; obfuscators do it wholesale. Below these counts the
/// rewrite still happens (it is harmless) but no indicator is raised.
fn significant(ind: Ind, count: usize) -> bool {
    let min = match ind {
        Ind::ObfuscationHexEscapes | Ind::ObfuscationUnicodeEscapes => 16,
        Ind::ObfuscationStringConcat => 4,
        Ind::ObfuscationFromCharCode | Ind::ObfuscationCharCodes => 3,
        Ind::ObfuscationBacktick => 2,
        _ => 1,
    };
    count >= min
}

/// Peels obfuscation layers off `input` (a script in `lang`).
pub fn deobfuscate(input: &str, lang: Lang, max_passes: usize, max_len: usize) -> Deobfuscated {
    let rx = rx(lang);
    let mut text = clip(input, max_len).to_string();
    let mut counts: BTreeMap<&'static str, (Ind, usize)> = BTreeMap::new();
    for _ in 0..max_passes {
        let mut changed = false;
        for (ind, step) in STEPS {
            let (new, n) = step(&text, lang, rx);
            if new == text {
                continue;
            }
            text = new;
            clip_in_place(&mut text, max_len);
            changed = true;
            // fromCharCode is the JavaScript spelling; other languages get the generic id.
            let ind = match (*ind, lang) {
                (Ind::ObfuscationFromCharCode, l) if l != Lang::Js => Ind::ObfuscationCharCodes,
                (i, _) => i,
            };
            counts.entry(ind.id()).or_insert((ind, 0)).1 += n;
        }
        if !changed {
            break;
        }
    }
    counts.retain(|_, (ind, n)| significant(*ind, *n));
    // `eval` of a constant is only a chain when something was decoded to feed it.
    if counts.len() == 1 && counts.contains_key(Ind::EvalChain.id()) {
        counts.clear();
    }
    let rewritten = text != clip(input, max_len);
    Deobfuscated { text, layers: counts, rewritten }
}

/// Applies `f` to every match of every regex; `f` returns `None` to keep a match unchanged.
pub(super) fn rewrite_all(
    text: &str,
    regexes: &[&Regex],
    mut f: impl FnMut(&Captures) -> Option<String>,
) -> (String, usize) {
    let mut out = text.to_string();
    let mut count = 0;
    for re in regexes {
        if !re.is_match(&out) {
            continue;
        }
        let replaced = re.replace_all(&out, |c: &Captures| match f(c) {
            Some(s) => {
                count += 1;
                s
            }
            None => c[0].to_string(),
        });
        out = replaced.into_owned();
    }
    (out, count)
}

pub(super) fn lit(c: &Captures, name: &str, lang: Lang) -> Option<String> {
    let raw = c.name(name)?.as_str();
    lang.unquote(raw)
}

fn encoded_command(text: &str, _: Lang, _: &LangRx) -> (String, usize) {
    let Some(re) = pat::ENCODED_COMMAND.as_ref() else {
        return (text.to_string(), 0);
    };
    rewrite_all(text, &[re], |c| {
        let decoded = b64_text(c.name("b64")?.as_str())?;
        let sep = c.name("sep").map_or("", |m| m.as_str());
        Some(format!("{sep}-Command {decoded}"))
    })
}

fn b64_calls(text: &str, lang: Lang, rx: &LangRx) -> (String, usize) {
    let regexes: Vec<&Regex> = rx.b64_calls.iter().collect();
    rewrite_all(text, &regexes, |c| {
        let raw = c.name("lit")?.as_str();
        let value = lang.unquote(raw).unwrap_or_else(|| raw.to_string());
        let bytes = B64.decode(value.trim().trim_end_matches('=')).ok()?;
        let decoded = match c.name("enc").map(|m| m.as_str().to_ascii_lowercase()) {
            Some(e) if e == "unicode" => {
                let units: Vec<u16> =
                    bytes.chunks_exact(2).map(|p| u16::from_le_bytes([p[0], p[1]])).collect();
                String::from_utf16(&units).ok()?
            }
            _ => bytes_as_text(&bytes)?,
        };
        // The shell pipeline's output is the decoded text itself, not a literal.
        Some(if lang == Lang::Other { decoded } else { lang.quote(&decoded) })
    })
}

fn chars_from_numbers(s: &str) -> Option<String> {
    let re = pat::NUMBER.as_ref()?;
    let mut out = String::new();
    for m in re.find_iter(s) {
        let n = m.as_str();
        let v = if let Some(h) = n.strip_prefix("0x").or_else(|| n.strip_prefix("0X")) {
            u32::from_str_radix(h, 16).ok()?
        } else if let Some(h) = n.strip_prefix("&h").or_else(|| n.strip_prefix("&H")) {
            u32::from_str_radix(h, 16).ok()?
        } else {
            n.parse().ok()?
        };
        out.push(char::from_u32(v)?);
    }
    (!out.is_empty()).then_some(out)
}

fn char_codes(text: &str, lang: Lang, rx: &LangRx) -> (String, usize) {
    let regexes: Vec<&Regex> = rx.char_codes.iter().collect();
    let mut long_chars = 0;
    let (out, _) = rewrite_all(text, &regexes, |c| {
        let nums = c.name("nums").map_or(&c[0], |m| m.as_str());
        let decoded = chars_from_numbers(nums)?;
        // One `chr(10)` is ordinary code; strings spelled out in codes are obfuscation.
        let n = decoded.chars().count();
        if n >= 3 {
            long_chars += n;
        }
        Some(lang.quote(&decoded))
    });
    (out, long_chars)
}

/// Decodes an escape run; quotes and backslashes stay escaped and control characters keep their
/// original escape, so the surrounding literal stays well-formed. Also returns how many escapes
/// were decoded.
fn decode_escapes(run: &str) -> (String, usize) {
    let mut out = String::with_capacity(run.len());
    let mut decoded_units = 0;
    for unit in split_escapes(run) {
        let decoded = super::literals::unescape_backslash(unit);
        // `\xHH` above 0x7F is a byte (Python bytes, Latin-1 data), left as written; `\u` may be
        // any printable character, but only ASCII counts towards "obfuscated" (code is ASCII).
        let hex = unit.starts_with("\\x");
        match decoded.chars().next() {
            Some(c)
                if decoded.chars().count() == 1 && !c.is_control() && (!hex || c.is_ascii()) =>
            {
                if matches!(c, '"' | '\'' | '\\' | '`') {
                    out.push('\\');
                }
                out.push(c);
                decoded_units += usize::from(c.is_ascii());
            }
            _ => out.push_str(unit),
        }
    }
    (out, decoded_units)
}

/// Splits `\x41\u0042` into `["\x41", "\u0042"]`.
fn split_escapes(run: &str) -> Vec<&str> {
    let starts: Vec<usize> = run.match_indices('\\').map(|(i, _)| i).collect();
    starts
        .iter()
        .enumerate()
        .map(|(k, &s)| &run[s..starts.get(k + 1).copied().unwrap_or(run.len())])
        .collect()
}

fn escapes(text: &str, lang: Lang, re: Option<&Regex>) -> (String, usize) {
    let Some(re) = re.filter(|_| matches!(lang, Lang::Js | Lang::Py | Lang::Other)) else {
        return (text.to_string(), 0);
    };
    let mut decoded_chars = 0;
    let (out, _) = rewrite_all(text, &[re], |c| {
        let (decoded, units) = decode_escapes(&c[0]);
        decoded_chars += units;
        (decoded != c[0]).then_some(decoded)
    });
    // Counted in characters, so that a lone `\x1b` weighs less than an encoded URL.
    (out, decoded_chars)
}

fn hex_escapes(text: &str, lang: Lang, _: &LangRx) -> (String, usize) {
    escapes(text, lang, pat::HEX_ESCAPES.as_ref())
}

fn unicode_escapes(text: &str, lang: Lang, _: &LangRx) -> (String, usize) {
    escapes(text, lang, pat::UNICODE_ESCAPES.as_ref())
}

/// JavaScript `unescape('%41%u0042')`: `%HH` bytes as Latin-1, `%uHHHH` as UTF-16 units.
fn percent_decode(s: &str) -> Option<String> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(h) = after.strip_prefix(['u', 'U']).and_then(|a| a.get(..4)) {
            out.push(char::from_u32(u32::from_str_radix(h, 16).ok()?)?);
            rest = &after[5..];
        } else if let Some(h) = after.get(..2) {
            out.push(char::from(u8::from_str_radix(h, 16).ok()?));
            rest = &after[2..];
        } else {
            return None;
        }
    }
    out.push_str(rest);
    Some(out)
}

fn unescape_calls(text: &str, lang: Lang, rx: &LangRx) -> (String, usize) {
    let regexes: Vec<&Regex> = rx.unescape_calls.iter().collect();
    rewrite_all(text, &regexes, |c| {
        let value = lit(c, "lit", lang)?;
        let decoded = percent_decode(&value)?;
        (decoded != value).then(|| lang.quote(&decoded))
    })
}

fn b64_blobs(text: &str, lang: Lang, _: &LangRx) -> (String, usize) {
    let Some(re) = pat::BASE64_BLOB.as_ref() else {
        return (text.to_string(), 0);
    };
    let mut out = String::with_capacity(text.len());
    let (mut last, mut count) = (0, 0);
    for m in re.find_iter(text) {
        let Some(decoded) = b64_text(m.as_str()) else {
            continue;
        };
        let before = text[..m.start()].chars().next_back();
        let after = text[m.end()..].chars().next();
        // A blob that is a whole literal becomes a literal of its text, keeping the syntax valid.
        let (start, end, replacement) = match (before, after) {
            // Inside atob(...)/FromBase64String(...) the call layer decodes it, call included.
            (Some('"' | '\''), _) if in_decode_call(&text[..m.start() - 1]) => continue,
            (Some(q @ ('"' | '\'')), Some(q2)) if q == q2 => {
                (m.start() - 1, m.end() + 1, lang.quote(&decoded))
            }
            _ => (m.start(), m.end(), decoded),
        };
        if start < last {
            continue;
        }
        out.push_str(&text[last..start]);
        out.push_str(&replacement);
        last = end;
        count += 1;
    }
    out.push_str(&text[last..]);
    (out, count)
}

/// True when `before` ends with the opening of a base64-decoding call.
fn in_decode_call(before: &str) -> bool {
    let t = before.trim_end();
    let t = t.strip_suffix('b').unwrap_or(t).trim_end();
    let Some(t) = t.strip_suffix('(') else {
        return false;
    };
    let t = t.trim_end().to_ascii_lowercase();
    ["atob", "b64decode", "frombase64string", "buffer.from"].iter().any(|n| t.ends_with(n))
}

fn evals(text: &str, lang: Lang, rx: &LangRx) -> (String, usize) {
    let regexes: Vec<&Regex> = rx.evals.iter().collect();
    rewrite_all(text, &regexes, |c| lit(c, "lit", lang))
}

#[cfg(test)]
#[path = "deobfuscate_tests.rs"]
mod tests;
