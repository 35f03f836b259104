//! Printable strings, and the "strings of interest" kept in the report.
//!
//! Binaries are scanned for ASCII runs and UTF-16LE runs (both byte alignments) of at least
//! [`MIN_LEN`] characters; text files contribute their lines instead. Scanning stops after the
//! caller's byte limit (by default the first 8 MiB, see `Limits`), so a huge file costs no more
//! than that; later strings are simply not seen. Every kept string is also capped in length.
//!
//! All strings are joined into one [`Corpus`] (newline separated, no string contains a newline)
//! so each IOC or keyword regex runs once over one buffer instead of once per string; a match
//! offset maps back to its string by binary search. The report keeps only strings that matched
//! something, in file order, deduplicated and truncated.

use std::collections::HashSet;
use std::sync::LazyLock;

use regex::Regex;

use super::apis;
use super::text::clip;

/// Minimum characters for a run to count as a string.
pub const MIN_LEN: usize = 5;
/// Longest string kept from a binary; longer runs are cut (they are rarely meaningful).
const MAX_STRING: usize = 64 * 1024;
/// Characters of a string of interest shown in the report.
pub const SHOWN_LEN: usize = 200;

/// One string and where it was found (byte offset in the file or text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub offset: usize,
    pub text: String,
}

/// Printable ASCII plus tab, as a lookup table (the scan is the hot loop for large files).
const PRINTABLE: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0x20;
    while b < 0x7F {
        t[b] = true;
        b += 1;
    }
    t[b'\t' as usize] = true;
    t
};

fn printable(b: u8) -> bool {
    PRINTABLE[usize::from(b)]
}

/// ASCII and UTF-16LE strings from the first `scan` bytes of `data`, at most `max` of them, in
/// file order.
///
/// One pass finds all three kinds of run (ASCII, and UTF-16LE at even and odd offsets). Run
/// lengths are updated without branching on each byte (random data would mispredict every other
/// byte); the only branch is at the end of a long-enough run, which is rare.
pub fn from_binary(data: &[u8], scan: usize, max: usize) -> Vec<Found> {
    let data = &data[..data.len().min(scan)];
    let mut out = Vec::new();
    let mut run = 0usize;
    // UTF-16 runs per byte parity, counted in units; unit `j` is bytes `j` and `j + 1`.
    let mut wide = [0usize; 2];
    let mut prev_printable = false;
    for (i, &b) in data.iter().enumerate() {
        let p = printable(b);
        if run >= MIN_LEN && !p {
            push_ascii(&mut out, data, i - run, i);
        }
        run = (run + 1) * usize::from(p);
        if i > 0 {
            let unit = prev_printable && b == 0;
            let r = &mut wide[(i - 1) & 1];
            if *r >= MIN_LEN && !unit {
                push_wide(&mut out, data, i - 1 - 2 * *r, i - 1);
            }
            *r = (*r + 1) * usize::from(unit);
        }
        prev_printable = p;
    }
    if run >= MIN_LEN {
        push_ascii(&mut out, data, data.len() - run, data.len());
    }
    for (parity, &r) in wide.iter().enumerate() {
        if r >= MIN_LEN {
            // The last unit of this parity starts at the largest such index <= len - 2.
            let last = data.len() - 2;
            let last = if last % 2 == parity { last } else { last - 1 };
            push_wide(&mut out, data, last + 2 - 2 * r, last + 2);
        }
    }
    out.sort_by_key(|f| f.offset);
    out.truncate(max);
    out
}

fn push_ascii(out: &mut Vec<Found>, data: &[u8], start: usize, end: usize) {
    let bytes = &data[start..end.min(start + MAX_STRING)];
    // Only printable ASCII was accepted, so this is valid UTF-8.
    out.push(Found { offset: start, text: String::from_utf8_lossy(bytes).into_owned() });
}

