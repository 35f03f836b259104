//! The regexes behind each deobfuscation layer, per script language.
//!
//! Patterns are written once as templates where `LIT` stands for the language's string literal
//! (see `literals`), then compiled once per language on first use. A pattern that fails to compile
//! is dropped rather than crashing the analyzer; a unit test keeps every pattern compiling.

use std::sync::LazyLock;

use regex::Regex;

use super::literals::Lang;

const NUM: &str = r"(?:0[xX][0-9a-fA-F]+|&[hH][0-9a-fA-F]+|\d+)";

/// Compiled patterns for one language. Capture names: `lit` (a literal), `nums` (a number
/// list), `a`/`b`/`s` (replace operands), `fmt`/`args` (format operator), `enc` (text encoding).
pub struct LangRx {
    pub lit: Option<Regex>,
    pub concat: Option<Regex>,
    pub evals: Vec<Regex>,
    pub b64_calls: Vec<Regex>,
    pub char_codes: Vec<Regex>,
    pub unescape_calls: Vec<Regex>,
    pub replaces: Vec<Regex>,
    pub reverses: Vec<Regex>,
    pub format: Option<Regex>,
}

fn compile(template: &str, lang: Lang) -> Option<Regex> {
    super::text::regex(&template.replace("LIT", lang.literal()).replace("NUM", NUM))
}

fn all(templates: &[&str], lang: Lang) -> Vec<Regex> {
    templates.iter().filter_map(|t| compile(t, lang)).collect()
}

/// Pattern templates per language: (evals, base64 calls, char codes, unescape, replaces,
/// reverses, concat operator, format).
pub struct Templates {
    pub evals: &'static [&'static str],
    pub b64_calls: &'static [&'static str],
    pub char_codes: &'static [&'static str],
    pub unescape_calls: &'static [&'static str],
    pub replaces: &'static [&'static str],
    pub reverses: &'static [&'static str],
    pub concat_op: Option<&'static str>,
    pub format: Option<&'static str>,
}

