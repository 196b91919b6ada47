//! Pinpoint's OTP message in each of its languages. English keeps AWS's own wording; the others
//! say the same thing. Without a brand the "from ..." part is left out.

use otpd_core::sms::Language;

/// The message for `language`, with `code` and, when given, `brand` filled in.
pub fn render(language: Language, code: &str, brand: Option<&str>) -> String {
    match (language, brand) {
        (Language::EnUs | Language::EnGb, Some(b)) => {
            format!("This is your One Time Password: {code} from {b}")
        }
        (Language::EnUs | Language::EnGb, None) => {
            format!("This is your One Time Password: {code}")
        }
        (Language::DeDe, Some(b)) => format!("Dies ist Ihr Einmalpasswort: {code} von {b}"),
        (Language::DeDe, None) => format!("Dies ist Ihr Einmalpasswort: {code}"),
        (Language::Es419, Some(b)) => {
            format!("Esta es tu contraseña de un solo uso: {code} de {b}")
        }
        (Language::Es419, None) => format!("Esta es tu contraseña de un solo uso: {code}"),
        (Language::EsEs, Some(b)) => format!("Esta es su contraseña de un solo uso: {code} de {b}"),
        (Language::EsEs, None) => format!("Esta es su contraseña de un solo uso: {code}"),
        (Language::FrCa | Language::FrFr, Some(b)) => {
            format!("Voici votre mot de passe à usage unique : {code} de {b}")
        }
        (Language::FrCa | Language::FrFr, None) => {
            format!("Voici votre mot de passe à usage unique : {code}")
        }
        (Language::JaJp, Some(b)) => format!("{b}からのワンタイムパスワードです: {code}"),
        (Language::JaJp, None) => format!("ワンタイムパスワードです: {code}"),
        (Language::KoKr, Some(b)) => format!("{b}의 일회용 비밀번호입니다: {code}"),
        (Language::KoKr, None) => format!("일회용 비밀번호입니다: {code}"),
        (Language::PtBr, Some(b)) => format!("Esta é a sua senha de uso único: {code} de {b}"),
        (Language::PtBr, None) => format!("Esta é a sua senha de uso único: {code}"),
        (Language::ZhCn, Some(b)) => format!("这是您来自{b}的一次性密码：{code}"),
        (Language::ZhCn, None) => format!("这是您的一次性密码：{code}"),
        (Language::ZhTw, Some(b)) => format!("這是您來自{b}的一次性密碼：{code}"),
        (Language::ZhTw, None) => format!("這是您的一次性密碼：{code}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn english_is_aws_wording() {
        assert_eq!(
            render(Language::EnUs, "123456", Some("Acme")),
            "This is your One Time Password: 123456 from Acme"
        );
        assert_eq!(
            render(Language::EnGb, "123456", None),
            "This is your One Time Password: 123456"
        );
    }

    #[test]
    fn every_language_carries_the_code_and_the_brand() {
        for language in Language::ALL {
            let with = render(language, "98765", Some("Acme"));
            assert!(
                with.contains("98765") && with.contains("Acme"),
                "{language:?}: {with}"
            );
            let without = render(language, "98765", None);
            assert!(
                without.contains("98765") && !without.contains("Acme"),
                "{language:?}"
            );
        }
    }

    #[test]
    fn languages_have_their_own_text() {
        let mut texts: Vec<String> = [
            Language::EnUs,
            Language::DeDe,
            Language::Es419,
            Language::EsEs,
            Language::FrFr,
            Language::JaJp,
            Language::KoKr,
            Language::PtBr,
            Language::ZhCn,
            Language::ZhTw,
        ]
        .into_iter()
        .map(|language| render(language, "1", None))
        .collect();
        texts.dedup();
        assert_eq!(texts.len(), 10);
    }
}