fn push_wide(out: &mut Vec<Found>, data: &[u8], start: usize, end: usize) {
    let end = end.min(start + 2 * MAX_STRING);
    let text: String = data[start..end].iter().step_by(2).map(|&b| char::from(b)).collect();
    out.push(Found { offset: start, text });
}

/// The lines of a text file (trimmed, at least [`MIN_LEN`] bytes), at most `max` of them.
pub fn from_text(text: &str, max: usize) -> Vec<Found> {
    let mut out = Vec::new();
    let mut offset = 0;
    for line in text.split('\n') {
        let trimmed = line.trim();
        if trimmed.len() >= MIN_LEN {
            out.push(Found { offset, text: trimmed.to_string() });
            if out.len() >= max {
                break;
            }
        }
        offset += line.len() + 1;
    }
    out
}

/// All strings joined by newlines, plus optional extra text (deobfuscated code) at the end.
#[derive(Debug, Default)]
pub struct Corpus {
    pub text: String,
    starts: Vec<usize>,
    strings_end: usize,
}

impl Corpus {
    pub fn build(strings: &[Found], extra: Option<&str>) -> Self {
        let cap = strings.iter().map(|s| s.text.len() + 1).sum::<usize>();
        let mut text = String::with_capacity(cap + extra.map_or(0, str::len) + 1);
        let mut starts = Vec::with_capacity(strings.len());
        for s in strings {
            starts.push(text.len());
            text.push_str(&s.text);
            text.push('\n');
        }
        let strings_end = text.len();
        if let Some(extra) = extra {
            text.push_str(extra);
            text.push('\n');
        }
        Corpus { text, starts, strings_end }
    }

    /// Index of the string containing corpus byte `offset`, if it falls within a string.
    pub fn string_at(&self, offset: usize) -> Option<usize> {
        if offset >= self.strings_end {
            return None;
        }
        match self.starts.binary_search(&offset) {
            Ok(i) => Some(i),
            Err(0) => None,
            Err(i) => Some(i - 1),
        }
    }
}

/// Commands, paths and words that make a string worth showing even without an IOC.
static KEYWORDS: LazyLock<Option<Regex>> = LazyLock::new(|| {
    let apis = apis::ALL.join("|");
    let words = [
        r"cmd(?:\.exe)?\s+/[ck]",
        r"powershell",
        r"pwsh",
        r"wscript",
        r"cscript",
        r"mshta",
        r"rundll32",
        r"regsvr32",
        r"certutil",
        r"bitsadmin",
        r"schtasks",
        r"vssadmin",
        r"wmic",
        r"bcdedit",
        r"net\s+user",
        r"/bin/(?:ba)?sh",
        r"/dev/tcp",
        r"chmod\s",
        r"wget\s",
        r"curl\s",
        r"nc\s+-e",
        r"base64\s+-d",
        r"crontab",
        r"\\AppData\\",
        r"\\Temp\\",
        r"%TEMP%",
        r"%APPDATA%",
        r"\\Startup\\",
        r"CurrentVersion\\Run",
        r"password",
        r"passwd",
        r"keylog",
        r"bitcoin",
        r"ransom",
        r"mimikatz",
        r"\.onion\b",
        r"User-Agent",
        r"DownloadString",
        r"DownloadFile",
        r"Invoke-Expression",
        r"\bIEX\b",
        r"FromBase64String",
        r"ActiveXObject",
        r"WScript\.Shell",
        r"AmsiUtils",
        r"amsiInitFailed",
        r"-EncodedCommand",
        r"ExecutionPolicy",
        r"eval\(",
        r"exec\(",
    ];
    let pattern = format!(r"(?i)\b(?:{apis})[AW]?\b|{}", words.join("|"));
    super::text::regex(&pattern)
});

/// Corpus offsets of keyword matches (bounded by `max_hits`).
pub fn keyword_hits(corpus: &Corpus, max_hits: usize) -> Vec<usize> {
    match KEYWORDS.as_ref() {
        Some(re) => re.find_iter(&corpus.text).take(max_hits).map(|m| m.start()).collect(),
        None => Vec::new(),
    }
}

