//! Turns indicators into a verdict: score, level, classifications and recommendations.
//!
//! The score is deliberately simple, the sum of indicator weights capped at 100, so that any
//! verdict can be explained by reading its indicators. Classifications come from the catalogue
//! (an indicator implies at most one) and recommendations from the level plus a few indicators
//! that call for specific advice. EICAR is special-cased: it scores critical (as every AV treats
//! it) but the advice says plainly that it is harmless, instead of "quarantine and investigate".

use std::collections::BTreeSet;

use super::indicators::Ind;
use crate::report::{Indicator, StaticReport, ThreatLevel};

/// Sum of weights, capped at 100.
pub fn threat_score(indicators: &[Indicator]) -> u8 {
    let sum: u32 = indicators.iter().map(|i| u32::from(i.weight.min(100))).sum();
    sum.min(100) as u8
}

/// The level for the capped score of these indicators.
pub fn threat_level(indicators: &[Indicator]) -> ThreatLevel {
    ThreatLevel::from_score(threat_score(indicators))
}

/// Deduplicates indicators by id (keeping the heaviest), orders them heaviest first (ties by id,
/// so the order is deterministic) and fills in classifications and recommendations.
pub fn finalize(report: &mut StaticReport) {
    let mut best: Vec<Indicator> = Vec::with_capacity(report.indicators.len());
    for ind in report.indicators.drain(..) {
        match best.iter_mut().find(|b| b.id == ind.id) {
            Some(b) if ind.weight > b.weight => *b = ind,
            Some(_) => {}
            None => best.push(ind),
        }
    }
    best.sort_by(|a, b| b.weight.cmp(&a.weight).then_with(|| a.id.cmp(&b.id)));
    report.indicators = best;
    report.classifications = classifications(&report.indicators);
    report.recommendations = recommendations(report);
}

fn classifications(indicators: &[Indicator]) -> Vec<String> {
    let set: BTreeSet<&str> = indicators
        .iter()
        .filter(|i| i.weight > 0)
        .filter_map(|i| Ind::from_id(&i.id))
        .map(Ind::classification)
        .filter(|c| !c.is_empty())
        .collect();
    set.into_iter().map(str::to_string).collect()
}

fn has(report: &StaticReport, ind: Ind) -> bool {
    report.indicators.iter().any(|i| i.id == ind.id())
}

fn recommendations(report: &StaticReport) -> Vec<String> {
    let inds = &report.indicators;
    let level = threat_level(inds);
    let eicar = has(report, Ind::EicarTestFile);
    let others_weigh = inds.iter().any(|i| i.id != Ind::EicarTestFile.id() && i.weight > 0);
    let mut out: Vec<String> = Vec::new();
    if eicar {
        out.push(
            "This is the EICAR anti-virus test file: harmless by design, it only checks that \
             anti-virus detection works. No remediation is needed."
                .into(),
        );
    }
    if !eicar || others_weigh {
        let general = match level {
            ThreatLevel::Clean if !inds.iter().any(|i| i.weight > 0) => {
                "No indicators found; static analysis alone cannot prove a file safe."
            }
            ThreatLevel::Clean => {
                "Only negligible indicators found; static analysis alone cannot prove a file safe."
            }
            ThreatLevel::Low => {
                "A few weak indicators: review them before trusting the file, and prefer running \
                 it in a sandbox first."
            }
            ThreatLevel::Medium => {
                "Treat as suspicious: do not open or run it outside an isolated sandbox, and \
                 review the indicators and IOCs."
            }
            ThreatLevel::High | ThreatLevel::Critical => {
                "Treat as malicious: quarantine the file, block its hashes, and investigate any \
                 host where it was opened or run."
            }
        };
        out.push(general.into());
    }
    let specific: [(Ind, &str); 9] = [
        (
            Ind::ZipBomb,
            "Do not extract this archive: it expands to far more data than it holds \
             (decompression bomb) and can exhaust disk or memory.",
        ),
        (
            Ind::ArchiveEncryptedEntries,
            "The archive has encrypted entries that could not be inspected; obtain the password \
             from the sender's context and analyse the contents separately.",
        ),
        (
            Ind::PackerSectionNames,
            "The executable looks packed: unpack it or run it in a sandbox, since static \
             analysis sees only the packer stub.",
        ),
        (
            Ind::EvalChain,
            "Review the deobfuscated code: the original script hides what it executes.",
        ),
        (
            Ind::PowershellEncodedCommand,
            "Review the decoded PowerShell command: encoded commands hide what they run.",
        ),
        (Ind::OfficeMacros, "Open the document only with macros disabled."),
        (Ind::PdfJavaScript, "Open the PDF only in a viewer with JavaScript disabled."),
        (
            Ind::ShadowCopyDeletion,
            "Ransomware behaviour: check backups and shadow copies on any host that ran it.",
        ),
        (
            Ind::ArchiveDoubleExtension,
            "An entry hides its real type behind a double extension; do not open it.",
        ),
    ];
    for (ind, text) in specific {
        if has(report, ind) {
            out.push(text.into());
        }
    }
    let network_iocs = !report.iocs.urls.is_empty()
        || !report.iocs.domains.is_empty()
        || !report.iocs.ips.is_empty();
    if network_iocs && level >= ThreatLevel::Medium && (!eicar || others_weigh) {
        out.push(
            "Block the listed URLs, domains and IP addresses and search logs for them.".into(),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report_with(inds: &[Ind]) -> StaticReport {
        let mut r = StaticReport {
            indicators: inds.iter().map(|i| i.with("x")).collect(),
            ..StaticReport::default()
        };
        finalize(&mut r);
        r
    }

    #[test]
    fn score_is_capped_sum() {
        let r = report_with(&[Ind::ProcessInjection, Ind::AmsiBypass, Ind::ZipBomb]);
        assert_eq!(threat_score(&r.indicators), 100);
        assert_eq!(threat_level(&r.indicators), ThreatLevel::Critical);
        let r = report_with(&[Ind::NetworkApis]);
        assert_eq!(threat_score(&r.indicators), 5);
        assert_eq!(threat_level(&r.indicators), ThreatLevel::Clean);
    }

    #[test]
    fn clean_report_still_has_a_recommendation() {
        let r = report_with(&[]);
        assert!(r.classifications.is_empty());
        assert_eq!(r.recommendations.len(), 1);
        assert!(r.recommendations[0].contains("cannot prove a file safe"));
    }

    #[test]
    fn duplicates_collapse_and_order_is_heaviest_first() {
        let r = report_with(&[Ind::NetworkApis, Ind::ZipBomb, Ind::NetworkApis]);
        let ids: Vec<&str> = r.indicators.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["zip-bomb", "network-apis"]);
        assert_eq!(r.classifications, ["archive:zip-bomb"]);
        assert!(r.recommendations.iter().any(|s| s.contains("Do not extract")));
    }

    #[test]
    fn eicar_alone_is_explained_as_harmless() {
        let r = report_with(&[Ind::EicarTestFile]);
        assert_eq!(r.classifications, ["test-file:eicar"]);
        assert_eq!(r.recommendations.len(), 1);
        assert!(r.recommendations[0].contains("harmless"));
    }

    #[test]
    fn classifications_are_sorted_and_deduped() {
        let r =
            report_with(&[Ind::TinyImportTable, Ind::PackerSectionNames, Ind::ProcessInjection]);
        assert_eq!(r.classifications, ["packed", "trojan:injector"]);
    }
}
