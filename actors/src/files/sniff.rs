//! What an uploaded file is, decided from its content, and the name it is
//! kept and shown under.
//!
//! [`sniff`] looks at the first bytes of a file (up to 64 KiB) and never at
//! its claimed name or `Content-Type`: magic numbers through the `infer`
//! crate, and failing those, a UTF-8 test for plain text. The type found is
//! then held against an [`AllowList`] of MIME types (by default images, PDF,
//! office documents and plain text), so that executables, archives, scripts
//! and HTML are refused even when named `report.pdf`.
//!
//! [`sanitize_name`] turns a client's file name into one that is safe to
//! store and to display: no path, no control or invisible characters, no
//! bidi overrides that make `exe.pdf` of `fdp.exe`, bounded in length.
//!
//! # Errors
//!
//! [`SniffError::NotAllowed`]: the content is of a known type that is not on
//! the list (it names the type). [`SniffError::Unknown`]: no magic number
//! matched and the content is not plain text. [`SniffError::Empty`]: nothing
//! to look at. [`AllowList::parse`] names every MIME type it does not know.
//!
//! # Known quirks of `infer` 0.22
//!
//! - Office Open XML (docx, xlsx, pptx) is recognised when the zip's first
//!   local entry is under `word/`, `ppt/` or `xl/`; or when it is
//!   `[Content_Types].xml` (or `_rels/.rels`, `docProps...`), the third entry
//!   is under one of those folders and the FOURTH names the type, each entry
//!   found within 6000 bytes of the previous one and inside the head. Word,
//!   Excel and PowerPoint write `[Content_Types].xml`, `_rels/.rels`,
//!   `word/_rels/document.xml.rels`, `word/document.xml`, ... and pass; a
//!   zip ordered otherwise is `application/zip` (refused by default).
//! - Legacy doc, xls and ppt are OLE2 compound files told apart by the
//!   root entry's CLSID, which `infer` reads by parsing the compound file
//!   from the head alone; one it cannot parse from the head is
//!   `application/x-ole-storage` (not allowed by default).
//! - Any content starting with `MZ` is a PE executable, with `#!` a shell
//!   script, with `<?xml` XML and with an HTML tag (`<p `, `<b>`, ...) HTML:
//!   a text file that happens to start so is refused.
//! - HEIC images are reported as `image/heif` (extension `heif`).
//! - `infer` takes any content starting with `BM` for a BMP image; [`sniff`]
//!   also wants a BMP's info header size to be a real one (12, 40, 52, 56,
//!   108 or 124), so that a text starting with "BM" stays text.

use std::collections::BTreeSet;

/// The broad kind of an accepted file, as clients see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileKind {
    /// A picture (`image/*`).
    Image,
    /// A PDF document.
    Pdf,
    /// An office document (and any other allowed non-image, non-text type).
    Document,
    /// Plain text (`text/*`).
    Text,
}

impl FileKind {
    /// The wire spelling: `image`, `pdf`, `document` or `text`.
    pub fn as_str(self) -> &'static str {
        match self {
            FileKind::Image => "image",
            FileKind::Pdf => "pdf",
            FileKind::Document => "document",
            FileKind::Text => "text",
        }
    }
}

/// The type of an accepted file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Detected {
    /// Its MIME type, as [`sniff`] spells it (one of [`AllowList::mimes`]).
    pub mime: &'static str,
    /// Its broad kind.
    pub kind: FileKind,
    /// The usual file extension of the type, without the dot (`png`, `jpg`,
    /// `docx`, `txt`).
    pub extension: &'static str,
}

/// Why a file's content is refused.
#[derive(Debug, thiserror::Error)]
pub enum SniffError {
    /// The content is of a known type that the allow-list does not hold
    /// (an ELF or PE executable, a zip, a script, HTML, ...).
    #[error("files of type {mime} are not accepted")]
    NotAllowed {
        /// The type found.
        mime: &'static str,
    },
    /// No magic number matched and the content is not plain UTF-8 text.
    #[error("the file's type could not be recognised from its content")]
    Unknown,
    /// The file has no content.
    #[error("the file is empty")]
    Empty,
}