/// The strings hit by any offset in `hits`, in file order, deduplicated, each cut to
/// [`SHOWN_LEN`] bytes, at most `max`.
pub fn of_interest(strings: &[Found], corpus: &Corpus, hits: &[usize], max: usize) -> Vec<String> {
    let mut indices: Vec<usize> = hits.iter().filter_map(|&o| corpus.string_at(o)).collect();
    indices.sort_unstable();
    indices.dedup();
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for i in indices {
        let Some(s) = strings.get(i) else { continue };
        let shown = clip(&s.text, SHOWN_LEN).to_string();
        if seen.insert(shown.clone()) {
            out.push(shown);
            if out.len() >= max {
                break;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascii_and_utf16_in_file_order() {
        let mut data = b"\x00\x01hello world\x00\xff".to_vec();
        data.extend("wide string".encode_utf16().flat_map(u16::to_le_bytes));
        data.extend(b"\x00\x00abc\x00tail!");
        let found = from_binary(&data, usize::MAX, 100);
        let texts: Vec<&str> = found.iter().map(|f| f.text.as_str()).collect();
        assert_eq!(texts, ["hello world", "wide string", "tail!"]);
        assert_eq!(found[0].offset, 2);
    }

    #[test]
    fn odd_aligned_utf16_is_found() {
        let mut data = vec![0x41];
        data.extend("misaligned".encode_utf16().flat_map(u16::to_le_bytes));
        let found = from_binary(&data, usize::MAX, 100);
        assert!(found.iter().any(|f| f.text == "misaligned"), "{found:?}");
    }

    #[test]
    fn runs_at_the_very_end_and_start() {
        let mut data: Vec<u8> = "start".encode_utf16().flat_map(u16::to_le_bytes).collect();
        data.push(0xFF);
        data.extend(b"tail5");
        let texts: Vec<String> =
            from_binary(&data, usize::MAX, 10).into_iter().map(|f| f.text).collect();
        assert_eq!(texts, ["start", "tail5"]);
        let mut odd = vec![0xFFu8];
        odd.extend("final".encode_utf16().flat_map(u16::to_le_bytes));
        let found = from_binary(&odd, usize::MAX, 10);
        assert_eq!(found.len(), 1);
        assert_eq!((found[0].offset, found[0].text.as_str()), (1, "final"));
    }

    #[test]
    fn scan_and_count_limits_hold() {
        let data = b"aaaaaa\x00bbbbbb\x00cccccc".repeat(100);
        assert_eq!(from_binary(&data, 7, 100).len(), 1);
        assert_eq!(from_binary(&data, usize::MAX, 5).len(), 5);
        let long = vec![b'x'; MAX_STRING * 2];
        assert_eq!(from_binary(&long, usize::MAX, 10)[0].text.len(), MAX_STRING);
    }

    #[test]
    fn corpus_maps_offsets_back() {
        let strings = from_text("first line\nsecond line\n\nthird line", 10);
        let corpus = Corpus::build(&strings, Some("extra text"));
        let pos = corpus.text.find("second").unwrap_or(0);
        assert_eq!(corpus.string_at(pos + 3), Some(1));
        let extra = corpus.text.find("extra").unwrap_or(0);
        assert_eq!(corpus.string_at(extra), None);
    }

    #[test]
    fn interesting_strings_are_deduped_and_clipped() {
        let long = format!("powershell {}", "x".repeat(500));
        let strings = from_text(&format!("harmless text\n{long}\n{long}\ncall VirtualAllocEx"), 10);
        let corpus = Corpus::build(&strings, None);
        let hits = keyword_hits(&corpus, 100);
        let shown = of_interest(&strings, &corpus, &hits, 10);
        assert_eq!(shown.len(), 2);
        assert_eq!(shown[0].len(), SHOWN_LEN);
        assert_eq!(shown[1], "call VirtualAllocEx");
    }
}
