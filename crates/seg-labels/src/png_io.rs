//! Reading and writing the PNG files that carry images and label maps, with errors that name
//! the file and the reason. Label decoding never goes through RGB: palette PNGs give their
//! indices, 16-bit SYNTHIA labels give the first channel's full 16-bit value. Declared sizes are
//! bounded before anything is allocated.

use std::io::{BufReader, Cursor};
use std::path::{Path, PathBuf};

/// Largest image accepted, in pixels (a decompression-bomb guard: 8192 × 8192).
pub const MAX_PIXELS: u64 = 8192 * 8192;

/// What went wrong with one PNG file.
#[derive(Debug, thiserror::Error)]
pub enum PngError {
    /// The reason is in the message (not also a `source`, which would print it twice).
    #[error("{path}: cannot read file: {cause}")]
    Io { path: PathBuf, cause: std::io::Error },
    #[error("{path}: not a valid PNG ({reason})")]
    Corrupt { path: PathBuf, reason: String },
    /// A file whose content is a JPEG (read by content wherever an image is read).
    #[error("{path}: not a valid JPEG ({reason})")]
    Jpeg { path: PathBuf, reason: String },
    #[error("{path}: declared size {width}x{height} exceeds the limit of {max} pixels")]
    TooLarge {
        path: PathBuf,
        width: u32,
        height: u32,
        max: u64,
    },
    #[error("{path}: {found} where {expected} is expected")]
    WrongEncoding {
        path: PathBuf,
        found: String,
        expected: &'static str,
    },
    #[error("{path}: cannot write PNG: {reason}")]
    Write { path: PathBuf, reason: String },
}

impl PngError {
    /// The file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            PngError::Io { path, .. }
            | PngError::Corrupt { path, .. }
            | PngError::Jpeg { path, .. }
            | PngError::TooLarge { path, .. }
            | PngError::WrongEncoding { path, .. }
            | PngError::Write { path, .. } => path,
        }
    }

    /// The message without the file's name in front, for lists that name the file beside it.
    pub fn reason(&self) -> String {
        let text = self.to_string();
        let prefix = format!("{}: ", self.path().display());
        text.strip_prefix(&prefix).map(str::to_string).unwrap_or(text)
    }
}

/// Whether a file is named as a JPEG (`.jpg`, `.jpeg`, any case): one whose content is neither a
/// PNG nor a JPEG (empty, cut before its first marker) is then refused as a JPEG.
fn named_jpeg(path: &Path) -> bool {
    path.extension()
        .is_some_and(|x| x.eq_ignore_ascii_case("jpg") || x.eq_ignore_ascii_case("jpeg"))
}

const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];

/// An 8-bit RGB image, row-major, `data.len() == 3 * width * height`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    pub width: u32,
    pub height: u32,
    pub data: Vec<u8>,
}

/// A label map of raw (dataset-specific) values, row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelImage {
    pub width: u32,
    pub height: u32,
    pub data: Vec<u16>,
}

/// How a label PNG is expected to be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabelEncoding {
    /// One channel of ids: 8-bit grayscale (`L`) or palette indices (`P`), as Cityscapes
    /// `labelIds`/`labelTrainIds`, GTA5 labels and prediction PNGs are read by PIL; 16-bit
    /// grayscale too when every value is at most 255 (a label re-saved with 16 bits).
    Ids8,
    /// SYNTHIA `GT/LABELS`: 16 bits per channel, class id in the first channel.
    Synthia16,
    /// Cityscapes `*_gtFine_instanceIds.png`: one 16-bit grayscale channel (as cityscapesScripts
    /// writes it; 8 bits cannot hold an instance); values ≥ 1000 are `label id × 1000 + instance`, smaller ones plain label ids.
    Instance16,
    /// One channel of ids, 8 bits or fewer ([`LabelEncoding::Ids8`]) or 16-bit grayscale with
    /// any values, as PIL and numpy read either: prediction and ground-truth folders of
    /// `eval --pred`, whose ids the caller checks.
    AnyIds,
}

impl LabelEncoding {
    fn describe(self) -> &'static str {
        match self {
            LabelEncoding::Ids8 => "a single-channel 8-bit label-id PNG (grayscale or palette)",
            LabelEncoding::Synthia16 => "a 16-bit SYNTHIA label PNG (class id in the first channel)",
            LabelEncoding::Instance16 => "a single-channel 16-bit instance-id PNG (Cityscapes instanceIds)",
            LabelEncoding::AnyIds => "a single-channel id PNG (8-bit grayscale or palette, or 16-bit grayscale)",
        }
    }
}

