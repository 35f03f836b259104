//! Executable structure via goblin: sections with entropy, imports, architecture, PE details.
//!
//! goblin is the only code here that walks attacker-controlled offsets, so every call into it runs
//! under `guarded` (a panic becomes "malformed" instead of a crash). goblin's full PE parse fails
//! as a whole when one optional table is broken; then only the headers and section table are read
//! and the sample is flagged malformed, which is itself a useful signal. Work is bounded: at most
//! [`MAX_SECTIONS`] sections, [`MAX_IMPORTS`] imports, and `ENTROPY_BUDGET` bytes of section
//! data hashed for entropy in total (section tables may point many entries at the same bytes).

use goblin::elf::Elf;
use goblin::mach::{Mach, MachO, SingleArch};
use goblin::pe::options::ParseOptions;
use goblin::pe::section_table::{SectionTable, IMAGE_SCN_CNT_CODE, IMAGE_SCN_MEM_EXECUTE};
use goblin::pe::PE;

use super::guarded;
use super::hashes::shannon_entropy;
use crate::report::{FileType, Section};

pub const MAX_SECTIONS: usize = 256;
pub const MAX_IMPORTS: usize = 4096;
/// Longest section or import name kept (string tables can hold arbitrarily long names).
pub const MAX_NAME: usize = 256;

fn name(s: &str) -> String {
    super::text::clip(s, MAX_NAME).to_string()
}
const ENTROPY_BUDGET: usize = 256 << 20;

/// What the executable's structure says.
#[derive(Debug, Clone, Default)]
pub struct ExecInfo {
    pub sections: Vec<Section>,
    pub imports: Vec<String>,
    pub arch: Option<String>,
    pub pe: Option<PeInfo>,
    /// goblin could not parse the whole structure.
    pub malformed: bool,
}

/// PE-only facts.
#[derive(Debug, Clone, Default)]
pub struct PeInfo {
    pub timestamp: u32,
    /// Bytes after the last section's raw data, not counting an Authenticode blob there.
    pub overlay: u64,
    /// Size of the Authenticode (security) data directory; 0 when unsigned.
    pub certificate_size: u32,
    pub is_dll: bool,
}

/// Parses `data` as the given executable type.
pub fn parse(data: &[u8], ty: FileType) -> ExecInfo {
    let parsed = match ty {
        FileType::Pe => guarded(|| parse_pe(data)),
        FileType::Elf => guarded(|| parse_elf(data)),
        FileType::MachO => guarded(|| parse_mach(data)),
        _ => return ExecInfo::default(),
    };
    parsed.unwrap_or(ExecInfo { malformed: true, ..ExecInfo::default() })
}

struct Budget(usize);

impl Budget {
    fn section(&mut self, name: String, size: u64, bytes: &[u8], executable: bool) -> Section {
        let take = bytes.len().min(self.0);
        self.0 -= take;
        let entropy = shannon_entropy(&bytes[..take]);
        Section { name, size, entropy, executable }
    }
}

fn slice(data: &[u8], offset: u64, size: u64) -> &[u8] {
    let start = usize::try_from(offset).unwrap_or(usize::MAX).min(data.len());
    let end = usize::try_from(offset.saturating_add(size)).unwrap_or(usize::MAX).min(data.len());
    &data[start..end.max(start)]
}

fn pe_arch(machine: u16) -> String {
    match machine {
        0x14c => "x86".into(),
        0x8664 => "x86_64".into(),
        0x1c0 | 0x1c4 => "arm".into(),
        0xaa64 => "arm64".into(),
        m => goblin::pe::header::machine_to_str(m).to_ascii_lowercase(),
    }
}

fn pe_sections(data: &[u8], table: &[SectionTable], budget: &mut Budget) -> Vec<Section> {
    table
        .iter()
        .take(MAX_SECTIONS)
        .map(|s| {
            let name = String::from_utf8_lossy(&s.name).trim_end_matches('\0').to_string();
            let raw = slice(data, u64::from(s.pointer_to_raw_data), u64::from(s.size_of_raw_data));
            let exec = s.characteristics & (IMAGE_SCN_MEM_EXECUTE | IMAGE_SCN_CNT_CODE) != 0;
            budget.section(name, u64::from(s.size_of_raw_data), raw, exec)
        })
        .collect()
}

