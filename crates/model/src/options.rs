//! What a user may ask of a conversion: the encoding (CBR bitrate or VBR quality), the sample
//! rate and channels, the part of the video kept, and the ID3 tags; by hand or by preset.
//!
//! The gateway reads them from form fields or tus metadata ([`Options::from_fields`]), stores
//! them on the job and in its queue message, and the converter applies them. What is not
//! asked for keeps the original output: CBR 192 kb/s, the source's sample rate and channels,
//! the whole file.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The bitrate when neither `bitrate` nor `quality` is asked for (kb/s).
pub const DEFAULT_BITRATE: u16 = 192;
/// The sample rates an MP3 may have (Hz).
pub const SAMPLE_RATES: [u32; 9] = [8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000];
/// Bitrates of MPEG-1 Layer III (32, 44.1 and 48 kHz), kb/s.
const MPEG1_BITRATES: &[u16] = &[
    32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320,
];
/// Bitrates of MPEG-2 Layer III (16, 22.05 and 24 kHz) from 32 kb/s.
const MPEG2_BITRATES: &[u16] = &[32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160];
/// Bitrates of MPEG-2.5 Layer III (8, 11.025 and 12 kHz) from 32 kb/s.
const MPEG25_BITRATES: &[u16] = &[32, 40, 48, 56, 64];
/// The latest a trim may start or end (seconds): 100 hours.
pub const MAX_SECONDS: u64 = 360_000;
/// The longest tag value, in characters.
pub const MAX_TAG_CHARS: usize = 255;

/// The form fields (and tus metadata keys) that set options.
pub const FIELDS: [&str; 12] = [
    "preset",
    "bitrate",
    "quality",
    "sample_rate",
    "channels",
    "start",
    "end",
    "duration",
    "title",
    "artist",
    "album",
    "callback_url",
];

/// A named set of options: what the user gives by hand overrides it.
#[derive(Debug, Clone, Copy)]
pub struct Preset {
    pub name: &'static str,
    pub about: &'static str,
    bitrate: Option<u16>,
    quality: Option<u8>,
    channels: Option<u8>,
}

pub const PRESETS: [Preset; 3] = [
    Preset {
        name: "voice",
        about: "speech: mono, CBR 64 kb/s",
        bitrate: Some(64),
        quality: None,
        channels: Some(1),
    },
    Preset {
        name: "standard",
        about: "CBR 192 kb/s (the default)",
        bitrate: Some(DEFAULT_BITRATE),
        quality: None,
        channels: None,
    },
    Preset {
        name: "high",
        about: "music: VBR, LAME quality 0 (about 245 kb/s)",
        bitrate: None,
        quality: Some(0),
        channels: None,
    },
];

/// A time in a video, in milliseconds; written in JSON as seconds (`1.5`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Millis(pub u64);

impl Millis {
    pub fn seconds(self) -> f64 {
        self.0 as f64 / 1000.0
    }
}

impl fmt::Display for Millis {
    /// Seconds, with the decimals needed (`1.5`, `12`, `0.125`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (whole, frac) = (self.0 / 1000, self.0 % 1000);
        if frac == 0 {
            return write!(f, "{whole}");
        }
        let frac = format!("{frac:03}");
        write!(f, "{whole}.{}", frac.trim_end_matches('0'))
    }
}

impl Serialize for Millis {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_f64(self.seconds())
    }
}

impl<'de> Deserialize<'de> for Millis {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let seconds = f64::deserialize(deserializer)?;
        if !(0.0..=MAX_SECONDS as f64).contains(&seconds) {
            return Err(serde::de::Error::custom(format!(
                "a time from 0 to {MAX_SECONDS} seconds, got {seconds}"
            )));
        }
        Ok(Millis((seconds * 1000.0).round() as u64))
    }
}

/// The options of one job, as stored on it, carried by its message and shown by
/// `GET /jobs/{id}`. Absent fields keep the source's (sample rate, channels), the whole file
/// (`start`, `end`), no tag, and CBR [`DEFAULT_BITRATE`] when neither `bitrate` nor `quality`
/// is set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Options {
    /// The preset the options started from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<String>,
    /// Constant bitrate, kb/s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bitrate: Option<u16>,
    /// Variable bitrate: LAME's quality, 0 (best) to 9.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_rate: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<u8>,
    /// Where the kept part starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<Millis>,
    /// Where the kept part ends (after `start`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<Millis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artist: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub album: Option<String>,
    /// Where the notifier POSTs the job's event when it ends (the user's default otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
}