fn describe_png(color: png::ColorType, depth: png::BitDepth) -> String {
    let bits = depth as u8;
    let what = match color {
        png::ColorType::Grayscale => "grayscale",
        png::ColorType::Rgb => "colour (RGB)",
        png::ColorType::Indexed => "palette",
        png::ColorType::GrayscaleAlpha => "grayscale+alpha",
        png::ColorType::Rgba => "colour (RGBA)",
    };
    format!("a {bits}-bit {what} PNG")
}

fn read_file(path: &Path) -> Result<Vec<u8>, PngError> {
    crate::fsutil::read_regular(path).map_err(|cause| PngError::Io {
        path: path.to_path_buf(),
        cause,
    })
}

/// The png decoder's message with each chunk's debug form (`ChunkType { type: IDAT, critical:
/// true, … }`) written as its name (`IDAT`).
fn chunk_names(message: &str) -> String {
    const OPEN: &str = "ChunkType { type: ";
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find(OPEN) {
        let after = &rest[at + OPEN.len()..];
        let (Some(comma), Some(close)) = (after.find(','), after.find('}')) else {
            break;
        };
        if comma > close {
            break;
        }
        out.push_str(&rest[..at]);
        out.push_str(&after[..comma]);
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    out
}

fn corrupt(path: &Path, e: impl std::fmt::Display) -> PngError {
    let mut reason = chunk_names(&e.to_string());
    if reason.contains("end of file") || reason.contains("UnexpectedEof") || reason.contains("unexpected EOF") {
        reason = format!("truncated: {reason}");
    }
    PngError::Corrupt {
        path: path.to_path_buf(),
        reason,
    }
}

/// The declared `(width, height)` of a PNG from its first 24 bytes (signature and IHDR; a
/// JPEG's from its frame header), without reading the rest of the file: cheap enough to check every pair of a large dataset up front.
pub fn read_size(path: &Path) -> Result<(u32, u32), PngError> {
    use std::io::Read;
    let mut head = [0u8; 24];
    let mut file = std::fs::File::open(path).map_err(|cause| PngError::Io {
        path: path.to_path_buf(),
        cause,
    })?;
    let mut got = 0;
    while got < head.len() {
        match file.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(cause) => {
                return Err(PngError::Io {
                    path: path.to_path_buf(),
                    cause,
                })
            }
        }
    }
    if got == 0 && named_jpeg(path) {
        return Err(PngError::Jpeg {
            path: path.to_path_buf(),
            reason: "empty file".into(),
        });
    }
    if got == 0 {
        return Err(corrupt(path, "empty file"));
    }
    if head.starts_with(&[0xFF, 0xD8, 0xFF]) || (named_jpeg(path) && !head.starts_with(&PNG_SIGNATURE)) {
        // A JPEG (read by its content, as `decode_rgb` reads it): its frame header.
        use std::io::Seek;
        file.rewind().map_err(|cause| PngError::Io {
            path: path.to_path_buf(),
            cause,
        })?;
        let reader = image::ImageReader::with_format(BufReader::new(file), image::ImageFormat::Jpeg);
        return reader.into_dimensions().map_err(|e| PngError::Jpeg {
            path: path.to_path_buf(),
            reason: e.to_string().trim_end().to_string(),
        });
    }
    if got < head.len() || head[..8] != PNG_SIGNATURE || &head[12..16] != b"IHDR" {
        return Err(corrupt(path, "no PNG signature and IHDR header"));
    }
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    Ok((be(&head[16..20]), be(&head[20..24])))
}

/// Reads the header only: `(width, height, colour type, bit depth)`.
pub fn probe(path: &Path) -> Result<(u32, u32), PngError> {
    let bytes = read_file(path)?;
    let (info, _) = open(path, &bytes, png::Transformations::IDENTITY)?;
    Ok((info.0, info.1))
}

type Header = (u32, u32, png::ColorType, png::BitDepth);
type MemReader<'a> = png::Reader<BufReader<Cursor<&'a [u8]>>>;

