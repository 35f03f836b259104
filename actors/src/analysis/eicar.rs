//! Recognition of the EICAR anti-virus test file.
//!
//! The EICAR specification: the file starts with the 68-byte string, may be followed by
//! whitespace only, and is at most 128 bytes long. Anything else (the string inside a larger
//! file) is not the test file by that definition, and it is not flagged here, which keeps the
//! check exact. ZIP entries are checked with the same rule (see `archive`), which catches the
//! classic `eicar_com.zip`.

use super::testdata::eicar;

/// Maximum size of a conforming EICAR test file.
pub const MAX_LEN: usize = 128;

/// True when `data` is the EICAR test file.
pub fn is_eicar(data: &[u8]) -> bool {
    let sig = eicar();
    data.len() <= MAX_LEN
        && data.starts_with(sig)
        && data[sig.len()..].iter().all(u8::is_ascii_whitespace)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_and_with_trailing_whitespace() {
        assert!(is_eicar(eicar()));
        let mut padded = eicar().to_vec();
        padded.extend_from_slice(b"\r\n  \t");
        assert!(is_eicar(&padded));
    }

    #[test]
    fn rejects_near_misses() {
        assert!(!is_eicar(&eicar()[..67]));
        let mut extra = eicar().to_vec();
        extra.extend_from_slice(b" not whitespace");
        assert!(!is_eicar(&extra));
        let mut long = eicar().to_vec();
        long.resize(129, b' ');
        assert!(!is_eicar(&long));
        let mut prefixed = b" ".to_vec();
        prefixed.extend_from_slice(eicar());
        assert!(!is_eicar(&prefixed));
    }
}
