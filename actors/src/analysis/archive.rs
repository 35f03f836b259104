//! ZIP archives (and OOXML documents, which are ZIPs): listing, nesting and bomb detection.
//!
//! Every entry is listed from its headers, then (unless encrypted) decompressed as a stream into
//! a counter, never into memory, so the real expanded size is measured even when the headers lie.
//! Decompression draws on one byte budget shared by all levels of nesting; when it runs out the
//! walk stops and says so. Only three things are kept in memory: the first bytes of each entry
//! (for EICAR), nested ZIPs up to `max_nested_size` (to recurse into), and VBA project blobs (for
//! the Office checks). A bomb is any of: an expansion ratio above [`BOMB_RATIO`] on an entry of
//! at least [`BOMB_MIN_SIZE`] (declared or measured), a total declared size above
//! [`BOMB_TOTAL`], an entry expanding beyond its declared size, or nesting deeper than allowed.

use std::io::{Cursor, Read};

use zip::ZipArchive;

use super::eicar;
use super::guarded;
use super::indicators::Ind;
use crate::report::Indicator;

/// Expansion ratio that marks a bomb when the entry is also large.
pub const BOMB_RATIO: u64 = 100;
/// Entries smaller than this are not judged by ratio (small text compresses very well).
pub const BOMB_MIN_SIZE: u64 = 10 << 20;
/// Total declared uncompressed size that marks a bomb on its own.
pub const BOMB_TOTAL: u64 = 1 << 30;

/// Bounds of one archive walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArchiveLimits {
    pub max_depth: usize,
    pub budget: u64,
    pub max_entries: usize,
    pub max_nested_size: usize,
    pub max_listing: usize,
}

/// What the walk found.
#[derive(Debug, Default)]
pub struct ArchiveFindings {
    /// One line per entry: `zip: path (compressed -> size bytes)` plus flags.
    pub listing: Vec<String>,
    pub indicators: Vec<Indicator>,
    /// Entry paths (with nesting) of every entry, for format checks.
    pub names: Vec<String>,
    /// Decompressed VBA project streams (`vbaProject.bin`), bounded.
    pub vba_blobs: Vec<Vec<u8>>,
}

#[derive(Default)]
struct Walk {
    budget: u64,
    entries: usize,
    found: ArchiveFindings,
    bomb: Vec<String>,
    encrypted: Vec<String>,
    executables: Vec<String>,
    double_ext: Vec<String>,
    traversal: Vec<String>,
    malformed: Vec<String>,
    eicar: Vec<String>,
    truncated: Vec<String>,
}

const RUNNABLE: &[&str] = &[
    "exe", "scr", "com", "pif", "bat", "cmd", "js", "jse", "vbs", "vbe", "wsf", "wsh", "hta",
    "ps1", "lnk", "msi", "cpl", "jar", "dll",
];
const DOCUMENT: &[&str] =
    &["pdf", "doc", "docx", "xls", "xlsx", "ppt", "jpg", "jpeg", "png", "txt", "rtf", "mp4"];

/// Walks the archive in `data` within `limits`.
pub fn analyze(data: &[u8], limits: &ArchiveLimits) -> ArchiveFindings {
    let mut walk = Walk { budget: limits.budget, ..Walk::default() };
    walk.archive(data, "", 0, limits);
    walk.finish()
}

impl Walk {
    fn archive(&mut self, data: &[u8], prefix: &str, depth: usize, limits: &ArchiveLimits) {
        let opened = guarded(|| ZipArchive::new(Cursor::new(data)).ok()).flatten();
        let Some(mut zip) = opened else {
            self.malformed.push(if prefix.is_empty() { "archive".into() } else { prefix.into() });
            return;
        };
        let mut declared_total: u64 = 0;
        for i in 0..zip.len() {
            if self.entries >= limits.max_entries {
                self.truncated.push(format!("more than {} entries", limits.max_entries));
                break;
            }
            self.entries += 1;
            let meta = guarded(|| {
                zip.by_index_raw(i).ok().map(|f| {
                    (f.name().to_string(), f.compressed_size(), f.size(), f.encrypted(), f.is_dir())
                })
            })
            .flatten();
            let Some((name, packed, size, encrypted, is_dir)) = meta else {
                self.malformed.push(format!("{prefix}entry #{i}"));
                continue;
            };
            let path = format!("{prefix}{}", super::text::clip(&name, 512));
            declared_total = declared_total.saturating_add(size);
            self.check_name(&path, &name);
            if self.found.listing.len() < limits.max_listing {
                let flag = if encrypted { ", encrypted" } else { "" };
                self.found.listing.push(format!("zip: {path} ({packed} -> {size} bytes{flag})"));
            }
            self.found.names.push(path.clone());
            if encrypted {
                self.encrypted.push(path);
                continue;
            }
            if is_dir {
                continue;
            }
            if size >= BOMB_MIN_SIZE && size > packed.saturating_mul(BOMB_RATIO) {
                self.bomb.push(format!(
                    "{path} declares {size} bytes from {packed} ({}:1)",
                    ratio(size, packed)
                ));
                continue;
            }
            if self.budget == 0 {
                self.truncated.push("decompression budget exhausted".into());
                continue;
            }
            self.entry(&mut zip, i, &path, (packed, size), depth, limits);
        }
        if declared_total > BOMB_TOTAL {
            let at = if prefix.is_empty() { "the archive" } else { prefix };
            self.bomb.push(format!("{at} declares {declared_total} bytes in total"));
        }
    }