/// An option refused: the field and the rule it broke. Shown to the user as
/// `<field>: <rule>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionError {
    pub field: String,
    pub rule: String,
}

impl fmt::Display for OptionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.rule)
    }
}

impl std::error::Error for OptionError {}

/// The options given, by name, with blank values left out: an error for a field that is no
/// option or is given twice.
fn given<'a>(
    fields: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<Vec<(&'a str, &'a str)>, OptionError> {
    let mut given: Vec<(&str, &str)> = Vec::new();
    for (name, value) in fields {
        let value = value.trim();
        if !FIELDS.contains(&name) {
            // Shown back: kept short and printable.
            let shown: String = name.chars().filter(|c| !c.is_control()).take(64).collect();
            let shown = if shown.is_empty() {
                "a field without a name".to_owned()
            } else {
                shown
            };
            return Err(refuse(
                &shown,
                format!("not an option (options: {})", FIELDS.join(", ")),
            ));
        }
        if value.is_empty() {
            continue;
        }
        if given.iter().any(|(seen, _)| *seen == name) {
            return Err(refuse(name, "given more than once"));
        }
        given.push((name, value));
    }
    Ok(given)
}

fn refuse(field: &str, rule: impl Into<String>) -> OptionError {
    OptionError {
        field: field.to_owned(),
        rule: rule.into(),
    }
}

/// How the audio is encoded: what ffmpeg is told (the tags are written apart).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Encoding {
    /// CBR kb/s, or VBR quality.
    pub rate: Rate,
    pub sample_rate: Option<u32>,
    pub channels: Option<u8>,
    pub start: Option<Millis>,
    pub end: Option<Millis>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rate {
    Constant { kbps: u16 },
    Variable { quality: u8 },
}

impl Default for Rate {
    fn default() -> Self {
        Rate::Constant {
            kbps: DEFAULT_BITRATE,
        }
    }
}

impl Options {
    /// Whether nothing was asked for: the original output.
    pub fn is_default(&self) -> bool {
        self == &Self::default()
    }

    /// What ffmpeg must do.
    pub fn encoding(&self) -> Encoding {
        let rate = match (self.bitrate, self.quality) {
            (_, Some(quality)) => Rate::Variable { quality },
            (Some(kbps), None) => Rate::Constant { kbps },
            (None, None) => Rate::default(),
        };
        Encoding {
            rate,
            sample_rate: self.sample_rate,
            channels: self.channels,
            start: self.start,
            end: self.end,
        }
    }

    /// Checks only that every field is an option and none is given twice (a blank value is
    /// not given): what can be refused before the other fields are known, whatever their
    /// order.
    pub fn check_names<'a>(
        fields: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<(), OptionError> {
        given(fields).map(|_| ())
    }

