//! Is this a video? A look at the first bytes of an upload for the signature of a video
//! container, before anything is stored.
//!
//! Only the container is checked (not the codecs inside): the converter's ffmpeg has the final
//! word. The point is to refuse, early and cheaply, what is plainly not a video (text, images,
//! archives, audio-only formats with their own signatures).

/// How many leading bytes [`container`] wants to see; fewer is fine for a shorter file.
pub const PREFIX_LEN: usize = 256;

/// MPEG transport stream packet size, and the M2TS (Blu-ray) variant with a 4-byte timecode.
const TS_PACKET: usize = 188;
const M2TS_PACKET: usize = 192;

const ASF_GUID: [u8; 16] = [
    0x30, 0x26, 0xB2, 0x75, 0x8E, 0x66, 0xCF, 0x11, 0xA6, 0xD9, 0x00, 0xAA, 0x00, 0x62, 0xCE, 0x6C,
];

/// The container format `prefix` (the first up to [`PREFIX_LEN`] bytes of the file) starts
/// like, or `None` if it is no known video container.
pub fn container(prefix: &[u8]) -> Option<&'static str> {
    let at = |offset: usize, magic: &[u8]| prefix.get(offset..offset + magic.len()) == Some(magic);
    if at(4, b"ftyp") {
        // ISO base media: MP4, MOV, 3GP, M4V (the brand after `ftyp` says which).
        return Some("iso-bmff");
    }
    if at(4, b"moov") || at(4, b"mdat") || at(4, b"wide") {
        // QuickTime files from before `ftyp` existed start straight with an atom.
        return Some("quicktime");
    }
    if at(0, &[0x1A, 0x45, 0xDF, 0xA3]) {
        return Some("matroska");
    }
    if at(0, b"RIFF") && at(8, b"AVI ") {
        return Some("avi");
    }
    if at(0, b"FLV") && at(3, &[0x01]) {
        return Some("flv");
    }
    if at(0, &[0x00, 0x00, 0x01, 0xBA]) {
        return Some("mpeg-ps");
    }
    if at(0, &[0x00, 0x00, 0x01, 0xB3]) {
        return Some("mpeg-video");
    }
    if at(0, b"OggS") {
        return Some("ogg");
    }
    if at(0, &ASF_GUID) {
        return Some("asf");
    }
    // A lone 0x47 is too weak a sign (it is ASCII `G`): ask for the sync byte of two
    // consecutive packets.
    if at(0, &[0x47]) && at(TS_PACKET, &[0x47]) {
        return Some("mpeg-ts");
    }
    if at(4, &[0x47]) && at(4 + M2TS_PACKET, &[0x47]) {
        return Some("m2ts");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn padded(head: &[u8]) -> Vec<u8> {
        let mut v = head.to_vec();
        v.resize(PREFIX_LEN, 0);
        v
    }

    #[test]
    fn recognises_video_containers() {
        let mut ts = vec![0u8; 400];
        ts[0] = 0x47;
        ts[188] = 0x47;
        let mut m2ts = vec![0u8; 400];
        m2ts[4] = 0x47;
        m2ts[196] = 0x47;
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (padded(b"\0\0\0\x20ftypisom\0\0\x02\0"), "iso-bmff"),
            (padded(b"\0\0\0\x14ftypqt  "), "iso-bmff"),
            (padded(b"\0\0\0\x18ftyp3gp4"), "iso-bmff"),
            (padded(b"\0\0\x01\x00moov"), "quicktime"),
            (padded(&[0x1A, 0x45, 0xDF, 0xA3, 0x9F]), "matroska"),
            (padded(b"RIFF\x10\0\0\0AVI LIST"), "avi"),
            (padded(b"FLV\x01\x05"), "flv"),
            (padded(&[0, 0, 1, 0xBA, 0x44]), "mpeg-ps"),
            (padded(&[0, 0, 1, 0xB3, 0x14]), "mpeg-video"),
            (padded(b"OggS\0\x02"), "ogg"),
            (padded(&ASF_GUID), "asf"),
            (ts, "mpeg-ts"),
            (m2ts, "m2ts"),
        ];
        for (bytes, name) in cases {
            assert_eq!(container(&bytes), Some(name), "{:?}", &bytes[..12]);
        }
    }

    #[test]
    fn refuses_everything_else() {
        let cases: Vec<&[u8]> = vec![
            b"",
            b"hello, world: not a video at all",
            b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR",
            b"\xFF\xD8\xFF\xE0\0\x10JFIF",
            b"GIF89a\x01\0\x01\0",
            b"PK\x03\x04\x14\0\0\0",
            b"%PDF-1.7\n",
            b"ID3\x04\0\0\0\0\0\x0f",              // MP3: audio only
            b"RIFF\x24\0\0\0WAVEfmt ",             // WAV is RIFF but not AVI
            b"G is for gopher, not for transport", // one 0x47 without a second packet
            b"\0\0\0",                             // too short for anything
            b"fLaC\0\0\0\x22",
        ];
        for bytes in cases {
            assert_eq!(container(bytes), None, "{bytes:?}");
        }
    }

    #[test]
    fn a_truncated_prefix_never_panics() {
        let full = padded(b"RIFF\x10\0\0\0AVI ");
        for len in 0..full.len() {
            let _ = container(&full[..len]);
        }
        assert_eq!(container(&full[..11]), None);
        assert_eq!(container(&full[..12]), Some("avi"));
    }
}