fn open<'a>(
    path: &Path,
    bytes: &'a [u8],
    transform: png::Transformations,
) -> Result<(Header, MemReader<'a>), PngError> {
    if bytes.is_empty() {
        return Err(PngError::Corrupt {
            path: path.to_path_buf(),
            reason: "empty file".into(),
        });
    }
    let limits = png::Limits {
        bytes: (MAX_PIXELS * 8) as usize,
    };
    let mut dec = png::Decoder::new_with_limits(BufReader::new(Cursor::new(bytes)), limits);
    dec.set_transformations(transform);
    let reader = dec.read_info().map_err(|e| corrupt(path, e))?;
    let info = reader.info();
    let (w, h) = (info.width, info.height);
    if w as u64 * h as u64 > MAX_PIXELS {
        return Err(PngError::TooLarge {
            path: path.to_path_buf(),
            width: w,
            height: h,
            max: MAX_PIXELS,
        });
    }
    if w == 0 || h == 0 {
        return Err(PngError::Corrupt {
            path: path.to_path_buf(),
            reason: "zero width or height".into(),
        });
    }
    Ok(((w, h, info.color_type, info.bit_depth), reader))
}

fn decode_frame<R: std::io::BufRead + std::io::Seek>(
    path: &Path,
    reader: &mut png::Reader<R>,
) -> Result<Vec<u8>, PngError> {
    let size = reader.output_buffer_size().ok_or_else(|| PngError::Corrupt {
        path: path.to_path_buf(),
        reason: "image too large".into(),
    })?;
    let mut buf = vec![0u8; size];
    let out = reader.next_frame(&mut buf).map_err(|e| corrupt(path, e))?;
    buf.truncate(out.buffer_size());
    Ok(buf)
}

/// Decodes any PNG (or JPEG) as 8-bit RGB (palette expanded, gray replicated, alpha dropped,
/// 16-bit reduced to its high byte).
pub fn read_rgb(path: &Path) -> Result<RgbImage, PngError> {
    let bytes = read_file(path)?;
    decode_rgb(path, &bytes)
}

/// Whether a JPEG file ends its last scan: an end-of-image marker (`FF D9`) must follow the last
/// start-of-scan marker (`FF DA`). Neither pair can occur inside entropy-coded data (a coded
/// `FF` is followed by `00` or a restart marker), so a file cut inside a scan has none after it.
/// The decoder fills a cut scan with grey and reports nothing, as PIL's "image file is
/// truncated" does not.
pub fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let last = |marker: u8| bytes.windows(2).rposition(|w| w == [0xFF, marker]);
    match (last(0xDA), last(0xD9)) {
        (Some(sos), Some(eoi)) => eoi > sos,
        _ => false,
    }
}

/// A JPEG as 8-bit RGB (the size bounded before decoding, a file cut short refused).
fn decode_jpeg(path: &Path, bytes: &[u8]) -> Result<RgbImage, PngError> {
    let bad = |reason: String| PngError::Jpeg {
        path: path.to_path_buf(),
        reason,
    };
    if bytes.is_empty() {
        return Err(bad("empty file".into()));
    }
    let reader = image::ImageReader::with_format(Cursor::new(bytes), image::ImageFormat::Jpeg);
    let (w, h) = reader
        .into_dimensions()
        .map_err(|e| bad(e.to_string().trim_end().to_string()))?;
    if w as u64 * h as u64 > MAX_PIXELS {
        return Err(PngError::TooLarge {
            path: path.to_path_buf(),
            width: w,
            height: h,
            max: MAX_PIXELS,
        });
    }
    if !jpeg_is_complete(bytes) {
        return Err(bad("truncated JPEG: no end-of-image marker after its last scan".into()));
    }
    let img = image::load_from_memory_with_format(bytes, image::ImageFormat::Jpeg)
        .map_err(|e| bad(e.to_string().trim_end().to_string()))?
        .to_rgb8();
    Ok(RgbImage {
        width: img.width(),
        height: img.height(),
        data: img.into_raw(),
    })
}