    /// Reads the options from `(field, value)` pairs (form fields, tus metadata): fields not
    /// in [`FIELDS`] must be filtered out by the caller, an empty value counts as not given,
    /// and `title` defaults to `filename` without its extension. The first broken rule is the
    /// error.
    pub fn from_fields<'a>(
        fields: impl IntoIterator<Item = (&'a str, &'a str)>,
        filename: &str,
    ) -> Result<Self, OptionError> {
        let given = given(fields)?;
        let get = |name: &str| given.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);

        let mut options = Options::default();
        let preset = match get("preset") {
            Some(name) => Some(PRESETS.iter().find(|p| p.name == name).ok_or_else(|| {
                let names: Vec<&str> = PRESETS.iter().map(|p| p.name).collect();
                refuse("preset", format!("one of {}", names.join(", ")))
            })?),
            None => None,
        };
        options.preset = preset.map(|p| p.name.to_owned());

        if let Some(text) = get("sample_rate") {
            let rate = whole(text)
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| SAMPLE_RATES.contains(n));
            options.sample_rate = Some(rate.ok_or_else(|| {
                refuse(
                    "sample_rate",
                    format!("one of {} (Hz)", list(&SAMPLE_RATES)),
                )
            })?);
        }
        if let Some(text) = get("channels") {
            options.channels = Some(
                whole(text)
                    .filter(|n| (1..=2).contains(n))
                    .map(|n| n as u8)
                    .ok_or_else(|| refuse("channels", "1 (mono) or 2 (stereo)"))?,
            );
        }
        match (get("bitrate"), get("quality")) {
            (Some(_), Some(_)) => {
                return Err(refuse(
                    "bitrate",
                    "give bitrate (constant) or quality (variable), not both",
                ))
            }
            (Some(text), None) => {
                let allowed = bitrates(options.sample_rate);
                let rate = whole(text)
                    .and_then(|n| u16::try_from(n).ok())
                    .filter(|n| allowed.contains(n));
                let rule = match options.sample_rate {
                    Some(hz) => format!("one of {} (kb/s, at {hz} Hz)", list(allowed)),
                    None => format!("one of {} (kb/s)", list(allowed)),
                };
                options.bitrate = Some(rate.ok_or_else(|| refuse("bitrate", rule))?);
            }
            (None, Some(text)) => {
                options.quality = Some(
                    whole(text)
                        .filter(|n| *n <= 9)
                        .map(|n| n as u8)
                        .ok_or_else(|| refuse("quality", "0 (best) to 9 (smallest)"))?,
                );
            }
            (None, None) => {
                // Without a preset, the default bitrate, or the nearest below it that the
                // sample rate asked for allows.
                let fallback = bitrates(options.sample_rate)
                    .iter()
                    .copied()
                    .filter(|kbps| *kbps <= DEFAULT_BITRATE)
                    .max();
                let (bitrate, quality) = preset
                    .map(|p| (p.bitrate, p.quality))
                    .unwrap_or((fallback, None));
                options.bitrate = bitrate;
                options.quality = quality;
                // A preset's bitrate must suit the rate asked for by hand.
                if let (Some(kbps), Some(hz)) = (options.bitrate, options.sample_rate) {
                    if !bitrates(Some(hz)).contains(&kbps) {
                        return Err(refuse(
                            "sample_rate",
                            format!("{kbps} kb/s cannot be encoded at {hz} Hz"),
                        ));
                    }
                }
            }
        }
        if options.channels.is_none() {
            options.channels = preset.and_then(|p| p.channels);
        }

        options.start = get("start").map(|t| seconds("start", t)).transpose()?;
        let start = options.start.unwrap_or(Millis(0));
        options.end = match (get("end"), get("duration")) {
            (Some(_), Some(_)) => {
                return Err(refuse("end", "give end or duration, not both"));
            }
            (Some(text), None) => {
                let end = seconds("end", text)?;
                if end <= start {
                    return Err(refuse("end", format!("after start ({start} s)")));
                }
                Some(end)
            }
            (None, Some(text)) => {
                let duration = seconds("duration", text)?;
                if duration.0 == 0 {
                    return Err(refuse("duration", "more than 0 seconds"));
                }
                let end = start.0 + duration.0;
                if end > MAX_SECONDS * 1000 {
                    return Err(refuse(
                        "duration",
                        format!("must end by {MAX_SECONDS} seconds"),
                    ));
                }
                Some(Millis(end))
            }
            (None, None) => None,
        };
        if options.start == Some(Millis(0)) {
            options.start = None;
        }

        let stem = match filename.rsplit_once('.') {
            Some((stem, _)) if !stem.trim().is_empty() => stem,
            _ => filename,
        };
        options.title = tag("title", get("title").unwrap_or(stem))?;
        options.artist = get("artist")
            .map(|t| tag("artist", t))
            .transpose()?
            .flatten();
        options.album = get("album").map(|t| tag("album", t)).transpose()?.flatten();
        options.callback_url = get("callback_url")
            .map(|url| crate::webhook::check_url(url).map_err(|rule| refuse("callback_url", rule)))
            .transpose()?;
        Ok(options)
    }
}

/// The bitrates allowed at a sample rate (MPEG-1's when the source's rate is kept).
fn bitrates(sample_rate: Option<u32>) -> &'static [u16] {
    match sample_rate {
        Some(hz) if hz < 16000 => MPEG25_BITRATES,
        Some(hz) if hz < 32000 => MPEG2_BITRATES,
        _ => MPEG1_BITRATES,
    }
}

fn list<T: fmt::Display>(values: &[T]) -> String {
    let texts: Vec<String> = values.iter().map(ToString::to_string).collect();
    texts.join(", ")
}