/// MIME type of plain text, the one type not found by magic numbers.
const TEXT_PLAIN: &str = "text/plain";

/// Every MIME type [`sniff`] can produce: those of `infer` 0.22 and
/// `text/plain`.
const KNOWN_MIMES: &[&str] = &[
    "application/wasm",
    "application/x-executable",
    "application/vnd.microsoft.portable-executable",
    "application/java",
    "application/x-llvm",
    "application/x-mach-binary",
    "application/vnd.android.dex",
    "application/vnd.android.dey",
    "application/x-x509-ca-cert",
    "application/x-qemu-disk",
    "application/epub+zip",
    "application/x-mobipocket-ebook",
    "image/jpeg",
    "image/jp2",
    "image/png",
    "image/gif",
    "image/webp",
    "image/x-canon-cr2",
    "image/tiff",
    "image/bmp",
    "image/vnd.ms-photo",
    "image/vnd.adobe.photoshop",
    "image/vnd.microsoft.icon",
    "image/heif",
    "image/avif",
    "image/jxl",
    "image/openraster",
    "image/vnd.djvu",
    "image/vnd.dwg",
    "video/mp4",
    "video/x-m4v",
    "video/x-matroska",
    "video/webm",
    "video/quicktime",
    "video/x-msvideo",
    "video/x-ms-wmv",
    "video/mpeg",
    "video/x-flv",
    "audio/midi",
    "audio/mpeg",
    "audio/m4a",
    "audio/opus",
    "audio/ogg",
    "audio/x-flac",
    "audio/x-wav",
    "audio/amr",
    "audio/aac",
    "audio/x-aiff",
    "audio/x-dsf",
    "audio/x-ape",
    "application/font-woff",
    "application/font-sfnt",
    "application/msword",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "application/vnd.ms-excel",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "application/vnd.ms-powerpoint",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    "application/vnd.oasis.opendocument.text",
    "application/vnd.oasis.opendocument.spreadsheet",
    "application/vnd.oasis.opendocument.presentation",
    "application/zip",
    "application/x-tar",
    "application/x-par2",
    "application/vnd.rar",
    "application/gzip",
    "application/x-bzip2",
    "application/vnd.bzip3",
    "application/x-7z-compressed",
    "application/x-xz",
    "application/pdf",
    "application/x-shockwave-flash",
    "application/rtf",
    "application/octet-stream",
    "application/postscript",
    "application/vnd.sqlite3",
    "application/x-nintendo-nes-rom",
    "application/x-google-chrome-extension",
    "application/vnd.ms-cab-compressed",
    "application/vnd.debian.binary-package",
    "application/x-unix-archive",
    "application/x-compress",
    "application/x-lzip",
    "application/x-rpm",
    "application/dicom",
    "application/zstd",
    "application/x-lz4",
    "application/x-ole-storage",
    "application/x-cpio",
    "text/html",
    "text/xml",
    "text/x-shellscript",
    TEXT_PLAIN,
];

/// What [`AllowList::default`] accepts.
const DEFAULT_ALLOWED: &[&str] = &[
    "image/png",
    "image/jpeg",
    "image/gif",
    "image/webp",
    "image/heif",
    "image/tiff",
    "image/bmp",
    "application/pdf",
    "application/msword",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "application/vnd.ms-excel",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "application/vnd.ms-powerpoint",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    "application/vnd.oasis.opendocument.text",
    "application/vnd.oasis.opendocument.spreadsheet",
    "application/vnd.oasis.opendocument.presentation",
    "application/rtf",
    TEXT_PLAIN,
];

/// The MIME types accepted for upload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowList {
    mimes: BTreeSet<&'static str>,
}

impl Default for AllowList {
    /// Images (png, jpeg, gif, webp, heic/heif, tiff, bmp), PDF, office
    /// documents (doc, docx, xls, xlsx, ppt, pptx, odt, ods, odp, rtf) and
    /// plain text.
    fn default() -> AllowList {
        AllowList {
            mimes: DEFAULT_ALLOWED.iter().copied().collect(),
        }
    }
}

