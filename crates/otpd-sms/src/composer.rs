//! Composes the final text of a message, picks its encoding and counts its parts.

use otpd_core::OtpCode;
use otpd_core::ports::MessageComposer;
use otpd_core::sms::{ComposeError, ComposedSms, Encoding, EncodingChoice, MessageBody};

use crate::{gsm, segments, template};

/// The amm placeholder for the code.
pub const PLACEHOLDER: &str = "${verify_code}";

#[derive(Debug, Default, Clone, Copy)]
pub struct SmsComposer;

impl MessageComposer for SmsComposer {
    fn compose(&self, body: &MessageBody, code: &OtpCode) -> Result<ComposedSms, ComposeError> {
        let (text, choice) = match body {
            MessageBody::Template { language, brand } => (
                template::render(*language, code.expose(), brand.as_deref()),
                EncodingChoice::Auto,
            ),
            MessageBody::Custom { text, encoding } => {
                (fill_placeholder(text, code.expose())?, *encoding)
            }
        };
        let encoding = match choice {
            EncodingChoice::Gsm7 if gsm::fits(&text) => Encoding::Gsm7,
            EncodingChoice::Gsm7 => return Err(ComposeError::UnencodableCharacter),
            EncodingChoice::Ucs2 => Encoding::Ucs2,
            EncodingChoice::Auto if gsm::fits(&text) => Encoding::Gsm7,
            EncodingChoice::Auto => Encoding::Ucs2,
        };
        let parts = segments::count(&text, encoding).ok_or(ComposeError::UnencodableCharacter)?;
        if parts > segments::MAX_PARTS {
            return Err(ComposeError::TooLong);
        }
        Ok(ComposedSms {
            text,
            encoding,
            parts: u32::try_from(parts).map_err(|_| ComposeError::TooLong)?,
        })
    }
}

/// Checks that `text` has the code placeholder and no other `${...}`, then fills it in.
pub fn check_placeholders(text: &str) -> Result<(), ComposeError> {
    let mut found = false;
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        match rest[start..].strip_prefix(PLACEHOLDER) {
            Some(after) => {
                found = true;
                rest = after;
            }
            None => return Err(ComposeError::BadPlaceholder),
        }
    }
    if found {
        Ok(())
    } else {
        Err(ComposeError::BadPlaceholder)
    }
}

fn fill_placeholder(text: &str, code: &str) -> Result<String, ComposeError> {
    check_placeholders(text)?;
    Ok(text.replace(PLACEHOLDER, code))
}

#[cfg(test)]
mod tests {
    use super::*;
    use otpd_core::sms::Language;

    fn code() -> OtpCode {
        OtpCode::submitted("1234").expect("code")
    }

    fn custom(text: &str, encoding: EncodingChoice) -> Result<ComposedSms, ComposeError> {
        SmsComposer.compose(
            &MessageBody::Custom {
                text: text.into(),
                encoding,
            },
            &code(),
        )
    }

    #[test]
    fn placeholders() {
        assert_eq!(
            custom("Codice ${verify_code}", EncodingChoice::Gsm7).map(|m| m.text),
            Ok("Codice 1234".into())
        );
        assert_eq!(
            custom("${verify_code} e ${verify_code}", EncodingChoice::Gsm7).map(|m| m.text),
            Ok("1234 e 1234".into())
        );
        assert_eq!(
            custom("Codice", EncodingChoice::Gsm7),
            Err(ComposeError::BadPlaceholder)
        );
        assert_eq!(
            custom("Ciao ${name} ${verify_code}", EncodingChoice::Gsm7),
            Err(ComposeError::BadPlaceholder)
        );
        assert_eq!(
            custom("${verify_cod}", EncodingChoice::Gsm7),
            Err(ComposeError::BadPlaceholder)
        );
        assert_eq!(
            custom("$ {verify_code}", EncodingChoice::Gsm7),
            Err(ComposeError::BadPlaceholder)
        );
    }

