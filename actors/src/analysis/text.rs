//! Deciding whether bytes are text, and decoding them.
//!
//! Scripts arrive as UTF-8 (with or without BOM) or, from Windows tooling, as UTF-16LE (with or
//! without BOM). The decision looks at a bounded prefix only ([`SNIFF`] bytes), so it costs the
//! same for a 50 MiB file as for a small one; decoding then stops at the caller's byte budget.

/// Compiles `pattern` with ASCII word boundaries. A Unicode `\b` makes the regex crate's fast
/// DFA give up on non-ASCII text and fall back to much slower engines; every pattern here is
/// about ASCII syntax anyway.
pub fn regex(pattern: &str) -> Option<regex::Regex> {
    regex::Regex::new(&ascii_boundaries(pattern)).ok()
}

/// `pattern` with each `\b` made ASCII-only.
pub fn ascii_boundaries(pattern: &str) -> String {
    pattern.replace(r"\b", r"(?-u:\b)")
}

/// How many leading bytes decide whether a buffer is text.
pub const SNIFF: usize = 64 * 1024;

/// Decodes `data` as text if it looks like text, reading at most `max` bytes of it.
pub fn decode_text(data: &[u8], max: usize) -> Option<String> {
    let data = &data[..data.len().min(max)];
    if let Some(rest) = data.strip_prefix(&[0xFF, 0xFE]) {
        return utf16_text(rest, false);
    }
    if let Some(rest) = data.strip_prefix(&[0xFE, 0xFF]) {
        return utf16_text(rest, true);
    }
    let data = data.strip_prefix(&[0xEF, 0xBB, 0xBF]).unwrap_or(data);
    if data.is_empty() {
        return None;
    }
    let sample = &data[..data.len().min(SNIFF)];
    if looks_utf16le(sample) {
        return utf16_text(data, false);
    }
    if !is_texty(sample) {
        return None;
    }
    Some(String::from_utf8_lossy(data).into_owned())
}

/// True when almost every byte is printable ASCII, common whitespace or part of UTF-8.
fn is_texty(sample: &[u8]) -> bool {
    if sample.contains(&0) {
        return false;
    }
    let bad = sample
        .iter()
        .filter(|&&b| (b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r' | 0x0C | 0x1B)) || b == 0x7F)
        .count();
    bad * 100 <= sample.len()
}

/// UTF-16LE without a BOM: ASCII text then has a zero in every odd position.
fn looks_utf16le(sample: &[u8]) -> bool {
    if sample.len() < 8 {
        return false;
    }
    let pairs = sample.len() / 2;
    let zero_high = sample.chunks_exact(2).filter(|p| p[1] == 0 && p[0] != 0).count();
    zero_high * 10 >= pairs * 9
}

fn utf16_text(data: &[u8], big_endian: bool) -> Option<String> {
    let units: Vec<u16> = data
        .chunks_exact(2)
        .map(|p| {
            if big_endian {
                u16::from_be_bytes([p[0], p[1]])
            } else {
                u16::from_le_bytes([p[0], p[1]])
            }
        })
        .collect();
    let text = String::from_utf16_lossy(&units);
    let sample: String = text.chars().take(SNIFF).collect();
    if sample.is_empty() || !mostly_printable(&sample, 95) {
        return None;
    }
    Some(text)
}

/// True when at least `percent` of the characters are printable or whitespace.
pub fn mostly_printable(s: &str, percent: usize) -> bool {
    let mut total = 0usize;
    let mut good = 0usize;
    for c in s.chars() {
        total += 1;
        if !c.is_control() || matches!(c, '\t' | '\n' | '\r') {
            good += 1;
        }
    }
    total > 0 && good * 100 >= total * percent && !s.contains('\u{FFFD}')
}

/// Interprets decoded bytes (from base64, say) as text when they clearly are text: UTF-8 or
/// UTF-16LE (how PowerShell encodes commands), at least 95 % printable.
pub fn bytes_as_text(bytes: &[u8]) -> Option<String> {
    if bytes.len() >= 4 && bytes.len().is_multiple_of(2) && looks_utf16le(bytes) {
        let units: Vec<u16> =
            bytes.chunks_exact(2).map(|p| u16::from_le_bytes([p[0], p[1]])).collect();
        let s = String::from_utf16(&units).ok()?;
        return mostly_printable(&s, 95).then_some(s);
    }
    let s = std::str::from_utf8(bytes).ok()?;
    mostly_printable(s, 95).then(|| s.to_string())
}

/// The longest prefix of `s` that is at most `max` bytes and ends on a char boundary.
pub fn clip(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Truncates `s` in place to at most `max` bytes on a char boundary.
pub fn clip_in_place(s: &mut String, max: usize) {
    let len = clip(s, max).len();
    s.truncate(len);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_and_boms() {
        assert_eq!(decode_text(b"echo hi\n", 100).as_deref(), Some("echo hi\n"));
        assert_eq!(decode_text(b"\xEF\xBB\xBFWrite-Host 1", 100).as_deref(), Some("Write-Host 1"));
        let utf16: Vec<u8> = [0xFF, 0xFE]
            .into_iter()
            .chain("IEX $x".encode_utf16().flat_map(u16::to_le_bytes))
            .collect();
        assert_eq!(decode_text(&utf16, 100).as_deref(), Some("IEX $x"));
        let bare: Vec<u8> = "Write-Host hello".encode_utf16().flat_map(u16::to_le_bytes).collect();
        assert_eq!(decode_text(&bare, 100).as_deref(), Some("Write-Host hello"));
    }

    #[test]
    fn binary_is_not_text() {
        assert_eq!(decode_text(b"MZ\x90\x00\x03\x00", 100), None);
        assert_eq!(decode_text(b"", 100), None);
        assert_eq!(decode_text(&[1, 2, 3, 4, 5, 6, 7, 8, 9], 100), None);
    }

    #[test]
    fn decoding_respects_the_budget() {
        assert_eq!(decode_text(b"abcdefgh", 3).as_deref(), Some("abc"));
    }

    #[test]
    fn bytes_as_text_accepts_utf8_and_utf16() {
        assert_eq!(bytes_as_text(b"alert(1)").as_deref(), Some("alert(1)"));
        let w: Vec<u8> = "IEX abc".encode_utf16().flat_map(u16::to_le_bytes).collect();
        assert_eq!(bytes_as_text(&w).as_deref(), Some("IEX abc"));
        assert_eq!(bytes_as_text(&[0x00, 0x01, 0x02, 0xff]), None);
    }

    #[test]
    fn clip_respects_char_boundaries() {
        assert_eq!(clip("héllo", 2), "h");
        assert_eq!(clip("abc", 10), "abc");
        let mut s = String::from("ééé");
        clip_in_place(&mut s, 3);
        assert_eq!(s, "é");
    }
}
