//! Heuristics over an executable's structure: packing, overlay, timestamp, signature.
//!
//! Packers leave the same marks whatever they are called: their own section names, executable
//! sections whose bytes look random (compressed or encrypted code measures above ~7.2 bits/byte,
//! ordinary machine code 5-6.5), and an import table cut down to the loader essentials
//! (`LoadLibrary` + `GetProcAddress`) because the real imports are rebuilt at run time. Each mark
//! is a separate indicator so the verdict shows which ones were seen. Timestamps are checked
//! against the wall clock for "future" (the only non-deterministic input of the analyzer) and
//! against 1990 for "implausible"; reproducible builds also produce odd stamps, hence low weights.

use std::time::{SystemTime, UNIX_EPOCH};

use super::apis;
use super::executable::ExecInfo;
use super::indicators::Ind;
use crate::report::Indicator;

/// Section names used by common packers and protectors (compared case-insensitively).
const PACKER_SECTIONS: &[(&str, &str)] = &[
    ("upx0", "UPX"),
    ("upx1", "UPX"),
    ("upx2", "UPX"),
    ("upx!", "UPX"),
    (".upx", "UPX"),
    (".aspack", "ASPack"),
    (".adata", "ASPack"),
    (".petite", "Petite"),
    (".themida", "Themida"),
    (".winlice", "WinLicense"),
    (".vmp0", "VMProtect"),
    (".vmp1", "VMProtect"),
    (".vmp2", "VMProtect"),
    (".mpress1", "MPRESS"),
    (".mpress2", "MPRESS"),
    (".nsp0", "NsPack"),
    (".nsp1", "NsPack"),
    (".nsp2", "NsPack"),
    ("pec2", "PECompact"),
    ("pecompact2", "PECompact"),
    (".enigma1", "Enigma"),
    (".enigma2", "Enigma"),
    (".packed", "generic packer"),
    (".spack", "Simple Pack"),
    ("mew", "MEW"),
    (".yp", "Y0da"),
    (".perplex", "Perplex"),
    ("fsg!", "FSG"),
    (".kkrunchy", "kkrunchy"),
    (".boom", "The Boomerang"),
    (".ccg", "CCG"),
    (".rlpack", "RLPack"),
    (".svkp", "SVKP"),
    (".taz", "PESpin"),
    ("bitarts", "Crunch"),
];

/// Entropy above which executable bytes look compressed or encrypted.
pub const PACKED_ENTROPY: f64 = 7.2;
/// Sections smaller than this are too short for a meaningful entropy.
const MIN_ENTROPY_SIZE: u64 = 512;
/// Overlays smaller than this are alignment slack, not appended data.
const MIN_OVERLAY: u64 = 512;
/// 1990-01-01T00:00:00Z; earlier PE timestamps are implausible.
const EARLIEST_PLAUSIBLE: u64 = 631_152_000;

/// Indicators from the structure of an executable.
pub fn indicators(info: &ExecInfo) -> Vec<Indicator> {
    let mut out = Vec::new();
    if info.malformed {
        out.push(Ind::MalformedExecutable.with(
            "The executable's structure could not be fully parsed (corrupt or deliberately \
             malformed headers or tables)",
        ));
    }
    let mut packers: Vec<String> = info
        .sections
        .iter()
        .filter_map(|s| {
            let lower = s.name.to_ascii_lowercase();
            PACKER_SECTIONS
                .iter()
                .find(|(n, _)| *n == lower)
                .map(|(_, p)| format!("{} ({p})", s.name))
        })
        .collect();
    packers.dedup();
    if !packers.is_empty() {
        out.push(
            Ind::PackerSectionNames.with(format!("Packer section names: {}", packers.join(", "))),
        );
    }
    let hot: Vec<String> = info
        .sections
        .iter()
        .filter(|s| s.executable && s.size >= MIN_ENTROPY_SIZE && s.entropy > PACKED_ENTROPY)
        .map(|s| format!("{} ({:.2} bits/byte)", s.name, s.entropy))
        .collect();
    if !hot.is_empty() {
        out.push(Ind::HighEntropySection.with(format!(
            "Executable sections with packed or encrypted-looking content: {}",
            hot.join(", ")
        )));
    }
    if let Some(pe) = &info.pe {
        pe_indicators(info, pe, &mut out);
    }
    out
}