impl AllowList {
    /// From a configured list of MIME types (case-insensitive, surrounding
    /// blanks ignored); unknown spellings are an error naming them (only MIME
    /// types `sniff` can produce are accepted in the list). An empty list
    /// accepts nothing.
    pub fn parse(mimes: &[String]) -> Result<AllowList, String> {
        let mut known = BTreeSet::new();
        let mut unknown = Vec::new();
        for mime in mimes {
            let wanted = mime.trim();
            match KNOWN_MIMES.iter().find(|k| k.eq_ignore_ascii_case(wanted)) {
                Some(k) => {
                    known.insert(*k);
                }
                None => unknown.push(format!("{wanted:?}")),
            }
        }
        if unknown.is_empty() {
            return Ok(AllowList { mimes: known });
        }
        Err(format!(
            "unknown MIME type{} in the file allow-list: {}; only types recognised from a \
             file's content are accepted, such as {}",
            if unknown.len() == 1 { "" } else { "s" },
            unknown.join(", "),
            DEFAULT_ALLOWED.join(", ")
        ))
    }

    /// The accepted MIME types, sorted.
    pub fn mimes(&self) -> Vec<&'static str> {
        self.mimes.iter().copied().collect()
    }

    /// Whether `mime` is accepted.
    pub fn allows(&self, mime: &str) -> bool {
        self.mimes.contains(mime)
    }
}

/// Decides the type from the first bytes of the content (the lead passes up to
/// 64 KiB; fewer if the file is smaller). Uses `infer`; if infer finds
/// nothing, the head is text/plain when it is valid UTF-8 (a multi-byte char
/// cut at the end of the head is fine), has no NUL and no control chars but
/// \t \n \r \x0c; otherwise Unknown. A known type not on the list ->
/// NotAllowed. Never trusts names.
pub fn sniff(head: &[u8], allowed: &AllowList) -> Result<Detected, SniffError> {
    if head.is_empty() {
        return Err(SniffError::Empty);
    }
    // infer's BMP is only "BM": a text may start so.
    let found = infer::get(head).filter(|t| t.mime_type() != "image/bmp" || is_bmp(head));
    let (mime, extension) = match found {
        Some(found) => (found.mime_type(), found.extension()),
        None if is_plain_text(head) => (TEXT_PLAIN, "txt"),
        None => return Err(SniffError::Unknown),
    };
    if !allowed.allows(mime) {
        return Err(SniffError::NotAllowed { mime });
    }
    Ok(Detected {
        mime,
        kind: kind_of(mime),
        extension,
    })
}

fn kind_of(mime: &str) -> FileKind {
    if mime.starts_with("image/") {
        FileKind::Image
    } else if mime == "application/pdf" {
        FileKind::Pdf
    } else if mime.starts_with("text/") {
        FileKind::Text
    } else {
        FileKind::Document
    }
}

/// A BMP file header (14 bytes, `BM`...) followed by an info header of a
/// size some version of the format uses.
fn is_bmp(head: &[u8]) -> bool {
    match head.get(14..18) {
        Some(&[a, b, c, d]) => matches!(
            u32::from_le_bytes([a, b, c, d]),
            12 | 40 | 52 | 56 | 108 | 124
        ),
        _ => false,
    }
}

/// Valid UTF-8 (but for a character cut by the end of the head), and no
/// control character other than tab, line feed, carriage return, form feed.
fn is_plain_text(head: &[u8]) -> bool {
    let text = match std::str::from_utf8(head) {
        Ok(text) => text,
        // Incomplete (not invalid) at the very end: the head cut a character.
        Err(e) if e.error_len().is_none() && e.valid_up_to() > 0 => {
            match std::str::from_utf8(&head[..e.valid_up_to()]) {
                Ok(text) => text,
                Err(_) => return false,
            }
        }
        Err(_) => return false,
    };
    !text
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r' | '\x0c'))
}

/// The longest name kept, in bytes.
const MAX_NAME_BYTES: usize = 200;

/// The longest extension (dot included) kept when a long name is cut.
const MAX_KEPT_EXTENSION: usize = 16;