/// A whole number written plainly (digits only, at most 9 of them).
fn whole(text: &str) -> Option<u64> {
    (!text.is_empty() && text.len() <= 9 && text.bytes().all(|b| b.is_ascii_digit()))
        .then(|| text.parse().ok())
        .flatten()
}

/// Seconds written plainly, with up to three decimals (`12`, `1.5`, `0.125`), at most
/// [`MAX_SECONDS`].
fn seconds(field: &str, text: &str) -> Result<Millis, OptionError> {
    let rule = || {
        refuse(
            field,
            format!("seconds from 0 to {MAX_SECONDS}, with up to 3 decimals"),
        )
    };
    let (whole_part, frac) = text.split_once('.').unwrap_or((text, ""));
    if text.ends_with('.') || frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(rule());
    }
    let whole_part = if whole_part.is_empty() && !frac.is_empty() {
        0
    } else {
        whole(whole_part).ok_or_else(rule)?
    };
    let frac_ms = format!("{frac:0<3}").parse::<u64>().map_err(|_| rule())?;
    let millis = whole_part * 1000 + frac_ms;
    if millis > MAX_SECONDS * 1000 {
        return Err(rule());
    }
    Ok(Millis(millis))
}

/// A tag value made safe to store: no control characters, trimmed, at most
/// [`MAX_TAG_CHARS`] characters; `None` when nothing is left.
fn tag(field: &str, text: &str) -> Result<Option<String>, OptionError> {
    let cleaned: String = text.chars().filter(|c| !c.is_control()).collect();
    let cleaned = cleaned.trim();
    if cleaned.chars().count() > MAX_TAG_CHARS {
        return Err(refuse(field, format!("at most {MAX_TAG_CHARS} characters")));
    }
    Ok((!cleaned.is_empty()).then(|| cleaned.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(fields: &[(&str, &str)]) -> Result<Options, OptionError> {
        Options::from_fields(fields.iter().copied(), "talk.mp4")
    }

    fn refused(fields: &[(&str, &str)]) -> String {
        read(fields).expect_err("refused").to_string()
    }

    #[test]
    fn nothing_asked_keeps_the_original_output_and_titles_after_the_file() {
        let options = read(&[]).unwrap();
        assert_eq!(options.bitrate, Some(DEFAULT_BITRATE));
        assert_eq!(options.title.as_deref(), Some("talk"));
        assert_eq!(options.encoding(), Encoding::default());
        assert_eq!(Options::default().encoding(), Encoding::default());
        let untitled = Options::from_fields([], "noext").unwrap();
        assert_eq!(untitled.title.as_deref(), Some("noext"));
        // Empty fields, as an HTML form sends them, are not given.
        assert_eq!(read(&[("bitrate", ""), ("title", " ")]).unwrap(), options);
    }

    #[test]
    fn every_option_is_read() {
        let options = read(&[
            ("bitrate", "128"),
            ("sample_rate", "22050"),
            ("channels", "1"),
            ("start", "1.5"),
            ("duration", "2.25"),
            ("title", "A\u{7}Talk"),
            ("artist", "Ünïcode"),
            ("album", "Live"),
            ("callback_url", "https://hooks.example.com/mp3"),
        ])
        .unwrap();
        assert_eq!(
            options,
            Options {
                preset: None,
                bitrate: Some(128),
                quality: None,
                sample_rate: Some(22050),
                channels: Some(1),
                start: Some(Millis(1500)),
                end: Some(Millis(3750)),
                title: Some("ATalk".into()),
                artist: Some("Ünïcode".into()),
                album: Some("Live".into()),
                callback_url: Some("https://hooks.example.com/mp3".into()),
            }
        );
        let vbr = read(&[("quality", "4"), ("end", "10")]).unwrap();
        assert_eq!(
            vbr.encoding(),
            Encoding {
                rate: Rate::Variable { quality: 4 },
                end: Some(Millis(10_000)),
                ..Encoding::default()
            }
        );
        assert_eq!(read(&[("start", "0")]).unwrap().start, None);
        assert_eq!(read(&[("start", ".5")]).unwrap().start, Some(Millis(500)));
        // A rate that cannot carry 192 kb/s gets the best bitrate it can.
        assert_eq!(
            read(&[("sample_rate", "22050")]).unwrap().bitrate,
            Some(160)
        );
        assert_eq!(read(&[("sample_rate", "8000")]).unwrap().bitrate, Some(64));
    }

    #[test]
    fn presets_fill_in_what_is_not_given_by_hand() {
        let voice = read(&[("preset", "voice")]).unwrap();
        assert_eq!(
            (voice.bitrate, voice.quality, voice.channels),
            (Some(64), None, Some(1))
        );
        assert_eq!(voice.preset.as_deref(), Some("voice"));
        let high = read(&[("preset", "high")]).unwrap();
        assert_eq!((high.bitrate, high.quality), (None, Some(0)));
        let louder = read(&[("preset", "voice"), ("bitrate", "96"), ("channels", "2")]).unwrap();
        assert_eq!((louder.bitrate, louder.channels), (Some(96), Some(2)));
        let cbr = read(&[("preset", "high"), ("bitrate", "128")]).unwrap();
        assert_eq!((cbr.bitrate, cbr.quality), (Some(128), None));
        let standard = read(&[("preset", "standard")]).unwrap();
        assert_eq!(standard.encoding(), Encoding::default());
    }

    #[test]
    fn each_rule_names_its_field() {
        for (fields, expected) in [
            (&[("bitrate", "100")][..], "bitrate: one of 32, 40,"),
            (
                &[("bitrate", "320"), ("sample_rate", "22050")],
                "bitrate: one of 32",
            ),
            (&[("bitrate", "-1")], "bitrate:"),
            (&[("bitrate", "1e2")], "bitrate:"),
            (&[("bitrate", "99999999999999999999")], "bitrate:"),
            (&[("bitrate", "128"), ("quality", "2")], "not both"),
            (&[("quality", "10")], "quality: 0 (best) to 9"),
            (&[("quality", "0.5")], "quality:"),
            (&[("sample_rate", "44000")], "sample_rate: one of 8000"),
            (&[("channels", "3")], "channels: 1 (mono) or 2"),
            (&[("channels", "0")], "channels:"),
            (&[("start", "-1")], "start: seconds"),
            (&[("start", "1.2345")], "start: seconds"),
            (&[("start", "nan")], "start: seconds"),
            (&[("start", "inf")], "start: seconds"),
            (&[("start", "1.")], "start: seconds"),
            (&[("start", "360001")], "start: seconds"),
            (&[("end", "5"), ("start", "5")], "end: after start (5 s)"),
            (
                &[("end", "5"), ("duration", "1")],
                "end: give end or duration",
            ),
            (&[("duration", "0")], "duration: more than 0"),
            (
                &[("start", "360000"), ("duration", "1")],
                "duration: must end by",
            ),
            (
                &[("preset", "loud")],
                "preset: one of voice, standard, high",
            ),
            (
                &[("preset", "standard"), ("sample_rate", "8000")],
                "sample_rate: 192 kb/s",
            ),
            (
                &[("bitrate", "128"), ("bitrate", "64")],
                "bitrate: given more than once",
            ),
            (
                &[("colour", "red")],
                "colour: not an option (options: preset, bitrate,",
            ),
            (&[("", "red")], "a field without a name: not an option"),
        ] {
            let message = refused(fields);
            assert!(message.contains(expected), "{fields:?}: {message}");
        }
        let long = "x".repeat(MAX_TAG_CHARS + 1);
        assert_eq!(
            refused(&[("album", &long)]),
            format!("album: at most {MAX_TAG_CHARS} characters")
        );
        assert!(read(&[("album", &long[1..])]).is_ok());
    }

    #[test]
    fn options_round_trip_through_json_with_times_in_seconds() {
        let options = read(&[("start", "1.5"), ("end", "4"), ("preset", "voice")]).unwrap();
        let json = serde_json::to_value(&options).unwrap();
        assert_eq!(json["start"], 1.5);
        assert_eq!(json["end"], 4.0);
        assert_eq!(json["bitrate"], 64);
        assert!(json.get("quality").is_none());
        let back: Options = serde_json::from_value(json).unwrap();
        assert_eq!(back, options);
        assert!(serde_json::from_str::<Options>(r#"{"start": -1}"#).is_err());
        assert!(serde_json::from_str::<Options>(r#"{}"#)
            .unwrap()
            .is_default());
        assert_eq!(Millis(1500).to_string(), "1.5");
        assert_eq!(Millis(125).to_string(), "0.125");
        assert_eq!(Millis(12000).to_string(), "12");
    }
}