    fn entry(
        &mut self,
        zip: &mut ZipArchive<Cursor<&[u8]>>,
        index: usize,
        path: &str,
        (packed, declared): (u64, u64),
        depth: usize,
        limits: &ArchiveLimits,
    ) {
        let keep_max = limits.max_nested_size;
        let is_vba = path.to_ascii_lowercase().ends_with("vbaproject.bin");
        let budget = self.budget;
        let read = guarded(|| {
            let mut file = zip.by_index(index).ok()?;
            let mut kept: Vec<u8> = Vec::new();
            let mut buf = vec![0u8; 64 * 1024];
            let (mut total, mut complete, mut error, mut eof) = (0u64, true, false, false);
            while total < budget {
                let want = buf.len().min(usize::try_from(budget - total).unwrap_or(usize::MAX));
                match file.read(&mut buf[..want]) {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(n) => {
                        total += n as u64;
                        if complete && kept.len() + n <= keep_max {
                            kept.extend_from_slice(&buf[..n]);
                        } else {
                            complete = false;
                        }
                        // Only nested ZIPs and VBA projects are worth holding beyond EICAR size.
                        if !is_vba
                            && !kept.starts_with(b"PK\x03\x04")
                            && kept.len() > eicar::MAX_LEN
                        {
                            kept.truncate(eicar::MAX_LEN + 1);
                            complete = false;
                        }
                        if total > declared.saturating_add(1 << 20) && total >= BOMB_MIN_SIZE {
                            break; // the header lies; no need to expand the rest
                        }
                    }
                    Err(_) => {
                        error = true;
                        break;
                    }
                }
            }
            Some((total, kept, complete && eof, error))
        })
        .flatten();
        let Some((total, kept, complete, error)) = read else {
            self.malformed.push(format!("{path} (unsupported or corrupt)"));
            return;
        };
        self.budget = self.budget.saturating_sub(total);
        if error {
            self.malformed.push(format!("{path} (corrupt data)"));
        }
        if total > declared.saturating_add(1 << 20) && total >= BOMB_MIN_SIZE {
            self.bomb.push(format!("{path} expands beyond its declared {declared} bytes"));
        } else if total >= BOMB_MIN_SIZE && total > packed.saturating_mul(BOMB_RATIO) {
            self.bomb.push(format!(
                "{path} expands {}:1 ({total} bytes measured)",
                ratio(total, packed)
            ));
        }
        if self.budget == 0 {
            self.truncated.push("decompression budget exhausted".into());
        }
        if total <= eicar::MAX_LEN as u64 && eicar::is_eicar(&kept) {
            self.eicar.push(path.to_string());
        }
        if is_vba && complete {
            self.found.vba_blobs.push(kept);
            return;
        }
        if !complete && !error && kept.starts_with(b"PK\x03\x04") {
            self.truncated.push(format!("{path}: nested archive too large to open"));
        }
        if complete && !error && kept.starts_with(b"PK\x03\x04") {
            if depth >= limits.max_depth {
                self.bomb
                    .push(format!("{path} nests archives deeper than {} levels", limits.max_depth));
            } else {
                self.archive(&kept, &format!("{path}/"), depth + 1, limits);
            }
        }
    }

    fn check_name(&mut self, path: &str, name: &str) {
        if name.starts_with('/')
            || name.starts_with('\\')
            || name.contains("../")
            || name.contains("..\\")
        {
            self.traversal.push(path.to_string());
        }
        let lower = name.to_ascii_lowercase();
        let mut parts = lower.rsplit('.').map(str::trim);
        let (Some(ext), Some(prev)) = (parts.next(), parts.next()) else {
            return;
        };
        if !RUNNABLE.contains(&ext) {
            return;
        }
        if DOCUMENT.contains(&prev) {
            self.double_ext.push(path.to_string());
        } else {
            self.executables.push(path.to_string());
        }
    }

