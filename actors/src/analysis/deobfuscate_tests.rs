//! Tests of the deobfuscation layers, one language idiom at a time, then layered samples.

use super::*;
use crate::analysis::testdata;

fn run(text: &str, lang: Lang) -> Deobfuscated {
    deobfuscate(text, lang, 16, 1 << 20)
}

fn layer_ids(d: &Deobfuscated) -> Vec<&'static str> {
    d.layers.keys().copied().collect()
}

#[test]
fn layered_javascript_is_fully_peeled() {
    let d = run(&testdata::obfuscated_js(), Lang::Js);
    assert!(d.text.contains(testdata::OBFUSCATED_JS_URL), "{}", d.text);
    assert!(d.text.contains("new ActiveXObject('MSXML2.XMLHTTP')"), "{}", d.text);
    assert!(!d.text.contains("eval("), "{}", d.text);
    assert_eq!(layer_ids(&d), ["eval-chain", "obfuscation-base64", "obfuscation-fromcharcode"]);
}

#[test]
fn powershell_encoded_command() {
    let d = run(&testdata::encoded_powershell(), Lang::Ps);
    let want = format!("DownloadString('{}')", testdata::ENCODED_PS_URL);
    assert!(d.text.contains(&want), "{}", d.text);
    assert!(d.text.contains("-Command IEX (New-Object Net.WebClient)"), "{}", d.text);
    assert_eq!(layer_ids(&d), ["powershell-encoded-command"]);
}

#[test]
fn encoded_command_inside_a_batch_file() {
    let bat = format!("@echo off\r\nstart /b {}", testdata::encoded_powershell());
    let d = run(&bat, Lang::Other);
    assert!(d.text.contains(testdata::ENCODED_PS_URL), "{}", d.text);
}