/// [`read_rgb`] from bytes already in memory; `path` only names the file in errors. A JPEG is
/// read by its content whatever its name (as PIL and OpenCV read a file).
pub fn decode_rgb(path: &Path, bytes: &[u8]) -> Result<RgbImage, PngError> {
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) || (named_jpeg(path) && !bytes.starts_with(&PNG_SIGNATURE)) {
        return decode_jpeg(path, bytes);
    }
    let ((w, h, _, _), mut reader) = open(path, bytes, png::Transformations::EXPAND)?;
    let buf = decode_frame(path, &mut reader)?;
    let (color, depth) = reader.output_color_type();
    let n = (w * h) as usize;
    let step = if depth == png::BitDepth::Sixteen { 2 } else { 1 };
    let channels = match color {
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        png::ColorType::Indexed => {
            return Err(corrupt(path, "palette was not expanded"));
        }
    };
    if buf.len() < n * channels * step {
        return Err(corrupt(path, "pixel data shorter than the header declares"));
    }
    let mut data = Vec::with_capacity(n * 3);
    for px in buf.chunks_exact(channels * step).take(n) {
        let at = |c: usize| px[c * step];
        if channels < 3 {
            data.extend_from_slice(&[at(0); 3]);
        } else {
            data.extend_from_slice(&[at(0), at(1), at(2)]);
        }
    }
    Ok(RgbImage {
        width: w,
        height: h,
        data,
    })
}

/// Decodes a label PNG with the expected encoding, refusing anything else with a message
/// that names what the file actually is.
pub fn read_label(path: &Path, encoding: LabelEncoding) -> Result<LabelImage, PngError> {
    let bytes = read_file(path)?;
    decode_label(path, &bytes, encoding)
}

/// [`read_label`] from bytes already in memory; `path` only names the file in errors.
pub fn decode_label(path: &Path, bytes: &[u8], encoding: LabelEncoding) -> Result<LabelImage, PngError> {
    let ((w, h, color, depth), mut reader) = open(path, bytes, png::Transformations::IDENTITY)?;
    let wrong = |hint: &str| PngError::WrongEncoding {
        path: path.to_path_buf(),
        found: format!("{}{hint}", describe_png(color, depth)),
        expected: encoding.describe(),
    };
    let bits = depth as u8;
    match (encoding, color) {
        (LabelEncoding::Ids8 | LabelEncoding::AnyIds, png::ColorType::Grayscale | png::ColorType::Indexed)
            if bits <= 8 => {}
        // 16-bit grey ids are read as numpy reads PIL's mode I;16, as long as they are ids
        // (checked below for Ids8).
        (LabelEncoding::Ids8 | LabelEncoding::AnyIds, png::ColorType::Grayscale) if bits == 16 => {}
        (LabelEncoding::Ids8 | LabelEncoding::AnyIds, png::ColorType::Rgb | png::ColorType::Rgba) => {
            return Err(wrong(
                " (a colour image: label ids must be one channel, not a *_color.png rendering)",
            ))
        }
        (LabelEncoding::Synthia16, png::ColorType::Rgb | png::ColorType::Rgba | png::ColorType::Grayscale)
            if bits == 16 => {}
        (LabelEncoding::Synthia16, png::ColorType::Rgb | png::ColorType::Rgba) => {
            return Err(wrong(
                " (8-bit colour: a GT/COLOR rendering, or a label re-saved by a tool that dropped the high byte?)",
            ))
        }
        (LabelEncoding::Instance16, png::ColorType::Grayscale) if bits == 16 => {}
        (LabelEncoding::Instance16, png::ColorType::Grayscale | png::ColorType::Indexed) => {
            return Err(wrong(
                " (8 bits cannot hold label id × 1000 + instance: a labelIds file, or re-saved by a tool that dropped the high byte?)",
            ))
        }
        _ => return Err(wrong("")),
    }
    let buf = decode_frame(path, &mut reader)?;
    let n = (w as usize) * (h as usize);
    let row_bytes = (w as usize * bits as usize).div_ceil(8);
    let data: Vec<u16> = match encoding {
        LabelEncoding::Ids8 | LabelEncoding::Instance16 | LabelEncoding::AnyIds if bits == 16 => {
            if buf.len() < n * 2 {
                return Err(corrupt(path, "pixel data shorter than the header declares"));
            }
            let values: Vec<u16> = buf
                .chunks_exact(2)
                .take(n)
                .map(|px| u16::from_be_bytes([px[0], px[1]]))
                .collect();
            let max = values.iter().copied().max().unwrap_or(0);
            if encoding == LabelEncoding::Ids8 && max > 255 {
                return Err(wrong(&format!(
                    " with values up to {max}: an instanceIds or SYNTHIA-style file?"
                )));
            }
            values
        }
        LabelEncoding::Ids8 | LabelEncoding::Instance16 | LabelEncoding::AnyIds => {
            if buf.len() < row_bytes * h as usize {
                return Err(corrupt(path, "pixel data shorter than the header declares"));
            }
            if bits == 8 {
                buf[..n].iter().map(|&v| v as u16).collect()
            } else {
                // Packed 1/2/4-bit rows: unpack each row's values, most significant bits first.
                // Palette indices are the values. Grey samples of 2 and 4 bits are scaled to 8
                // bits (× 85, × 17), as the PNG specification and PIL read them (an optimiser
                // stores an image of 0, 17, …, 255 as 4 bits); 1-bit grey stays 0/1, as numpy
                // reads PIL's mode "1".
                let per_byte = 8 / bits as usize;
                let mask = (1u16 << bits) - 1;
                let scale = match (color, bits) {
                    (png::ColorType::Grayscale, 2 | 4) => 255 / mask,
                    _ => 1,
                };
                let mut out = Vec::with_capacity(n);
                for row in buf.chunks_exact(row_bytes).take(h as usize) {
                    for x in 0..w as usize {
                        let byte = row[x / per_byte] as u16;
                        let shift = 8 - bits as usize * (x % per_byte + 1);
                        out.push(((byte >> shift) & mask) * scale);
                    }
                }
                out
            }
        }
        LabelEncoding::Synthia16 => {
            let channels = match color {
                png::ColorType::Grayscale => 1,
                png::ColorType::Rgb => 3,
                _ => 4,
            };
            if buf.len() < n * channels * 2 {
                return Err(corrupt(path, "pixel data shorter than the header declares"));
            }
            buf.chunks_exact(channels * 2)
                .take(n)
                .map(|px| u16::from_be_bytes([px[0], px[1]]))
                .collect()
        }
    };
    Ok(LabelImage {
        width: w,
        height: h,
        data,
    })
}