    fn finish(mut self) -> ArchiveFindings {
        let list = |v: &mut Vec<String>| {
            v.dedup();
            let shown: Vec<&str> = v.iter().take(10).map(|s| super::text::clip(s, 200)).collect();
            let more = v.len().saturating_sub(shown.len());
            let tail = if more > 0 { format!(" (+{more} more)") } else { String::new() };
            format!("{}{tail}", shown.join("; "))
        };
        let mut add = |ind: Ind, what: &str, v: &mut Vec<String>| {
            if !v.is_empty() {
                let text = format!("{what}: {}", list(v));
                self.found.indicators.push(ind.with(text));
            }
        };
        add(Ind::ZipBomb, "Decompression bomb", &mut self.bomb);
        add(Ind::EicarTestFile, "EICAR test file inside the archive", &mut self.eicar);
        add(
            Ind::ArchiveEncryptedEntries,
            "Encrypted (password-protected) entries",
            &mut self.encrypted,
        );
        add(
            Ind::ArchiveDoubleExtension,
            "Entries with a deceptive double extension",
            &mut self.double_ext,
        );
        add(
            Ind::ArchiveExecutableEntry,
            "Runnable entries (executables or scripts)",
            &mut self.executables,
        );
        add(
            Ind::ArchivePathTraversal,
            "Entries that write outside the extraction folder",
            &mut self.traversal,
        );
        add(Ind::ArchiveMalformed, "Malformed archive parts", &mut self.malformed);
        add(Ind::ArchiveTruncated, "Archive analysis stopped early", &mut self.truncated);
        self.found
    }
}

fn ratio(big: u64, small: u64) -> u64 {
    big / small.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::testdata;

    const LIMITS: ArchiveLimits = ArchiveLimits {
        max_depth: 3,
        budget: 64 << 20,
        max_entries: 1000,
        max_nested_size: 16 << 20,
        max_listing: 100,
    };

    fn ids(f: &ArchiveFindings) -> Vec<&str> {
        f.indicators.iter().map(|i| i.id.as_str()).collect()
    }

    #[test]
    fn nested_zip_is_listed_to_the_bottom() {
        let f = analyze(&testdata::nested_zip(), &LIMITS);
        assert!(f.names.contains(&"outer.zip/middle.zip/inner.txt".to_string()), "{:?}", f.names);
        assert!(f.listing.iter().any(|l| l.starts_with("zip: outer.zip/middle.zip/tool.exe (")));
        assert_eq!(ids(&f), ["archive-executable-entry"]);
    }

    #[test]
    fn nesting_past_the_bound_is_a_bomb() {
        let shallow = ArchiveLimits { max_depth: 1, ..LIMITS };
        let f = analyze(&testdata::nested_zip(), &shallow);
        assert!(ids(&f).contains(&"zip-bomb"), "{:?}", f.indicators);
    }

    #[test]
    fn eicar_in_zip_and_name_tricks() {
        let z = testdata::zip_of(&[
            ("eicar.com", testdata::eicar()),
            ("invoice.pdf.exe", b"MZ"),
            ("../../etc/cron.d/x", b"* * * * * root id"),
        ]);
        let f = analyze(&z, &LIMITS);
        let got = ids(&f);
        for want in ["eicar-test-file", "archive-double-extension", "archive-path-traversal"] {
            assert!(got.contains(&want), "{want} not in {got:?}");
        }
    }

    #[test]
    fn encrypted_entries_are_flagged_not_read() {
        let z = testdata::encrypted_zip(&[
            ("secret.doc", b"payload"),
            ("eicar.com", testdata::eicar()),
        ]);
        let f = analyze(&z, &LIMITS);
        // Not decompressed, so the EICAR inside stays unseen; its `.com` name still counts.
        assert_eq!(ids(&f), ["archive-encrypted-entries", "archive-executable-entry"]);
        assert!(f.listing.iter().all(|l| l.ends_with(", encrypted)")), "{:?}", f.listing);
    }

    #[test]
    fn garbage_is_malformed() {
        let f = analyze(b"PK\x03\x04 this is not really a zip", &LIMITS);
        assert_eq!(ids(&f), ["archive-malformed"]);
    }

    #[test]
    fn budget_stops_decompression() {
        let data = testdata::pseudo_random(300_000, 3);
        let z = testdata::zip_of(&[("a.bin", &data), ("b.bin", &data)]);
        let tight = ArchiveLimits { budget: 100_000, ..LIMITS };
        let f = analyze(&z, &tight);
        assert!(ids(&f).contains(&"archive-analysis-truncated"));
        assert!(!ids(&f).contains(&"zip-bomb"));
    }
}