fn parse_pe(data: &[u8]) -> ExecInfo {
    let header = match goblin::pe::header::Header::parse(data) {
        Ok(h) => h,
        Err(_) => return ExecInfo { malformed: true, ..ExecInfo::default() },
    };
    let cert = header
        .optional_header
        .and_then(|o| o.data_directories.get_certificate_table().copied())
        .filter(|c| c.size > 0 && c.virtual_address > 0);
    let mut info =
        ExecInfo { arch: Some(pe_arch(header.coff_header.machine)), ..ExecInfo::default() };
    let opts = ParseOptions { resolve_rva: true, parse_attribute_certificates: false };
    let mut budget = Budget(ENTROPY_BUDGET);
    let table = match PE::parse_with_opts(data, &opts) {
        Ok(pe) => {
            info.imports = pe
                .imports
                .iter()
                .take(MAX_IMPORTS)
                .map(|i| format!("{}!{}", name(&i.dll.to_ascii_lowercase()), name(&i.name)))
                .collect();
            dedup_in_order(&mut info.imports);
            pe.sections
        }
        Err(_) => {
            info.malformed = true;
            let opt_size = usize::from(header.coff_header.size_of_optional_header);
            let mut offset = header.dos_header.pe_pointer as usize + 4 + 20 + opt_size;
            header.coff_header.sections(data, &mut offset).unwrap_or_default()
        }
    };
    info.sections = pe_sections(data, &table, &mut budget);
    let raw_end = table
        .iter()
        .filter(|s| s.size_of_raw_data > 0)
        .map(|s| u64::from(s.pointer_to_raw_data).saturating_add(u64::from(s.size_of_raw_data)))
        .max()
        .unwrap_or(0);
    let len = data.len() as u64;
    let mut overlay = len.saturating_sub(raw_end);
    if let Some(c) = cert {
        let (start, end) =
            (u64::from(c.virtual_address), u64::from(c.virtual_address) + u64::from(c.size));
        let overlap = end.min(len).saturating_sub(start.max(raw_end));
        overlay = overlay.saturating_sub(overlap);
    }
    info.pe = Some(PeInfo {
        timestamp: header.coff_header.time_date_stamp,
        overlay,
        certificate_size: cert.map_or(0, |c| c.size),
        is_dll: header.coff_header.characteristics & 0x2000 != 0,
    });
    info
}

fn dedup_in_order(items: &mut Vec<String>) {
    let mut seen = std::collections::HashSet::new();
    items.retain(|i| seen.insert(i.clone()));
}

fn elf_arch(machine: u16) -> String {
    use goblin::elf::header::{machine_to_str, EM_386, EM_AARCH64, EM_ARM, EM_X86_64};
    match machine {
        EM_X86_64 => "x86_64".into(),
        EM_386 => "x86".into(),
        EM_AARCH64 => "arm64".into(),
        EM_ARM => "arm".into(),
        m => machine_to_str(m).trim_start_matches("EM_").to_ascii_lowercase(),
    }
}

