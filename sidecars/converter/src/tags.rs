//! The ID3v2 tag written ahead of the MP3's frames: the job's title, artist and album.
//!
//! Written by the converter rather than by ffmpeg, so that jobs differing only in their tags
//! share ffmpeg's arguments, and the processes started ahead of them (see [`crate::warm`]).

use anyhow::Context as _;
use id3::TagLike as _;
use mp3_model::Options;

/// The tag's bytes (ID3v2.3, the version most players read); none without any tag to write.
pub fn id3(options: &Options) -> anyhow::Result<Vec<u8>> {
    let mut tag = id3::Tag::new();
    if let Some(title) = &options.title {
        tag.set_title(title.as_str());
    }
    if let Some(artist) = &options.artist {
        tag.set_artist(artist.as_str());
    }
    if let Some(album) = &options.album {
        tag.set_album(album.as_str());
    }
    let mut bytes = Vec::new();
    if tag.frames().next().is_some() {
        tag.write_to(&mut bytes, id3::Version::Id3v23)
            .context("encoding the ID3 tag")?;
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_read_back_and_none_means_no_bytes() {
        let options = Options {
            title: Some("Ünïcode \"talk\"".into()),
            artist: Some("Someone".into()),
            album: Some("Live".into()),
            ..Options::default()
        };
        let bytes = id3(&options).unwrap();
        assert_eq!(&bytes[..4], b"ID3\x03");
        let tag = id3::Tag::read_from2(std::io::Cursor::new(&bytes)).unwrap();
        assert_eq!(tag.title(), Some("Ünïcode \"talk\""));
        assert_eq!(tag.artist(), Some("Someone"));
        assert_eq!(tag.album(), Some("Live"));
        assert!(id3(&Options::default()).unwrap().is_empty());
    }
}