fn pe_indicators(info: &ExecInfo, pe: &super::executable::PeInfo, out: &mut Vec<Indicator>) {
    let dynamic =
        info.imports.iter().any(|i| apis::canonical(i).is_some_and(|c| apis::DYNAMIC.contains(&c)));
    if !info.malformed && info.imports.is_empty() && !pe.is_dll && !info.sections.is_empty() {
        out.push(Ind::NoImports.with("The PE imports nothing: its APIs are resolved by hand"));
    } else if info.imports.len() < 5 && dynamic {
        out.push(Ind::TinyImportTable.with(format!(
            "Only {} imports, including dynamic API resolution: {}",
            info.imports.len(),
            info.imports.join(", ")
        )));
    }
    if pe.overlay >= MIN_OVERLAY {
        out.push(
            Ind::PeOverlay
                .with(format!("{} bytes appended after the last section (overlay)", pe.overlay)),
        );
    }
    let ts = u64::from(pe.timestamp);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(u64::MAX, |d| d.as_secs());
    if ts == 0 {
        out.push(Ind::PeTimestampZero.with("The PE compile timestamp is zero (wiped)"));
    } else if ts > now.saturating_add(86_400) {
        out.push(
            Ind::PeTimestampFuture
                .with(format!("The PE compile timestamp is in the future: {}", iso_date(ts))),
        );
    } else if ts < EARLIEST_PLAUSIBLE {
        out.push(
            Ind::PeTimestampImplausible
                .with(format!("The PE compile timestamp predates 1990: {}", iso_date(ts))),
        );
    } else {
        out.push(Ind::PeCompileTime.with(format!("Compiled {}", iso_date(ts))));
    }
    if pe.certificate_size > 0 {
        out.push(Ind::PeSigned.with(format!(
            "Authenticode signature present ({} bytes; not verified)",
            pe.certificate_size
        )));
    } else {
        out.push(Ind::PeUnsigned.with("No Authenticode signature"));
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` for a Unix timestamp (proleptic Gregorian, no leap seconds).
pub fn iso_date(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::executable::parse;
    use crate::analysis::testdata;
    use crate::report::FileType;

    fn ids(pe: &[u8]) -> Vec<String> {
        indicators(&parse(pe, FileType::Pe)).into_iter().map(|i| i.id).collect()
    }

    #[test]
    fn packed_pe_shows_all_packer_marks() {
        let found = ids(&testdata::packed_pe());
        for want in ["packer-section-names", "high-entropy-executable-section", "tiny-import-table"]
        {
            assert!(found.iter().any(|i| i == want), "{want} missing from {found:?}");
        }
    }

    #[test]
    fn plain_pe_has_only_informational_marks() {
        assert_eq!(ids(&testdata::injector_pe()), ["pe-compile-time", "pe-unsigned"]);
    }

    #[test]
    fn timestamps_overlay_and_signature() {
        let opts = testdata::PeOptions {
            timestamp: 0,
            overlay: vec![1; 4096],
            certificate: Some(vec![0x30; 100]),
        };
        let pe = testdata::pe_with_options(&[], &[(".text", &[0xC3], true)], &opts);
        assert_eq!(ids(&pe), ["no-imports", "pe-overlay", "pe-timestamp-zero", "pe-signed"]);
        let future = testdata::PeOptions { timestamp: u32::MAX, ..Default::default() };
        let pe = testdata::pe_with_options(&[], &[(".text", &[0xC3], true)], &future);
        assert!(ids(&pe).contains(&"pe-timestamp-future".to_string()));
    }

    #[test]
    fn iso_dates() {
        assert_eq!(iso_date(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso_date(1_600_000_000), "2020-09-13T12:26:40Z");
        assert_eq!(iso_date(951_782_400), "2000-02-29T00:00:00Z");
    }
}