fn parse_elf(data: &[u8]) -> ExecInfo {
    use goblin::elf::program_header::{pt_to_str, PF_X};
    use goblin::elf::section_header::{SHF_EXECINSTR, SHT_NOBITS, SHT_NULL};
    use goblin::elf::sym::STT_FUNC;
    let elf = match Elf::parse(data) {
        Ok(e) => e,
        Err(_) => {
            let arch = Elf::parse_header(data).ok().map(|h| elf_arch(h.e_machine));
            return ExecInfo { arch, malformed: true, ..ExecInfo::default() };
        }
    };
    let mut budget = Budget(ENTROPY_BUDGET);
    let mut sections: Vec<Section> = elf
        .section_headers
        .iter()
        .filter(|s| s.sh_type != SHT_NULL)
        .take(MAX_SECTIONS)
        .map(|s| {
            let name = name(elf.shdr_strtab.get_at(s.sh_name).unwrap_or(""));
            let bytes =
                if s.sh_type == SHT_NOBITS { &[][..] } else { slice(data, s.sh_offset, s.sh_size) };
            budget.section(name, s.sh_size, bytes, s.sh_flags & u64::from(SHF_EXECINSTR) != 0)
        })
        .collect();
    if sections.is_empty() {
        sections = elf
            .program_headers
            .iter()
            .take(MAX_SECTIONS)
            .enumerate()
            .map(|(i, p)| {
                let name = format!("segment{i}:{}", pt_to_str(p.p_type).trim_start_matches("PT_"));
                let bytes = slice(data, p.p_offset, p.p_filesz);
                budget.section(name, p.p_filesz, bytes, p.p_flags & PF_X != 0)
            })
            .collect();
    }
    let mut imports: Vec<String> = elf
        .dynsyms
        .iter()
        .filter(|s| s.st_shndx == 0 && s.st_name != 0 && s.st_type() == STT_FUNC)
        .filter_map(|s| elf.dynstrtab.get_at(s.st_name))
        .take(MAX_IMPORTS)
        .map(name)
        .collect();
    dedup_in_order(&mut imports);
    ExecInfo {
        sections,
        imports,
        arch: Some(elf_arch(elf.header.e_machine)),
        pe: None,
        malformed: false,
    }
}

fn mach_arch(cputype: u32) -> String {
    match cputype {
        7 => "x86".into(),
        0x0100_0007 => "x86_64".into(),
        12 => "arm".into(),
        0x0100_000C => "arm64".into(),
        0x0200_000C => "arm64_32".into(),
        18 => "ppc".into(),
        0x0100_0012 => "ppc64".into(),
        other => format!("cpu-{other:#x}"),
    }
}

fn parse_mach(data: &[u8]) -> ExecInfo {
    match Mach::parse(data) {
        Ok(Mach::Binary(macho)) => macho_info(&macho),
        Ok(Mach::Fat(multi)) => {
            let arches: Vec<String> = multi
                .iter_arches()
                .take(16)
                .filter_map(Result::ok)
                .map(|a| mach_arch(a.cputype))
                .collect();
            let first = (0..arches.len()).find_map(|i| match multi.get(i) {
                Ok(SingleArch::MachO(m)) => Some(macho_info(&m)),
                _ => None,
            });
            let mut info = first.unwrap_or(ExecInfo { malformed: true, ..ExecInfo::default() });
            info.arch = Some(arches.join(","));
            info
        }
        Err(_) => ExecInfo { malformed: true, ..ExecInfo::default() },
    }
}