pub fn templates(lang: Lang) -> Templates {
    match lang {
        Lang::Js => Templates {
            evals: &[
                r"\b(?:eval|Function)\s*\(\s*(?P<lit>LIT)\s*\)(?:\s*\(\s*\))?",
                r"\bnew\s+Function\s*\(\s*(?P<lit>LIT)\s*\)(?:\s*\(\s*\))?",
            ],
            b64_calls: &[
                r"\batob\s*\(\s*(?P<lit>LIT)\s*\)",
                concat!(
                    r#"\bBuffer\.from\s*\(\s*(?P<lit>LIT)\s*,\s*['"]base64['"]\s*\)(?:\.toStr"#,
                    r#"ing\(\s*(?:['"][\w-]+['"])?\s*\))?"#,
                ),
            ],
            char_codes: &[
                r"\bString\.fromCharCode\s*\(\s*(?P<nums>NUM(?:\s*,\s*NUM)*)\s*\)",
                concat!(
                    r"\bString\.fromCharCode\.apply\s*\(\s*(?:null|this|String|",
                    r"undefined)?\s*,\s*\[\s*(?P<nums>NUM(?:\s*,\s*NUM)*)\s*\]\s*\)",
                ),
            ],
            unescape_calls: &[
                r"\b(?:unescape|decodeURIComponent|decodeURI)\s*\(\s*(?P<lit>LIT)\s*\)",
            ],
            replaces: &[
                r"(?P<s>LIT)\s*\.replace(?P<all>All)?\(\s*(?P<a>LIT)\s*,\s*(?P<b>LIT)\s*\)",
                r"(?P<s>LIT)\s*\.split\(\s*(?P<a>LIT)\s*\)\s*\.join\(\s*(?P<b>LIT)\s*\)",
            ],
            reverses: &[concat!(
                r#"(?P<lit>LIT)\s*\.split\(\s*(?:""|"#,
                r#"'')\s*\)\s*\.reverse\(\s*\)\s*\.join\(\s*(?:""|'')\s*\)"#,
            )],
            concat_op: Some(r"\+"),
            format: None,
        },
        Lang::Ps => Templates {
            evals: &[
                r"(?i)\b(?:iex|invoke-expression)\s*\(\s*(?P<lit>LIT)\s*\)",
                r"(?i)\b(?:iex|invoke-expression)\s+(?P<lit>LIT)",
                r"(?i)(?P<lit>LIT)\s*\|\s*(?:iex|invoke-expression)\b",
            ],
            b64_calls: &[
                concat!(
                    r"(?i)\[(?:System\.)?Text\.Encoding\]::(?P<enc>\w+)\.GetString\(\s*\[(?:Sy",
                    r"stem\.)?Convert\]::FromBase64String\(\s*(?P<lit>LIT)\s*\)\s*\)",
                ),
                r"(?i)\[(?:System\.)?Convert\]::FromBase64String\(\s*(?P<lit>LIT)\s*\)",
            ],
            char_codes: &[
                r"(?i)\[char\]\s*NUM(?:\s*\+\s*\[char\]\s*NUM)*",
                r#"(?i)\[char\[\]\]\s*\(\s*(?P<nums>NUM(?:\s*,\s*NUM)*)\s*\)\s*-join\s*(?:''|"")"#,
                r"(?i)-join\s*\[char\[\]\]\s*\(\s*(?P<nums>NUM(?:\s*,\s*NUM)*)\s*\)",
            ],
            unescape_calls: &[],
            replaces: &[
                r"(?i)(?P<s>LIT)\s*\.replace\(\s*(?P<a>LIT)\s*,\s*(?P<b>LIT)\s*\)",
                r"(?i)(?P<s>LIT)\s*-c?replace\s*(?P<a>LIT)\s*,\s*(?P<b>LIT)",
            ],
            reverses: &[
                r"(?i)-join\s*\(\s*(?P<lit>LIT)\s*\)\s*\[\s*-1\s*\.\.\s*-[^\]\r\n]{1,40}\]",
                r"(?i)-join\s*(?P<lit>LIT)\s*\[\s*-1\s*\.\.\s*-[^\]\r\n]{1,40}\]",
                concat!(
                    r#"(?i)\(\s*(?P<lit>LIT)\s*\)\s*\[\s*-1\s*\.\.\s*-[^\]\r\n]{1,40}\]\s*-jo"#,
                    r#"in\s*(?:''|"")"#,
                ),
            ],
            concat_op: Some(r"\+"),
            format: Some(r"(?i)\(\s*(?P<fmt>LIT)\s*-f\s*(?P<args>LIT(?:\s*,\s*LIT)*)\s*\)"),
        },
        Lang::Vb => Templates {
            evals: &[
                r"(?i)\b(?:execute|executeglobal|eval)\s*\(\s*(?P<lit>LIT)\s*\)",
                r"(?i)\b(?:execute|executeglobal)\s+(?P<lit>LIT)",
            ],
            b64_calls: &[],
            char_codes: &[r"(?i)\bChrW?\s*\(\s*NUM\s*\)(?:\s*[&+]\s*ChrW?\s*\(\s*NUM\s*\))*"],
            unescape_calls: &[],
            replaces: &[r"(?i)\bReplace\s*\(\s*(?P<s>LIT)\s*,\s*(?P<a>LIT)\s*,\s*(?P<b>LIT)\s*\)"],
            reverses: &[r"(?i)\bStrReverse\s*\(\s*(?P<lit>LIT)\s*\)"],
            concat_op: Some(r"[&+]"),
            format: None,
        },
        Lang::Py => Templates {
            evals: &[r"\b(?:exec|eval)\s*\(\s*(?P<lit>LIT)\s*\)"],
            b64_calls: &[concat!(
                r#"\bbase64\.b64decode\s*\(\s*b?(?P<lit>LIT)\s*\)(?:\.decode\(\s*(?:['"]["#,
                r#"\w-]+['"])?\s*\))?"#,
            )],
            char_codes: &[
                r"\bchr\s*\(\s*NUM\s*\)(?:\s*\+\s*chr\s*\(\s*NUM\s*\))*",
                concat!(
                    r#"(?:''|"#,
                    r#""")\.join\(\s*map\(\s*chr\s*,\s*\[\s*(?P<nums>NUM(?:\s*,\s*NUM)*)\s*\]"#,
                    r#"\s*\)\s*\)"#,
                ),
                concat!(
                    r#"(?:''|"#,
                    r#""")\.join\(\s*\[?\s*chr\(\s*\w+\s*\)\s+for\s+\w+\s+in\s+\[\s*(?P<nums>"#,
                    r#"NUM(?:\s*,\s*NUM)*)\s*\]\s*\]?\s*\)"#,
                ),
            ],
            unescape_calls: &[],
            replaces: &[r"(?P<s>LIT)\s*\.replace\(\s*(?P<a>LIT)\s*,\s*(?P<b>LIT)\s*\)"],
            reverses: &[r"(?P<lit>LIT)\s*\[\s*::\s*-1\s*\]"],
            concat_op: Some(r"\+"),
            format: None,
        },
        Lang::Other => Templates {
            evals: &[],
            b64_calls: &[concat!(
                r"(?:echo|printf)\s+(?:-[ne]+\s+)?(?P<lit>LIT|[A-Za-z0-9+/=]{8,})\s*\|",
                r"\s*base64\s+(?:-d|--decode|-D)\b",
            )],
            char_codes: &[],
            unescape_calls: &[],
            replaces: &[],
            reverses: &[],
            concat_op: None,
            format: None,
        },
    }
}