/// The client's file name made safe to keep and to show: last path component
/// only (both / and \), control chars, bidi overrides (U+202A..U+202E,
/// U+2066..U+2069) and zero-width chars removed, leading dots stripped,
/// trimmed, at most 200 bytes (cut at a char boundary, keeping the extension
/// when short), "file" when nothing is left.
///
/// Also removed: the other invisible format characters U+200B..U+200F
/// (zero-width space and joiners, direction marks), U+2060..U+2064, U+FEFF
/// and U+061C. Quotes and other punctuation are kept: a `Content-Disposition`
/// header must still encode the name.
pub fn sanitize_name(claimed: &str) -> String {
    let last = claimed.rsplit(['/', '\\']).next().unwrap_or(claimed);
    let cleaned: String = last.chars().filter(|&c| !is_hidden(c)).collect();
    let trimmed = cleaned
        .trim_start_matches(|c: char| c == '.' || c.is_whitespace())
        .trim_end();
    let name = if trimmed.len() <= MAX_NAME_BYTES {
        trimmed.to_owned()
    } else {
        let (stem, extension) = match trimmed.rfind('.') {
            Some(dot) if trimmed.len() - dot <= MAX_KEPT_EXTENSION => trimmed.split_at(dot),
            _ => (trimmed, ""),
        };
        let stem = cut_at_boundary(stem, MAX_NAME_BYTES - extension.len()).trim_end();
        format!("{stem}{extension}")
    };
    if name.is_empty() {
        "file".to_owned()
    } else {
        name
    }
}

/// Characters that are removed from names: controls, bidi controls,
/// zero-width and other invisible format characters.
fn is_hidden(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{200B}'..='\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2060}'..='\u{2064}'
                | '\u{2066}'..='\u{2069}'
                | '\u{FEFF}'
                | '\u{061C}'
        )
}