fn macho_info(macho: &MachO) -> ExecInfo {
    const S_ATTR_INSTRUCTIONS: u32 = 0x8000_0000 | 0x0000_0400;
    const VM_PROT_EXECUTE: u32 = 4;
    let mut budget = Budget(ENTROPY_BUDGET);
    let mut sections = Vec::new();
    let mut malformed = false;
    for seg in macho.segments.iter().take(MAX_SECTIONS) {
        let segname = seg.name().unwrap_or("?").to_string();
        let seg_exec = seg.initprot & VM_PROT_EXECUTE != 0;
        match seg.sections() {
            Ok(secs) if !secs.is_empty() => {
                for (sec, bytes) in secs.iter().take(MAX_SECTIONS) {
                    let name = format!("{segname},{}", sec.name().unwrap_or("?"));
                    let exec = seg_exec || sec.flags & S_ATTR_INSTRUCTIONS != 0;
                    sections.push(budget.section(name, sec.size, bytes, exec));
                }
            }
            Ok(_) => sections.push(budget.section(segname, seg.filesize, seg.data, seg_exec)),
            Err(_) => malformed = true,
        }
        if sections.len() >= MAX_SECTIONS {
            sections.truncate(MAX_SECTIONS);
            break;
        }
    }
    let mut imports: Vec<String> = match macho.imports() {
        Ok(list) => list
            .iter()
            .take(MAX_IMPORTS)
            .map(|i| {
                format!("{}!{}", name(i.dylib.rsplit('/').next().unwrap_or(i.dylib)), name(i.name))
            })
            .collect(),
        Err(_) => {
            malformed = true;
            Vec::new()
        }
    };
    dedup_in_order(&mut imports);
    let arch = Some(mach_arch(macho.header.cputype));
    ExecInfo { sections, imports, arch, pe: None, malformed }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::testdata;

    #[test]
    fn hand_built_pe_parses_with_imports() {
        let pe = testdata::injector_pe();
        let info = parse(&pe, FileType::Pe);
        assert!(!info.malformed);
        assert_eq!(info.arch.as_deref(), Some("x86"));
        for f in ["VirtualAllocEx", "WriteProcessMemory", "CreateRemoteThread"] {
            assert!(info.imports.contains(&format!("kernel32.dll!{f}")), "{:?}", info.imports);
        }
        assert!(info.sections.iter().any(|s| s.name == ".text" && s.executable));
        let pe_info = info.pe.unwrap_or_default();
        assert_eq!(pe_info.overlay, 0);
        assert_eq!(pe_info.certificate_size, 0);
    }

    #[test]
    fn overlay_and_certificate_are_measured() {
        let opts = testdata::PeOptions {
            overlay: vec![0xAB; 1000],
            certificate: Some(vec![1; 64]),
            ..Default::default()
        };
        let pe = testdata::pe_with_options(&[], &[(".text", &[0xC3; 16], true)], &opts);
        let info = parse(&pe, FileType::Pe).pe.unwrap_or_default();
        assert_eq!(info.overlay, 1000);
        assert_eq!(info.certificate_size, 8 + 64, "WIN_CERTIFICATE header + blob");
    }

    #[test]
    fn system_elf_has_sections_and_imports() {
        let Ok(bytes) = std::fs::read("/bin/ls") else {
            return;
        };
        let info = parse(&bytes, FileType::Elf);
        assert!(!info.malformed);
        assert!(info.sections.iter().any(|s| s.name == ".text" && s.executable && s.entropy > 4.0));
        assert!(!info.imports.is_empty());
        assert!(info.imports.iter().all(|i| !i.is_empty() && !i.contains('!')));
        assert!(info.arch.is_some());
    }

    #[test]
    fn elf_without_section_headers_uses_segments() {
        let Ok(mut bytes) = std::fs::read("/bin/ls") else {
            return;
        };
        if bytes.len() < 64 || bytes[4] != 2 {
            return; // only the 64-bit layout is patched here
        }
        bytes[0x28..0x30].fill(0); // e_shoff
        bytes[0x3C..0x40].fill(0); // e_shnum, e_shstrndx
        let info = parse(&bytes, FileType::Elf);
        assert!(
            info.sections.iter().any(|s| s.name.ends_with(":LOAD") && s.executable),
            "{:?}",
            info.sections
        );
    }

    #[test]
    fn macho_thin_and_fat() {
        let code = [0x55u8, 0x48, 0x89, 0xE5, 0x5D, 0xC3];
        for (bytes, arch) in
            [(testdata::minimal_macho(&code), "x86_64"), (testdata::fat_macho(&code), "x86_64")]
        {
            assert_eq!(crate::analysis::detect_type(&bytes), FileType::MachO);
            let info = parse(&bytes, FileType::MachO);
            assert!(!info.malformed, "{info:?}");
            assert_eq!(info.arch.as_deref(), Some(arch));
            let text = info.sections.iter().find(|s| s.name == "__TEXT,__text");
            assert!(
                text.is_some_and(|s| s.executable && s.size == code.len() as u64),
                "{:?}",
                info.sections
            );
        }
    }

    #[test]
    fn truncated_pe_is_malformed_not_a_panic() {
        let pe = testdata::injector_pe();
        for cut in [64, 200, 400, 600, pe.len() - 1] {
            let _ = parse(&pe[..cut.min(pe.len())], FileType::Pe);
        }
        assert!(parse(b"MZ", FileType::Pe).malformed);
    }
}