impl LangRx {
    fn new(lang: Lang) -> Self {
        let t = templates(lang);
        LangRx {
            lit: compile("LIT", lang),
            concat: t
                .concat_op
                .and_then(|op| compile(&format!(r"(?P<a>LIT)\s*{op}\s*(?P<b>LIT)"), lang)),
            evals: all(t.evals, lang),
            b64_calls: all(t.b64_calls, lang),
            char_codes: all(t.char_codes, lang),
            unescape_calls: all(t.unescape_calls, lang),
            replaces: all(t.replaces, lang),
            reverses: all(t.reverses, lang),
            format: t.format.and_then(|f| compile(f, lang)),
        }
    }
}

static JS: LazyLock<LangRx> = LazyLock::new(|| LangRx::new(Lang::Js));
static PS: LazyLock<LangRx> = LazyLock::new(|| LangRx::new(Lang::Ps));
static VB: LazyLock<LangRx> = LazyLock::new(|| LangRx::new(Lang::Vb));
static PY: LazyLock<LangRx> = LazyLock::new(|| LangRx::new(Lang::Py));
static OTHER: LazyLock<LangRx> = LazyLock::new(|| LangRx::new(Lang::Other));

/// The compiled patterns for `lang`.
pub fn rx(lang: Lang) -> &'static LangRx {
    match lang {
        Lang::Js => &JS,
        Lang::Ps => &PS,
        Lang::Vb => &VB,
        Lang::Py => &PY,
        Lang::Other => &OTHER,
    }
}

/// Numbers in a char-code list: decimal, `0x` hex (JavaScript, PowerShell) or `&H` hex (VB).
pub static NUMBER: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r"0[xX][0-9a-fA-F]+|&[hH][0-9a-fA-F]+|\d+").ok());

/// PowerShell `-EncodedCommand` and every prefix PowerShell accepts for it.
pub static ENCODED_COMMAND: LazyLock<Option<Regex>> = LazyLock::new(|| {
    super::text::regex(concat!(
        r#"(?i)(?P<sep>^|[\s"'])-(?:e|ec|en|enc|enco|encod|encode|encoded|encodedc|"#,
        r#"encodedco|encodedcom|encodedcomm|encodedcomma|encodedcomman|"#,
        r#"encodedcommand)\s+["']?(?P<b64>[A-Za-z0-9+/]{8,}={0,2})["']?"#,
    ))
});

/// A bare base64 run long enough to be worth decoding (18+ bytes decoded).
pub static BASE64_BLOB: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r"[A-Za-z0-9+/]{24,}={0,2}").ok());

/// Runs of `\xHH` escapes, and runs of `\uHHHH` / `\u{H..}` escapes.
pub static HEX_ESCAPES: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r"(?:\\x[0-9a-fA-F]{2})+").ok());
pub static UNICODE_ESCAPES: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r"(?:\\u[0-9a-fA-F]{4}|\\u\{[0-9a-fA-F]{1,6}\})+").ok());

/// `$v = 'lit'.ToCharArray()` / `$v = [char[]]'lit'` (the reversal's source, PowerShell).
pub static PS_CHAR_ARRAY: LazyLock<Option<Regex>> = LazyLock::new(|| {
    compile(
        concat!(
            r"(?i)\$(?P<var>\w+)\s*=\s*(?:\[char\[\]\]\s*(?P<lit1>LIT)|",
            r"(?P<lit2>LIT)\s*\.ToCharArray\(\s*\))",
        ),
        Lang::Ps,
    )
});
/// `[array]::Reverse($v)` (PowerShell).
pub static PS_ARRAY_REVERSE: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(r"(?i)\[(?:System\.)?array\]::Reverse\(\s*\$(?P<var>\w+)\s*\)\s*;?").ok()
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pattern_compiles() {
        for lang in [Lang::Js, Lang::Ps, Lang::Vb, Lang::Py, Lang::Other] {
            let t = templates(lang);
            let lists =
                [t.evals, t.b64_calls, t.char_codes, t.unescape_calls, t.replaces, t.reverses];
            for p in lists.iter().flat_map(|l| l.iter()).chain(t.format.iter()) {
                assert!(compile(p, lang).is_some(), "{lang:?}: {p}");
            }
            let r = rx(lang);
            assert!(r.lit.is_some());
            assert_eq!(r.concat.is_some(), t.concat_op.is_some());
        }
        for re in [&NUMBER, &ENCODED_COMMAND, &BASE64_BLOB, &HEX_ESCAPES, &UNICODE_ESCAPES] {
            assert!(re.is_some());
        }
        assert!(PS_CHAR_ARRAY.is_some() && PS_ARRAY_REVERSE.is_some());
    }
}