    #[test]
    fn encodings() {
        let gsm = custom("Codice è ${verify_code}", EncodingChoice::Auto).expect("composes");
        assert_eq!((gsm.encoding, gsm.parts), (Encoding::Gsm7, 1));
        let ucs = custom("Código ${verify_code}", EncodingChoice::Auto).expect("composes");
        assert_eq!(ucs.encoding, Encoding::Ucs2);
        assert_eq!(
            custom("Código ${verify_code}", EncodingChoice::Gsm7),
            Err(ComposeError::UnencodableCharacter)
        );
        let forced = custom("Codice ${verify_code}", EncodingChoice::Ucs2).expect("composes");
        assert_eq!(forced.encoding, Encoding::Ucs2);
    }

    #[test]
    fn part_limits() {
        // 765 septets of text with a 4-digit code: 761 + 14 placeholder chars replaced by 4.
        let five = format!("{}${{verify_code}}", "a".repeat(761));
        assert_eq!(custom(&five, EncodingChoice::Gsm7).map(|m| m.parts), Ok(5));
        let six = format!("{}${{verify_code}}", "a".repeat(762));
        assert_eq!(
            custom(&six, EncodingChoice::Gsm7),
            Err(ComposeError::TooLong)
        );
    }

    #[test]
    fn templates_pick_their_encoding() {
        let english = SmsComposer
            .compose(
                &MessageBody::Template {
                    language: Language::EnUs,
                    brand: Some("Acme".into()),
                },
                &code(),
            )
            .expect("composes");
        assert_eq!(
            english.text,
            "This is your One Time Password: 1234 from Acme"
        );
        assert_eq!((english.encoding, english.parts), (Encoding::Gsm7, 1));
        let japanese = SmsComposer
            .compose(
                &MessageBody::Template {
                    language: Language::JaJp,
                    brand: None,
                },
                &code(),
            )
            .expect("composes");
        assert_eq!(japanese.encoding, Encoding::Ucs2);
    }

    mod any_text {
        use proptest::prelude::*;

        use super::*;

        /// Texts around the placeholder: stray `${`, braces, GSM extension and non-GSM
        /// characters, long runs.
        fn any_text() -> impl Strategy<Value = String> {
            let piece = prop_oneof![
                Just(PLACEHOLDER.to_owned()),
                Just("${".to_owned()),
                Just("}".to_owned()),
                Just("€[]".to_owned()),
                "[a-zA-Z0-9 ]{0,40}",
                ".{0,20}",
                Just("x".repeat(400)),
            ];
            prop::collection::vec(piece, 0..8).prop_map(|pieces| pieces.concat())
        }

        fn any_choice() -> impl Strategy<Value = EncodingChoice> {
            prop::sample::select(vec![
                EncodingChoice::Gsm7,
                EncodingChoice::Ucs2,
                EncodingChoice::Auto,
            ])
        }

        proptest! {
            /// Any text composes into a message that carries the code, in an encoding that can
            /// carry it and within the part limit, or is refused with a reason; nothing panics.
            #[test]
            fn any_text_composes_or_is_refused(text in any_text(), encoding in any_choice()) {
                let placeholders = text.matches(PLACEHOLDER).count();
                match custom(&text, encoding) {
                    Ok(sms) => {
                        prop_assert!(placeholders > 0);
                        prop_assert!(!sms.text.contains(PLACEHOLDER));
                        prop_assert_eq!(sms.text.matches("1234").count() >= placeholders, true);
                        prop_assert!((1..=segments::MAX_PARTS).contains(&(sms.parts as usize)));
                        if sms.encoding == Encoding::Gsm7 {
                            prop_assert!(gsm::fits(&sms.text));
                        }
                        if encoding == EncodingChoice::Ucs2 {
                            prop_assert_eq!(sms.encoding, Encoding::Ucs2);
                        }
                    }
                    Err(ComposeError::BadPlaceholder) => {
                        let opened = text.matches("${").count();
                        prop_assert!(placeholders == 0 || opened > placeholders, "{:?}", text);
                    }
                    Err(ComposeError::UnencodableCharacter) => {
                        prop_assert_eq!(encoding, EncodingChoice::Gsm7);
                    }
                    Err(ComposeError::TooLong) => {}
                }
            }
        }
    }
}