#[test]
fn concatenation_in_each_language() {
    assert_eq!(run(r#"x = "ht" + 'tp:' + "//a.b";"#, Lang::Js).text, r#"x = "http://a.b";"#);
    assert_eq!(run("$u = 'ht'+'tp'+ 'x'", Lang::Ps).text, "$u = 'httpx'");
    assert_eq!(run(r#"u = "ht" & "tp" + "s""#, Lang::Vb).text, r#"u = "https""#);
    assert_eq!(run(r#"u = "a" + 'b'"#, Lang::Py).text, r#"u = "ab""#);
    // A variable in between stops the fold.
    assert_eq!(run(r#"x = "a" + y + "b""#, Lang::Js).text, r#"x = "a" + y + "b""#);
}

#[test]
fn char_codes_in_each_language() {
    assert_eq!(run("String.fromCharCode(72, 0x69)", Lang::Js).text, r#""Hi""#);
    assert_eq!(run("Execute Chr(72) & ChrW(&H69)", Lang::Vb).text, "Hi");
    assert_eq!(run("[char]72+[char]0x69", Lang::Ps).text, "'Hi'");
    assert_eq!(run("[char[]](72,105) -join ''", Lang::Ps).text, "'Hi'");
    assert_eq!(run("chr(72)+chr(105)", Lang::Py).text, r#""Hi""#);
    assert_eq!(run("''.join(map(chr, [72, 105]))", Lang::Py).text, r#""Hi""#);
    let d = run("[char]72+[char]105+[char]33", Lang::Ps);
    assert_eq!(layer_ids(&d), ["obfuscation-char-codes"]);
    // A lone `chr(10)` is ordinary code: rewritten, but not reported as obfuscation.
    let d = run("sep = chr(10)", Lang::Py);
    assert_eq!(d.text, r#"sep = "\n""#);
    assert!(!d.changed());
}

#[test]
fn escapes_keep_literals_well_formed() {
    assert_eq!(run(r#"a = "\x68\x74\x74\x70";"#, Lang::Js).text, r#"a = "http";"#);
    assert_eq!(run(r#"a = "\u0041\u{42}";"#, Lang::Js).text, r#"a = "AB";"#);
    assert_eq!(run(r#"a = "\x22q\x22\x0a";"#, Lang::Js).text, r#"a = "\"q\"\x0a";"#);
    assert_eq!(run("unescape('%68%u0069')", Lang::Js).text, r#""hi""#);
}

#[test]
fn reversal_in_each_language() {
    let js = r#"var u = "moc.live//:ptth".split("").reverse().join("");"#;
    assert_eq!(run(js, Lang::Js).text, r#"var u = "http://evil.com";"#);
    assert_eq!(run("-join ('cba')[-1..-3]", Lang::Ps).text, "'abc'");
    assert_eq!(run("('cba')[-1..-3] -join ''", Lang::Ps).text, "'abc'");
    assert_eq!(run("StrReverse(\"cba\")", Lang::Vb).text, "\"abc\"");
    assert_eq!(run("'cba'[::-1]", Lang::Py).text, r#""abc""#);
    let ps = "$a = 'cba'.ToCharArray(); [array]::Reverse($a); -join $a";
    assert_eq!(run(ps, Lang::Ps).text, "$a = 'abc'.ToCharArray();  -join $a");
}

#[test]
fn replace_format_and_backticks() {
    assert_eq!(run("'htxxtp'.Replace('xx','')", Lang::Ps).text, "'http'");
    assert_eq!(run(r#""a-b-c".replace("-", "")"#, Lang::Js).text, r#""ab-c""#);
    assert_eq!(run(r#""a-b-c".split("-").join("")"#, Lang::Js).text, r#""abc""#);
    assert_eq!(run("('{1}{0}' -f 'World','Hello ')", Lang::Ps).text, "'Hello World'");
    assert_eq!(run("I`E`X (New-Ob`ject x)", Lang::Ps).text, "IEX (New-Object x)");
    assert_eq!(run("\"a`tb\"", Lang::Ps).text, "\"a`tb\"");
}

#[test]
fn base64_blobs_and_calls() {
    let b64 = "ZWNobyAnaHR0cDovL2V2aWwuZXhhbXBsZS5uZXQvcCc=";
    let py = format!("exec(base64.b64decode('{b64}'))");
    assert_eq!(run(&py, Lang::Py).text, "echo 'http://evil.example.net/p'");
    let sh = format!("echo {b64} | base64 -d | sh");
    assert_eq!(run(&sh, Lang::Other).text, "echo 'http://evil.example.net/p' | sh");
    let ps = format!("[Text.Encoding]::UTF8.GetString([Convert]::FromBase64String('{b64}'))");
    assert_eq!(run(&ps, Lang::Ps).text, "'echo ''http://evil.example.net/p'''");
    // Binary-looking base64 (an alphabet table) is left alone.
    let table = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    assert!(!run(table, Lang::Js).changed());
}

#[test]
fn eval_chains_unwrap_constants_only() {
    assert_eq!(run(r#"eval("alert(1)")"#, Lang::Js).text, "alert(1)");
    assert!(!run(r#"eval("alert(1)")"#, Lang::Js).changed(), "no decoding layer, no chain");
    assert_eq!(run("IEX 'Write-Host hi'", Lang::Ps).text, "Write-Host hi");
    assert_eq!(run("'Write-Host hi' | iex", Lang::Ps).text, "Write-Host hi");
    assert_eq!(run("eval(code)", Lang::Js).text, "eval(code)");
}

#[test]
fn clean_text_is_unchanged_and_output_is_bounded() {
    let plain = "function add(a, b) { return a + b; }\n";
    assert!(!run(plain, Lang::Js).changed());
    let chain = vec!["'ab'"; 10_000].join("+");
    let d = deobfuscate(&chain, Lang::Ps, 16, 1000);
    assert!(d.text.len() <= 1000);
    let d = deobfuscate(&testdata::obfuscated_js(), Lang::Js, 1, 1 << 20);
    assert!(d.text.contains("atob("), "one pass removes one layer: {}", d.text);
}

/// Fragments that exercise every layer's syntax, for the property tests.
const TOKENS: &[&str] = &[
    "eval(",
    "IEX ",
    "Execute ",
    "exec(",
    "atob(",
    "String.fromCharCode(",
    "[char]",
    "Chr(",
    "chr(",
    "unescape(",
    "base64.b64decode(",
    "[Convert]::FromBase64String(",
    "-enc ",
    " -e ",
    "'",
    "\"",
    "`",
    "\\",
    "\\x4",
    "\\x41",
    "\\u004",
    "\\u0041",
    "\\u{1F600}",
    "%u00",
    "%4",
    "+",
    "&",
    "(",
    ")",
    "[",
    "]",
    ",",
    "-f",
    "{0}",
    "{1}",
    "}",
    ".Replace(",
    ".replace(",
    ".split(\"\")",
    ".reverse()",
    ".join(\"\")",
    "[-1..-9]",
    "-join",
    "[::-1]",
    "StrReverse(",
    "$a",
    "[array]::Reverse($a)",
    ".ToCharArray()",
    "72",
    "0x41",
    "&H41",
    "\n",
    " ",
    "é",
    "\u{0}",
    "aGVsbG8gd29ybGQgZnJvbSBiYXNlNjQ=",
    "SQBFAFgAIAAnAGgAaQAnAA==",
    "//",
    "#",
];

fn soup() -> impl Strategy<Value = String> {
    proptest::collection::vec(proptest::sample::select(TOKENS), 0..80).prop_map(|v| v.concat())
}

use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn never_panics_and_stays_bounded(text in soup(), lang in 0usize..5, max in 1usize..4096) {
        let lang = [Lang::Js, Lang::Ps, Lang::Vb, Lang::Py, Lang::Other][lang];
        let d = deobfuscate(&text, lang, 8, max);
        prop_assert!(d.text.len() <= max);
    }

    #[test]
    fn never_panics_on_arbitrary_unicode(text in "\\PC{0,300}", lang in 0usize..5) {
        let lang = [Lang::Js, Lang::Ps, Lang::Vb, Lang::Py, Lang::Other][lang];
        let _ = deobfuscate(&text, lang, 4, 1 << 16);
    }
}