/// The longest prefix of `s` of at most `max` bytes that ends on a char
/// boundary.
fn cut_at_boundary(s: &str, max: usize) -> &str {
    let mut end = max.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 1x1 PNG.
    const PNG: &[u8] = &[
        0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A, 0x00, 0x00, 0x00, 0x0D, 0x49, 0x48, 0x44,
        0x52, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1F,
        0x15, 0xC4, 0x89, 0x00, 0x00, 0x00, 0x0D, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9C, 0x63, 0xF8,
        0xCF, 0xC0, 0xF0, 0x1F, 0x00, 0x05, 0x00, 0x01, 0xFF, 0x89, 0x99, 0x3D, 0x1D, 0x00, 0x00,
        0x00, 0x00, 0x49, 0x45, 0x4E, 0x44, 0xAE, 0x42, 0x60, 0x82,
    ];

    /// The start of a JFIF JPEG.
    const JPEG: &[u8] = &[
        0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x10, 0x4A, 0x46, 0x49, 0x46, 0x00, 0x01, 0x01, 0x00, 0x00,
        0x01, 0x00, 0x01, 0x00, 0x00, 0xFF, 0xDB, 0x00, 0x43, 0x00,
    ];

    /// A 1x1 transparent GIF.
    const GIF: &[u8] = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;";

    fn allowed() -> AllowList {
        AllowList::default()
    }

    fn detect(head: &[u8]) -> Result<Detected, SniffError> {
        sniff(head, &allowed())
    }

    fn crc32(data: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &byte in data {
            crc ^= u32::from(byte);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    /// A real (stored, uncompressed) zip of these entries, in order.
    fn zip(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut central = Vec::new();
        for (name, data) in entries {
            let offset = out.len() as u32;
            let crc = crc32(data);
            let mut common = Vec::new();
            common.extend_from_slice(&20u16.to_le_bytes()); // version needed
            common.extend_from_slice(&0u16.to_le_bytes()); // flags
            common.extend_from_slice(&0u16.to_le_bytes()); // stored
            common.extend_from_slice(&0u32.to_le_bytes()); // time, date
            common.extend_from_slice(&crc.to_le_bytes());
            common.extend_from_slice(&(data.len() as u32).to_le_bytes());
            common.extend_from_slice(&(data.len() as u32).to_le_bytes());
            common.extend_from_slice(&(name.len() as u16).to_le_bytes());
            common.extend_from_slice(&0u16.to_le_bytes()); // extra
            out.extend_from_slice(b"PK\x03\x04");
            out.extend_from_slice(&common);
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(data);
            central.extend_from_slice(b"PK\x01\x02");
            central.extend_from_slice(&20u16.to_le_bytes()); // version made by
            central.extend_from_slice(&common);
            central.extend_from_slice(&[0; 8]); // comment, disk, internal attrs
            central.extend_from_slice(&0u32.to_le_bytes()); // external attrs
            central.extend_from_slice(&offset.to_le_bytes());
            central.extend_from_slice(name.as_bytes());
        }
        let central_offset = out.len() as u32;
        out.extend_from_slice(&central);
        out.extend_from_slice(b"PK\x05\x06\0\0\0\0");
        out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
        out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
        out.extend_from_slice(&(central.len() as u32).to_le_bytes());
        out.extend_from_slice(&central_offset.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out
    }

    const CONTENT_TYPES: &[u8] = br#"<?xml version="1.0" encoding="UTF-8"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types"/>"#;
    const RELS: &[u8] = br#"<?xml version="1.0" encoding="UTF-8"?><Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships"/>"#;

    /// The entries in the order Word, Excel and PowerPoint write them.
    fn ooxml(dir: &str, part: &str) -> Vec<u8> {
        zip(&[
            ("[Content_Types].xml", CONTENT_TYPES),
            ("_rels/.rels", RELS),
            (&format!("{dir}/_rels/{part}.rels"), RELS),
            (
                &format!("{dir}/{part}"),
                b"<?xml version=\"1.0\"?><document/>",
            ),
        ])
    }

    #[test]
    fn images() {
        let png = detect(PNG).expect("png");
        assert_eq!(
            (png.mime, png.kind, png.extension),
            ("image/png", FileKind::Image, "png")
        );
        let jpeg = detect(JPEG).expect("jpeg");
        assert_eq!((jpeg.mime, jpeg.extension), ("image/jpeg", "jpg"));
        assert_eq!(detect(GIF).expect("gif").mime, "image/gif");
        let webp = b"RIFF\x24\x00\x00\x00WEBPVP8 \x18\x00\x00\x00";
        assert_eq!(detect(webp).expect("webp").mime, "image/webp");
        let heic = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic";
        let heic = detect(heic).expect("heic");
        assert_eq!((heic.mime, heic.kind), ("image/heif", FileKind::Image));
        let tiff = b"II*\x00\x08\x00\x00\x00\x0e\x00\x00\x01\x03\x00";
        assert_eq!(detect(tiff).expect("tiff").extension, "tif");
        let mut bmp =
            b"BM\x3a\x00\x00\x00\x00\x00\x00\x00\x36\x00\x00\x00\x28\x00\x00\x00".to_vec();
        bmp.resize(58, 0);
        assert_eq!(detect(&bmp).expect("bmp").mime, "image/bmp");
        // "BM" alone does not make an image.
        assert_eq!(
            detect(b"BMI report: normal").expect("text").mime,
            "text/plain"
        );
        assert!(matches!(detect(b"BM\x00\x01"), Err(SniffError::Unknown)));
    }

    #[test]
    fn pdf_and_rtf() {
        let pdf = detect(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n")
            .expect("pdf");
        assert_eq!(
            (pdf.mime, pdf.kind, pdf.extension),
            ("application/pdf", FileKind::Pdf, "pdf")
        );
        let rtf = detect(br"{\rtf1\ansi Hello}").expect("rtf");
        assert_eq!(
            (rtf.mime, rtf.kind),
            ("application/rtf", FileKind::Document)
        );
    }

    #[test]
    fn office_open_xml() {
        let docx = detect(&ooxml("word", "document.xml")).expect("docx");
        assert_eq!(
            (docx.mime, docx.kind, docx.extension),
            (
                "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
                FileKind::Document,
                "docx"
            )
        );
        assert_eq!(
            detect(&ooxml("xl", "workbook.xml"))
                .expect("xlsx")
                .extension,
            "xlsx"
        );
        assert_eq!(
            detect(&ooxml("ppt", "presentation.xml"))
                .expect("pptx")
                .extension,
            "pptx"
        );
        // Only a head of the file is looked at.
        let mut big = ooxml("word", "document.xml");
        big.extend(std::iter::repeat_n(b'x', 100_000));
        assert_eq!(
            detect(&big[..64 * 1024]).expect("docx head").extension,
            "docx"
        );
        // infer wants word/ parts third and fourth (or first): two or three
        // entries are only a zip.
        let two = zip(&[
            ("[Content_Types].xml", CONTENT_TYPES),
            ("word/document.xml", b"<d/>"),
        ]);
        let three = zip(&[
            ("[Content_Types].xml", CONTENT_TYPES),
            ("_rels/.rels", RELS),
            ("word/document.xml", b"<d/>"),
        ]);
        for zip in [two, three] {
            assert!(matches!(
                detect(&zip),
                Err(SniffError::NotAllowed {
                    mime: "application/zip"
                })
            ));
        }
        let first = zip(&[("word/document.xml", b"<d/>")]);
        assert_eq!(detect(&first).expect("word/ first").extension, "docx");
    }

    #[test]
    fn opendocument() {
        let odt = zip(&[
            ("mimetype", b"application/vnd.oasis.opendocument.text"),
            ("content.xml", b"<office:document-content/>"),
        ]);
        assert_eq!(detect(&odt).expect("odt").extension, "odt");
    }

    #[test]
    fn executables_archives_and_scripts_are_refused() {
        let mut elf = b"\x7fELF\x02\x01\x01\x00".to_vec();
        elf.resize(64, 0);
        assert!(matches!(
            detect(&elf),
            Err(SniffError::NotAllowed {
                mime: "application/x-executable"
            })
        ));
        let mut pe = b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff".to_vec();
        pe.resize(128, 0);
        assert!(matches!(
            detect(&pe),
            Err(SniffError::NotAllowed {
                mime: "application/vnd.microsoft.portable-executable"
            })
        ));
        let plain_zip = zip(&[("hello.txt", b"hello")]);
        assert!(matches!(
            detect(&plain_zip),
            Err(SniffError::NotAllowed {
                mime: "application/zip"
            })
        ));
        assert!(matches!(
            detect(b"#!/bin/sh\nrm -rf /\n"),
            Err(SniffError::NotAllowed {
                mime: "text/x-shellscript"
            })
        ));
        assert!(matches!(
            detect(b"<html><script>alert(1)</script></html>"),
            Err(SniffError::NotAllowed { mime: "text/html" })
        ));
        assert!(matches!(
            detect(b"\x1f\x8b\x08\x00\x00\x00\x00\x00"),
            Err(SniffError::NotAllowed {
                mime: "application/gzip"
            })
        ));
    }

    #[test]
    fn plain_text() {
        let text = detect("Blood pressure 120/80\r\n\tNext visit: 3 May — ok ✓\x0c\n".as_bytes())
            .expect("text");
        assert_eq!(
            (text.mime, text.kind, text.extension),
            ("text/plain", FileKind::Text, "txt")
        );
        // A multi-byte character cut by the end of the head.
        let euro = "price: 5 €".as_bytes();
        assert!(detect(&euro[..euro.len() - 1]).is_ok());
        assert!(detect(&euro[..euro.len() - 2]).is_ok());
        // Invalid UTF-8, NUL, other controls: not text.
        for junk in [
            &b"caf\xe9 latin-1"[..],
            b"abc\x00def",
            b"bell\x07",
            b"esc\x1b[31m",
            "c1 \u{85} control".as_bytes(),
            b"\x00\x01\x02\x03\xfe\xfd\xfc",
            b"\xe2",
        ] {
            assert!(matches!(detect(junk), Err(SniffError::Unknown)), "{junk:?}");
        }
    }

    #[test]
    fn empty_and_lists() {
        assert!(matches!(detect(b""), Err(SniffError::Empty)));
        let only_pdf = AllowList::parse(&[" Application/PDF ".to_owned()]).expect("parses");
        assert_eq!(only_pdf.mimes(), vec!["application/pdf"]);
        assert!(matches!(
            sniff(PNG, &only_pdf),
            Err(SniffError::NotAllowed { mime: "image/png" })
        ));
        assert!(matches!(
            sniff(b"hello", &only_pdf),
            Err(SniffError::NotAllowed { mime: "text/plain" })
        ));
        let zips = AllowList::parse(&["application/zip".to_owned()]).expect("parses");
        assert_eq!(
            sniff(&zip(&[("a", b"b")]), &zips).expect("zip").kind,
            FileKind::Document
        );
        let err = AllowList::parse(&[
            "image/png".to_owned(),
            "image/heic".to_owned(),
            "nonsense".to_owned(),
        ])
        .expect_err("unknown types");
        assert!(
            err.contains("\"image/heic\"") && err.contains("\"nonsense\""),
            "{err}"
        );
        assert!(!err.contains("\"image/png\""), "{err}");
        let default = AllowList::default();
        assert_eq!(default.mimes().len(), DEFAULT_ALLOWED.len());
        assert_eq!(
            AllowList::parse(
                &DEFAULT_ALLOWED
                    .iter()
                    .map(|m| m.to_string())
                    .collect::<Vec<_>>()
            ),
            Ok(default)
        );
        assert_eq!(FileKind::Document.as_str(), "document");
    }

    #[test]
    fn known_mimes_are_infers() {
        for mime in KNOWN_MIMES.iter().filter(|m| **m != TEXT_PLAIN) {
            assert!(infer::is_mime_supported(mime), "{mime}");
        }
        for mime in DEFAULT_ALLOWED {
            assert!(KNOWN_MIMES.contains(mime), "{mime}");
        }
    }

    #[test]
    fn arbitrary_heads_never_panic() {
        let magics: [&[u8]; 6] = [
            b"PK\x03\x04",
            b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1",
            b"\x00\x00\x00\x18ftyp",
            b"RIFF",
            b"%PDF",
            b"",
        ];
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..3000 {
            let len = (next() % 700) as usize;
            let mut head = magics[round % magics.len()].to_vec();
            head.extend((0..len).map(|_| next() as u8));
            let _ = detect(&head);
        }
    }

    #[test]
    fn names() {
        let cases: &[(&str, &str)] = &[
            ("report.pdf", "report.pdf"),
            ("../../etc/passwd", "passwd"),
            ("C:\\Users\\ann\\scan 1.png", "scan 1.png"),
            ("dir/sub\\mixed/name.txt", "name.txt"),
            ("folder/", "file"),
            ("..", "file"),
            ("", "file"),
            ("   ", "file"),
            (".htaccess", "htaccess"),
            ("... .hidden ", "hidden"),
            ("  spaced name.docx  ", "spaced name.docx"),
            ("evil\u{202E}fdp.exe", "evilfdp.exe"),
            ("a\u{2066}b\u{2069}c\u{200B}d\u{FEFF}.txt", "abcd.txt"),
            ("tab\there\nnew\u{0}line\u{7f}.txt", "tabherenewline.txt"),
            ("zero\u{200D}width\u{2060}.png", "zerowidth.png"),
            ("\u{202E}", "file"),
            ("résumé 2024.pdf", "résumé 2024.pdf"),
            ("名前.txt", "名前.txt"),
        ];
        for (claimed, want) in cases {
            assert_eq!(sanitize_name(claimed), *want, "{claimed:?}");
        }
    }

    #[test]
    fn long_names_are_cut_keeping_the_extension() {
        let long = format!("{}.pdf", "a".repeat(300));
        let cut = sanitize_name(&long);
        assert_eq!(cut.len(), 200);
        assert!(cut.ends_with("aaa.pdf"));
        // Multi-byte characters are never split.
        let long = format!("{}.docx", "é".repeat(150));
        let cut = sanitize_name(&long);
        assert!(cut.len() <= 200 && cut.ends_with("é.docx"), "{cut}");
        // A long "extension" is not one: cut at 200 bytes.
        let long = format!("x.{}", "b".repeat(300));
        assert_eq!(sanitize_name(&long).len(), 200);
        let long = "😀".repeat(100);
        let cut = sanitize_name(&long);
        assert_eq!(cut.len(), 200);
        assert!(cut.chars().all(|c| c == '😀'));
        // Exactly 200 bytes is kept whole.
        let exact = format!("{}.txt", "n".repeat(196));
        assert_eq!(sanitize_name(&exact), exact);
    }
}
