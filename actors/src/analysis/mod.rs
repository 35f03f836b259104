//! Static analysis of a submitted sample: what it is, what it contains, how suspicious it looks.
//!
//! [`analyze`] is a pure function of the bytes, the file name and the [`Depth`]: no I/O, no
//! async, no shared state beyond regexes compiled once. It must never panic and must stay fast on
//! hostile input, so every stage is bounded (see [`Limits`]) and the third-party parsers that walk
//! attacker-controlled offsets (goblin, zip) run under `guarded`, which turns a panic inside
//! them into "malformed" instead of taking the engine down (its message still reaches stderr
//! through the panic hook). Hashes and entropy always cover the whole file; everything else reads
//! bounded prefixes. The pipeline: type -> digests -> format structure (executable, archive, PDF)
//! -> script deobfuscation -> strings -> IOCs and behaviour rules -> verdict.

pub mod apis;
pub mod archive;
pub mod behaviour;
mod deob_patterns;
mod deob_strings;
pub mod deobfuscate;
pub mod eicar;
pub mod exec_checks;
pub mod executable;
pub mod filetype;
pub mod hashes;
pub mod indicators;
pub mod iocs;
pub mod literals;
pub mod office;
pub mod pdf;
pub mod strings;
#[doc(hidden)]
pub mod testdata;
pub mod text;
pub mod verdict;

#[cfg(test)]
mod tests;

pub use crate::report::{FileType, StaticReport};
pub use hashes::shannon_entropy;
pub use verdict::{threat_level, threat_score};

use indicators::Ind;

/// How much work to spend on a sample.
///
/// - `Quick`: type, size, hashes, entropy, EICAR and the whole-file entropy indicator only.
/// - `Standard`: everything, within the default bounds.
/// - `Deep`: everything, with larger bounds (more bytes scanned, more strings and IOCs kept, more
///   deobfuscation passes, deeper and larger archive walks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Depth {
    Quick,
    #[default]
    Standard,
    Deep,
}

/// Every bound the analyzer applies, per [`Depth`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Leading bytes scanned for strings and PDF markers (and decoded, for scripts).
    pub scan_bytes: usize,
    /// Strings extracted before selection (the rest of the scanned prefix is ignored).
    pub max_scanned_strings: usize,
    /// Strings of interest (plus archive listing lines) kept in the report.
    pub max_strings: usize,
    /// Entries kept per IOC kind.
    pub max_iocs: usize,
    /// Deobfuscation passes, and the size the script text is cut to before and during them.
    pub deobfuscation_passes: usize,
    pub deobfuscation_bytes: usize,
    pub archive: archive::ArchiveLimits,
}

impl Limits {
    pub fn for_depth(depth: Depth) -> Limits {
        const MIB: usize = 1 << 20;
        match depth {
            Depth::Quick | Depth::Standard => Limits {
                scan_bytes: 8 * MIB,
                max_scanned_strings: 50_000,
                max_strings: 200,
                max_iocs: 100,
                deobfuscation_passes: 16,
                deobfuscation_bytes: MIB,
                archive: archive::ArchiveLimits {
                    max_depth: 3,
                    budget: 64 << 20,
                    max_entries: 1_000,
                    max_nested_size: 16 * MIB,
                    max_listing: 50,
                },
            },
            Depth::Deep => Limits {
                scan_bytes: 64 * MIB,
                max_scanned_strings: 200_000,
                max_strings: 1_000,
                max_iocs: 500,
                deobfuscation_passes: 64,
                deobfuscation_bytes: 4 * MIB,
                archive: archive::ArchiveLimits {
                    max_depth: 5,
                    budget: 256 << 20,
                    max_entries: 10_000,
                    max_nested_size: 32 * MIB,
                    max_listing: 200,
                },
            },
        }
    }
}

/// Whole-file entropy above which a non-archive looks compressed or encrypted.
pub const HIGH_ENTROPY: f64 = 7.5;

/// Runs `f`, turning a panic into `None`. Used around third-party parsers of untrusted data.
pub(crate) fn guarded<T>(f: impl FnOnce() -> T) -> Option<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).ok()
}

/// The file type of `data`, from its content alone.
pub fn detect_type(data: &[u8]) -> FileType {
    filetype::detect(data, "")
}