fn encode(
    path: &Path,
    width: u32,
    height: u32,
    color: png::ColorType,
    depth: png::BitDepth,
    palette: Option<Vec<u8>>,
    data: &[u8],
) -> Result<Vec<u8>, PngError> {
    let err = |e: png::EncodingError| PngError::Write {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, width, height);
        enc.set_color(color);
        enc.set_depth(depth);
        enc.set_compression(png::Compression::Fast);
        if let Some(p) = palette {
            enc.set_palette(p);
        }
        let mut w = enc.write_header().map_err(err)?;
        w.write_image_data(data).map_err(err)?;
        w.finish().map_err(err)?;
    }
    Ok(out)
}

/// Encodes and writes atomically.
fn write_png(
    path: &Path,
    (width, height): (u32, u32),
    color: png::ColorType,
    depth: png::BitDepth,
    palette: Option<Vec<u8>>,
    data: &[u8],
) -> Result<(), PngError> {
    save(path, &encode(path, width, height, color, depth, palette, data)?)
}

fn save(path: &Path, bytes: &[u8]) -> Result<(), PngError> {
    crate::fsutil::write_atomic(path, bytes).map_err(|e| PngError::Write {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

fn check_len(path: &Path, got: usize, want: usize) -> Result<(), PngError> {
    if got != want {
        return Err(PngError::Write {
            path: path.to_path_buf(),
            reason: format!("buffer holds {got} values, the image needs {want}"),
        });
    }
    Ok(())
}

/// Encodes an 8-bit RGB PNG.
pub fn encode_rgb(path: &Path, img: &RgbImage) -> Result<Vec<u8>, PngError> {
    check_len(path, img.data.len(), 3 * (img.width * img.height) as usize)?;
    encode(
        path,
        img.width,
        img.height,
        png::ColorType::Rgb,
        png::BitDepth::Eight,
        None,
        &img.data,
    )
}

/// Writes an 8-bit RGB PNG atomically.
pub fn write_rgb(path: &Path, img: &RgbImage) -> Result<(), PngError> {
    save(path, &encode_rgb(path, img)?)
}

/// Writes an 8-bit grayscale (`L`) PNG of ids atomically, as Cityscapes `labelIds` are stored.
pub fn write_gray8(path: &Path, width: u32, height: u32, ids: &[u8]) -> Result<(), PngError> {
    check_len(path, ids.len(), (width * height) as usize)?;
    write_png(
        path,
        (width, height),
        png::ColorType::Grayscale,
        png::BitDepth::Eight,
        None,
        ids,
    )
}

/// Writes an 8-bit palette (`P`) PNG atomically, as GTA5 labels are stored: index = label id.
pub fn write_palette8(path: &Path, width: u32, height: u32, ids: &[u8], palette: &[[u8; 3]]) -> Result<(), PngError> {
    check_len(path, ids.len(), (width * height) as usize)?;
    let pal: Vec<u8> = palette.iter().flatten().copied().collect();
    write_png(
        path,
        (width, height),
        png::ColorType::Indexed,
        png::BitDepth::Eight,
        Some(pal),
        ids,
    )
}

/// Writes a 16-bit-per-channel RGB PNG atomically, as SYNTHIA `GT/LABELS` are stored.
pub fn write_rgb16(path: &Path, width: u32, height: u32, pixels: &[[u16; 3]]) -> Result<(), PngError> {
    check_len(path, pixels.len(), (width * height) as usize)?;
    let bytes: Vec<u8> = pixels
        .iter()
        .flat_map(|p| p.iter().flat_map(|c| c.to_be_bytes()))
        .collect();
    write_png(
        path,
        (width, height),
        png::ColorType::Rgb,
        png::BitDepth::Sixteen,
        None,
        &bytes,
    )
}

/// Writes a 16-bit grayscale PNG atomically (Cityscapes `instanceIds`).
pub fn write_gray16(path: &Path, width: u32, height: u32, values: &[u16]) -> Result<(), PngError> {
    check_len(path, values.len(), (width * height) as usize)?;
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_be_bytes()).collect();
    write_png(
        path,
        (width, height),
        png::ColorType::Grayscale,
        png::BitDepth::Sixteen,
        None,
        &bytes,
    )
}

/// Writes an 8-bit RGBA PNG atomically (Cityscapes `*_gtFine_color.png`).
pub fn write_rgba(path: &Path, width: u32, height: u32, rgba: &[u8]) -> Result<(), PngError> {
    check_len(path, rgba.len(), 4 * (width * height) as usize)?;
    write_png(
        path,
        (width, height),
        png::ColorType::Rgba,
        png::BitDepth::Eight,
        None,
        rgba,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_round_trips_in_every_encoding() {
        let dir = tempfile::tempdir().unwrap();
        let ids: Vec<u8> = (0..35u8).map(|i| i % 34).collect();
        let p = dir.path().join("l.png");
        write_gray8(&p, 7, 5, &ids).unwrap();
        let l = read_label(&p, LabelEncoding::Ids8).unwrap();
        assert_eq!((l.width, l.height), (7, 5));
        assert_eq!(l.data, ids.iter().map(|&v| v as u16).collect::<Vec<_>>());

        let pal = crate::cityscapes::label_id_palette();
        write_palette8(&p, 7, 5, &ids, &pal).unwrap();
        assert_eq!(read_label(&p, LabelEncoding::Ids8).unwrap().data, l.data);
        // As RGB the palette gives the colours, never the ids.
        let rgb = read_rgb(&p).unwrap();
        assert_eq!(&rgb.data[7 * 3..7 * 3 + 3], &[128, 64, 128]);

        let px: Vec<[u16; 3]> = (0..35u16).map(|i| [i * 300, 7, 0]).collect();
        write_rgb16(&p, 7, 5, &px).unwrap();
        let s = read_label(&p, LabelEncoding::Synthia16).unwrap();
        assert_eq!(s.data, (0..35u16).map(|i| i * 300).collect::<Vec<_>>());
        let err = read_label(&p, LabelEncoding::Ids8).unwrap_err().to_string();
        assert!(err.contains("16-bit colour (RGB)") && err.contains("l.png"), "{err}");
    }

    #[test]
    fn bad_files_name_the_file_and_reason() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.png");
        std::fs::write(&p, b"").unwrap();
        let e = read_label(&p, LabelEncoding::Ids8).unwrap_err().to_string();
        assert!(e.contains("bad.png") && e.contains("empty"), "{e}");

        let img = RgbImage {
            width: 16,
            height: 16,
            data: vec![200; 16 * 16 * 3],
        };
        write_rgb(&p, &img).unwrap();
        let e = read_label(&p, LabelEncoding::Ids8).unwrap_err().to_string();
        assert!(e.contains("colour image"), "{e}");
        let e = read_label(&p, LabelEncoding::Synthia16).unwrap_err().to_string();
        assert!(e.contains("8-bit colour"), "{e}");

        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
        let e = read_rgb(&p).unwrap_err().to_string();
        assert!(e.contains("bad.png") && e.contains("not a valid PNG"), "{e}");

        let e = read_rgb(&dir.path().join("missing.png")).unwrap_err().to_string();
        assert!(e.contains("missing.png") && e.contains("cannot read"), "{e}");

        // A chunk whose checksum does not match is named by its type, not the decoder's debug
        // form of it.
        let mut bytes = bytes.clone();
        let last = bytes.len() - 13; // the byte before IEND's length field: IDAT's CRC
        bytes[last] ^= 0xff;
        std::fs::write(&p, &bytes).unwrap();
        let e = read_rgb(&p).unwrap_err().to_string();
        assert!(
            e.contains("CRC") && e.contains("IDAT") && !e.contains("ChunkType"),
            "{e}"
        );
        assert_eq!(
            chunk_names("x ChunkType { type: IDAT, critical: true, private: false } chunk, ChunkType { type: tEXt, critical: false }."),
            "x IDAT chunk, tEXt."
        );
    }

    #[test]
    fn huge_declared_size_is_refused_before_allocation() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bomb.png");
        write_gray8(&p, 4, 4, &[0; 16]).unwrap();
        let mut bytes = std::fs::read(&p).unwrap();
        // IHDR width/height live at offsets 16..24; declare 100000 x 100000.
        bytes[16..20].copy_from_slice(&100_000u32.to_be_bytes());
        bytes[20..24].copy_from_slice(&100_000u32.to_be_bytes());
        // Fix the IHDR CRC so the decoder gets as far as the size check.
        let crc = crc32(&bytes[12..29]);
        bytes[29..33].copy_from_slice(&crc.to_be_bytes());
        std::fs::write(&p, &bytes).unwrap();
        let e = read_label(&p, LabelEncoding::Ids8).unwrap_err().to_string();
        assert!(
            e.contains("bomb.png") && (e.contains("exceeds") || e.contains("limit")),
            "{e}"
        );
    }

    fn crc32(data: &[u8]) -> u32 {
        let mut crc = 0xFFFF_FFFFu32;
        for &b in data {
            crc ^= b as u32;
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
    /// A PNG of any colour type and bit depth, written with the `png` crate directly.
    fn raw_png(path: &Path, w: u32, h: u32, color: png::ColorType, depth: png::BitDepth, data: &[u8]) {
        let file = std::fs::File::create(path).unwrap();
        let mut enc = png::Encoder::new(std::io::BufWriter::new(file), w, h);
        enc.set_color(color);
        enc.set_depth(depth);
        enc.write_header().unwrap().write_image_data(data).unwrap();
    }

    /// The bit-depth rows of the malformed-input matrix: images take any depth and colour
    /// type (as PIL's `convert("RGB")`), labels only one channel of 1-8 bits (or SYNTHIA's 16).
    #[test]
    fn bit_depths_and_alpha_are_read_or_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.png");
        // RGBA image: alpha dropped.
        raw_png(
            &p,
            2,
            1,
            png::ColorType::Rgba,
            png::BitDepth::Eight,
            &[1, 2, 3, 0, 4, 5, 6, 255],
        );
        assert_eq!(read_rgb(&p).unwrap().data, vec![1, 2, 3, 4, 5, 6]);
        // 16-bit RGB image: high bytes.
        raw_png(
            &p,
            1,
            1,
            png::ColorType::Rgb,
            png::BitDepth::Sixteen,
            &[9, 1, 8, 2, 7, 3],
        );
        assert_eq!(read_rgb(&p).unwrap().data, vec![9, 8, 7]);
        // Low-bit grayscale labels as PIL (and so the official evaluator) reads them: 4 and 2
        // bits scaled to 8 (× 17, × 85), 1 bit as 0/1; palette indices as they are.
        raw_png(&p, 4, 1, png::ColorType::Grayscale, png::BitDepth::Four, &[0x7B, 0x1F]);
        assert_eq!(
            read_label(&p, LabelEncoding::Ids8).unwrap().data,
            vec![119, 187, 17, 255]
        );
        raw_png(&p, 4, 1, png::ColorType::Grayscale, png::BitDepth::Two, &[0x1B]);
        assert_eq!(read_label(&p, LabelEncoding::Ids8).unwrap().data, vec![0, 85, 170, 255]);
        raw_png(&p, 4, 1, png::ColorType::Grayscale, png::BitDepth::One, &[0xA0]);
        assert_eq!(read_label(&p, LabelEncoding::Ids8).unwrap().data, vec![1, 0, 1, 0]);
        // Grayscale + alpha label: refused, naming what it is.
        raw_png(
            &p,
            1,
            1,
            png::ColorType::GrayscaleAlpha,
            png::BitDepth::Eight,
            &[7, 255],
        );
        let e = read_label(&p, LabelEncoding::Ids8).unwrap_err().to_string();
        assert!(
            e.contains("x.png") && e.contains("8-bit grayscale+alpha PNG") && e.contains("single-channel 8-bit"),
            "{e}"
        );
        // 16-bit grayscale where 8-bit ids are expected (an instanceIds file).
        raw_png(
            &p,
            1,
            1,
            png::ColorType::Grayscale,
            png::BitDepth::Sixteen,
            &[0x6A, 0x01],
        );
        let e = read_label(&p, LabelEncoding::Ids8).unwrap_err().to_string();
        assert!(
            e.contains("16-bit grayscale") && e.contains("up to 27137") && e.contains("instanceIds"),
            "{e}"
        );
        // Any ids, as `eval --pred` reads both folders: the values as they are, in one decode.
        assert_eq!(read_label(&p, LabelEncoding::AnyIds).unwrap().data, vec![27137]);
        // 16-bit grayscale ids (a label re-saved with 16 bits) are read as ids, as numpy does.
        raw_png(
            &p,
            2,
            1,
            png::ColorType::Grayscale,
            png::BitDepth::Sixteen,
            &[0, 26, 0, 255],
        );
        assert_eq!(read_label(&p, LabelEncoding::Ids8).unwrap().data, vec![26, 255]);
        assert_eq!(read_label(&p, LabelEncoding::AnyIds).unwrap().data, vec![26, 255]);
        raw_png(&p, 1, 1, png::ColorType::Rgb, png::BitDepth::Eight, &[1, 2, 3]);
        let e = read_label(&p, LabelEncoding::AnyIds).unwrap_err().to_string();
        assert!(
            e.contains("a colour image") && e.contains("single-channel id PNG"),
            "{e}"
        );
        // 8-bit grayscale where SYNTHIA's 16-bit labels are expected.
        raw_png(&p, 1, 1, png::ColorType::Grayscale, png::BitDepth::Eight, &[3]);
        let e = read_label(&p, LabelEncoding::Synthia16).unwrap_err().to_string();
        assert!(e.contains("8-bit grayscale PNG") && e.contains("16-bit SYNTHIA"), "{e}");
    }

    #[test]
    fn a_file_named_as_a_jpeg_that_is_neither_format_is_refused_as_a_jpeg() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("3384801.jpg");
        std::fs::write(&p, b"").unwrap();
        for e in [read_rgb(&p).unwrap_err(), read_size(&p).unwrap_err()] {
            let text = e.to_string();
            assert!(text.contains("not a valid JPEG (empty file)"), "{text}");
            assert_eq!(e.reason(), "not a valid JPEG (empty file)");
            assert_eq!(e.path(), p.as_path());
        }
        std::fs::write(&p, b"GIF89a not an image").unwrap();
        let e = read_rgb(&p).unwrap_err().to_string();
        assert!(e.contains("3384801.jpg: not a valid JPEG"), "{e}");
        // A missing file's reason does not repeat its name.
        std::fs::remove_file(&p).unwrap();
        let e = read_rgb(&p).unwrap_err();
        assert!(e.reason().starts_with("cannot read file"), "{}", e.reason());
        // Named .png, an empty file is still an empty PNG.
        let q = dir.path().join("a.png");
        std::fs::write(&q, b"").unwrap();
        assert!(read_rgb(&q)
            .unwrap_err()
            .to_string()
            .contains("not a valid PNG (empty file)"));
    }
}
