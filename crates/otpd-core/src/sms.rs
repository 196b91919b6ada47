//! What the core knows of an SMS: who it is from, what it should say, and what composing it
//! cost. Rendering and encoding live in `otpd-sms`, behind the `MessageComposer` port.

use std::fmt;

/// The originator of a message, as the SMS network distinguishes them (SMPP maps each to its
/// own TON/NPI).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sender {
    /// A long code or toll-free number in E.164 (`+` and 8 to 15 digits).
    Number(String),
    /// A short code: 3 to 8 digits.
    ShortCode(String),
    /// An alphanumeric sender id: 1 to 11 letters, digits, spaces, `-`, `.`, `_`, with a letter.
    Alphanumeric(String),
}

impl Sender {
    /// Parses an origination identity as Pinpoint documents it.
    pub fn parse(input: &str) -> Option<Self> {
        if let Some(digits) = input.strip_prefix('+') {
            let number =
                (8..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit());
            return number.then(|| Self::Number(input.to_owned()));
        }
        if input.bytes().all(|b| b.is_ascii_digit()) {
            return match input.len() {
                3..=8 => Some(Self::ShortCode(input.to_owned())),
                // The amm dialect writes long numbers without `+` (`393480000000`).
                9..=15 => Some(Self::Number(format!("+{input}"))),
                _ => None,
            };
        }
        let alphanumeric = (1..=11).contains(&input.chars().count())
            && input
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, ' ' | '-' | '.' | '_'))
            && input.chars().any(|c| c.is_ascii_alphabetic());
        alphanumeric.then(|| Self::Alphanumeric(input.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        match self {
            Self::Number(s) | Self::ShortCode(s) | Self::Alphanumeric(s) => s,
        }
    }
}

impl fmt::Display for Sender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The languages Pinpoint's OTP message comes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    DeDe,
    EnGb,
    EnUs,
    Es419,
    EsEs,
    FrCa,
    FrFr,
    JaJp,
    KoKr,
    PtBr,
    ZhCn,
    ZhTw,
}

impl Language {
    pub const ALL: [Language; 12] = [
        Self::DeDe,
        Self::EnGb,
        Self::EnUs,
        Self::Es419,
        Self::EsEs,
        Self::FrCa,
        Self::FrFr,
        Self::JaJp,
        Self::KoKr,
        Self::PtBr,
        Self::ZhCn,
        Self::ZhTw,
    ];

    /// Exactly the BCP-47 tags Pinpoint lists, in their documented case.
    pub fn parse(tag: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|language| language.tag() == tag)
    }

    pub fn tag(self) -> &'static str {
        match self {
            Self::DeDe => "de-DE",
            Self::EnGb => "en-GB",
            Self::EnUs => "en-US",
            Self::Es419 => "es-419",
            Self::EsEs => "es-ES",
            Self::FrCa => "fr-CA",
            Self::FrFr => "fr-FR",
            Self::JaJp => "ja-JP",
            Self::KoKr => "ko-KR",
            Self::PtBr => "pt-BR",
            Self::ZhCn => "zh-CN",
            Self::ZhTw => "zh-TW",
        }
    }
}

/// Which character set a message must go out in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodingChoice {
    /// GSM 03.38 default alphabet only; a character outside it is an error.
    Gsm7,
    /// UCS-2 always.
    Ucs2,
    /// GSM 7-bit when every character fits, else UCS-2.
    Auto,
}

/// The character set a message was encoded in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Gsm7,
    Ucs2,
}

impl Encoding {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Gsm7 => "GSM7",
            Self::Ucs2 => "UCS2",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "GSM7" => Some(Self::Gsm7),
            "UCS2" => Some(Self::Ucs2),
            _ => None,
        }
    }
}

/// What a message should say, before the code is put in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageBody {
    /// Pinpoint's fixed text in one of its languages, with an optional brand.
    Template {
        language: Language,
        brand: Option<String>,
    },
    /// The caller's own text with `${verify_code}` where the code goes (the amm dialect).
    Custom {
        text: String,
        encoding: EncodingChoice,
    },
}

/// A message ready for a transport: the final text and what it costs.
#[derive(Clone, PartialEq, Eq)]
pub struct ComposedSms {
    pub text: String,
    pub encoding: Encoding,
    pub parts: u32,
}

impl fmt::Debug for ComposedSms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The text holds the code.
        f.debug_struct("ComposedSms")
            .field("encoding", &self.encoding)
            .field("parts", &self.parts)
            .finish_non_exhaustive()
    }
}

/// Why a message cannot be composed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ComposeError {
    #[error("the text has no ${{verify_code}} placeholder, or a placeholder that cannot be filled")]
    BadPlaceholder,
    #[error("the text has a character the chosen encoding cannot carry")]
    UnencodableCharacter,
    #[error("the text needs more than the maximum number of SMS parts")]
    TooLong,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn senders_of_every_kind() {
        assert_eq!(
            Sender::parse("+12065550100"),
            Some(Sender::Number("+12065550100".into()))
        );
        assert_eq!(
            Sender::parse("393480000000"),
            Some(Sender::Number("+393480000000".into()))
        );
        assert_eq!(
            Sender::parse("12345"),
            Some(Sender::ShortCode("12345".into()))
        );
        assert_eq!(
            Sender::parse("MyBrand"),
            Some(Sender::Alphanumeric("MyBrand".into()))
        );
        assert_eq!(Sender::parse("A"), Some(Sender::Alphanumeric("A".into())));
    }

    #[test]
    fn bad_senders() {
        for bad in [
            "",
            "12",
            "+123",
            "TwelveChars1",
            "Brand!",
            "+1206555010012345",
            "@@",
        ] {
            assert_eq!(Sender::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn languages_parse_only_documented_tags() {
        for language in Language::ALL {
            assert_eq!(Language::parse(language.tag()), Some(language));
        }
        assert_eq!(Language::parse("en-us"), None);
        assert_eq!(Language::parse("it-IT"), None);
    }
}