/// Analyses one sample. Never panics; bounded in time and output size by `depth`'s [`Limits`]
/// (hashing is linear in the whole file; everything else reads bounded prefixes).
pub fn analyze(file_name: &str, data: &[u8], depth: Depth) -> StaticReport {
    let limits = Limits::for_depth(depth);
    let digests = hashes::digest(data);
    let file_type = filetype::detect(data, file_name);
    let mut report = StaticReport::default();
    let facts = &mut report.facts;
    facts.file_name = text::clip(file_name, 1024).to_string();
    facts.file_type = file_type;
    facts.size = data.len() as u64;
    facts.entropy = digests.entropy;
    (facts.md5, facts.sha1, facts.sha256) = (digests.md5, digests.sha1, digests.sha256);
    let mut found = Vec::new();
    if eicar::is_eicar(data) {
        found.push(Ind::EicarTestFile.with("The standard EICAR anti-virus test string"));
    }
    let archive_like = matches!(file_type, FileType::Zip | FileType::Office | FileType::Pdf);
    if digests.entropy > HIGH_ENTROPY && data.len() > 1024 && !archive_like {
        found.push(Ind::HighEntropyFile.with(format!(
            "Whole-file entropy {:.2} bits/byte: compressed or encrypted content",
            digests.entropy
        )));
    }
    if depth != Depth::Quick {
        full_stages(&mut report, data, &limits, &mut found);
    }
    report.indicators = found;
    verdict::finalize(&mut report);
    report
}

/// Everything beyond `Quick`: structure, deobfuscation, strings, IOCs, behaviour.
fn full_stages(
    report: &mut StaticReport,
    data: &[u8],
    limits: &Limits,
    found: &mut Vec<crate::report::Indicator>,
) {
    let file_type = report.facts.file_type;
    let mut listing = Vec::new();
    let mut zip_names = Vec::new();
    let mut vba_blobs = Vec::new();
    if file_type.is_executable() {
        let info = executable::parse(data, file_type);
        found.extend(exec_checks::indicators(&info));
        report.facts.sections = info.sections;
        report.facts.imports = info.imports;
        report.facts.architecture = info.arch;
    } else if data.starts_with(b"PK") && matches!(file_type, FileType::Zip | FileType::Office) {
        let walk = archive::analyze(data, &limits.archive);
        found.extend(walk.indicators);
        (listing, zip_names, vba_blobs) = (walk.listing, walk.names, walk.vba_blobs);
    } else if file_type == FileType::Pdf {
        found.extend(pdf::indicators(data, limits.scan_bytes));
    }
    let script_text =
        if file_type.is_script() { text::decode_text(data, limits.scan_bytes) } else { None };
    let deob = script_text.as_deref().map(|t| {
        let lang = literals::Lang::of(file_type);
        deobfuscate::deobfuscate(t, lang, limits.deobfuscation_passes, limits.deobfuscation_bytes)
    });
    // Minor rewrites (one joined literal) are not reported as layers, but their text still
    // feeds the IOC search: `"http://ev" + "il.com"` must yield the URL either way.
    let rewritten = deob.as_ref().filter(|d| d.rewritten);
    let strings = match &script_text {
        Some(t) => strings::from_text(t, limits.max_scanned_strings),
        None => strings::from_binary(data, limits.scan_bytes, limits.max_scanned_strings),
    };
    let corpus = strings::Corpus::build(&strings, rewritten.map(|d| d.text.as_str()));
    let (iocs, mut hits) = iocs::extract(&corpus.text, limits.max_iocs);
    hits.extend(strings::keyword_hits(&corpus, limits.max_scanned_strings));
    let api_names = apis::found(&report.facts.imports, apis::words_in(&corpus.text, 10_000));
    found.extend(apis::indicators(&api_names));
    found.extend(behaviour::indicators(&corpus.text, file_type, &api_names));
    if file_type == FileType::Office {
        found.extend(office::indicators(&zip_names, &vba_blobs, &corpus.text));
    }
    let ip_urls: Vec<&str> =
        iocs.urls.iter().filter(|u| iocs::url_has_ip_host(u)).take(5).map(String::as_str).collect();
    if !ip_urls.is_empty() {
        found.push(
            Ind::UrlWithIpHost.with(format!("URLs with a bare IP host: {}", ip_urls.join(", "))),
        );
    }
    if let Some(d) = &deob {
        found.extend(d.indicators());
    }
    let room = limits.max_strings.saturating_sub(listing.len().min(limits.max_strings / 2));
    listing.truncate(limits.max_strings - room);
    for line in &mut listing {
        text::clip_in_place(line, strings::SHOWN_LEN);
    }
    listing.extend(strings::of_interest(&strings, &corpus, &hits, room));
    report.facts.strings = listing;
    report.iocs = iocs;
    report.deobfuscated_code = deob.filter(deobfuscate::Deobfuscated::changed).map(|d| d.text);
}
