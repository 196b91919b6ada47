//! Phone numbers in E.164, checked against libphonenumber's metadata.

use std::collections::HashMap;
use std::fmt;
use std::sync::{LazyLock, RwLock};

use phonenumber::{Metadata, Mode, Type};
use regex::{Regex, RegexBuilder};

/// A phone number that can receive SMS: `+`, country code and national number, valid for its
/// country and of a type that reaches a handset.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct E164(String);

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PhoneError {
    #[error("a phone number in E.164 format is `+` followed by 8 to 15 digits")]
    NotE164,
    #[error("the phone number is not a valid number for its country")]
    Invalid,
    #[error("the phone number cannot receive SMS")]
    NotMobile,
}

impl E164 {
    /// Strict E.164: `+` then 8 to 15 digits and nothing else (what Pinpoint requires).
    pub fn parse(input: &str) -> Result<Self, PhoneError> {
        let digits = input.strip_prefix('+').ok_or(PhoneError::NotE164)?;
        Self::parse_digits(digits)
    }

    /// The amm dialect's form: international digits without `+` (`393481234567`); a leading
    /// `+` is tolerated.
    pub fn parse_international_digits(input: &str) -> Result<Self, PhoneError> {
        Self::parse_digits(input.strip_prefix('+').unwrap_or(input))
    }

    /// E.164 by shape alone (`+`, 8 to 15 digits, no leading zero), without libphonenumber's
    /// checks. For looking up what was sent: a number that passed `parse` at send time has this
    /// shape, and one that did not simply finds nothing. The metadata checks cost more than the
    /// whole rest of a verify.
    pub fn parse_for_lookup(input: &str) -> Result<Self, PhoneError> {
        let digits = input.strip_prefix('+').ok_or(PhoneError::NotE164)?;
        Self::check_shape(digits)?;
        Ok(Self(input.to_owned()))
    }

    fn check_shape(digits: &str) -> Result<(), PhoneError> {
        let shaped = (8..=15).contains(&digits.len())
            && digits.bytes().all(|b| b.is_ascii_digit())
            && !digits.starts_with('0');
        if shaped {
            Ok(())
        } else {
            Err(PhoneError::NotE164)
        }
    }

    fn parse_digits(digits: &str) -> Result<Self, PhoneError> {
        Self::check_shape(digits)?;
        match parse_plain(digits) {
            Some(Ok(())) => Ok(Self(format!("+{digits}"))),
            Some(Err(error)) => Err(error),
            None => Self::parse_with_libphonenumber(digits),
        }
    }

    /// libphonenumber's whole parser: for numbers that carry a national prefix after the
    /// country code, or that `parse_plain` cannot vouch for.
    fn parse_with_libphonenumber(digits: &str) -> Result<Self, PhoneError> {
        let candidate = format!("+{digits}");
        let number = phonenumber::parse(None, &candidate).map_err(|_| PhoneError::Invalid)?;
        reachable_by_sms(number.country().code(), &number.national().to_string())?;
        // libphonenumber's own E.164 rendering: the canonical form stored and compared.
        Ok(Self(number.format().mode(Mode::E164).to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Loads libphonenumber's metadata now rather than on the first request (it is parsed
    /// lazily, which costs the first caller noticeable time).
    pub fn load_metadata() {
        let _ = phonenumber::parse(None, "+393481234567");
    }

    /// The country (ISO 3166-1 alpha-2, `001` for a non-geographic number) whose numbering
    /// plan holds this number, as libphonenumber decides it: `+1 416...` is `CA`, `+1 212...`
    /// `US`. `None` for a number that only passed `parse_for_lookup`'s shape check and belongs
    /// to no plan.
    pub fn country(&self) -> Option<&'static str> {
        let (code, national) = split_country_code(self.digits())?;
        region_plan(code, national).map(|(plan, _)| plan.id())
    }

    /// The digits without `+`, as the amm dialect shows numbers.
    pub fn digits(&self) -> &str {
        &self.0[1..]
    }

    /// A form safe for logs: country code region kept, all but the last two digits masked.
    pub fn redacted(&self) -> String {
        let keep = 2.min(self.0.len());
        let masked = self.0.len().saturating_sub(keep + 3);
        format!(
            "{}{}{}",
            &self.0[..3.min(self.0.len())],
            "*".repeat(masked),
            &self.0[self.0.len() - keep..]
        )
    }
}

/// What a country's numbering plan says about a national number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reach {
    /// A mobile, pager or personal number: it can take an SMS.
    Handset,
    /// Valid, but a landline, a freephone, a premium-rate or VoIP number...
    NotAHandset,
    /// Not a number of this plan.
    Unknown,
}

/// The decision for international digits that libphonenumber would take as they are: a known
/// country code, then a national number with no leading zero, no national prefix and nothing
/// its country's prefix-for-parsing rule would rewrite. Then the number is valid as written and
/// its E.164 form is `+` and the digits. `None` when the full parser must decide (its national
/// prefix handling, and a region choice made on the number without its leading zeros, can only
/// differ from ours in those cases). The tests hold the two paths to the same answers.
fn parse_plain(digits: &str) -> Option<Result<(), PhoneError>> {
    let (code, national) = split_country_code(digits)?;
    if national.starts_with('0') {
        return None;
    }
    let Some((plan, reach)) = region_plan(code, national) else {
        return Some(Err(PhoneError::Invalid));
    };
    if plan
        .national_prefix()
        .is_some_and(|prefix| national.starts_with(prefix))
    {
        return None;
    }
    let rewrites = plan
        .national_prefix_for_parsing()
        .is_some_and(|rule| matches_at_start(rule.as_str(), national));
    if rewrites {
        return None;
    }
    Some(reach.into_result())
}

/// The country code (one to three digits; no code is the start of another) and the rest.
fn split_country_code(digits: &str) -> Option<(u16, &str)> {
    let database = &*phonenumber::metadata::DATABASE;
    (1..=3).find_map(|length| {
        let code: u16 = digits.get(..length)?.parse().ok()?;
        database.region(&code).map(|_| (code, &digits[length..]))
    })
}

/// Whether `national` (with any leading zeros the country keeps) is a valid number of the
/// country with calling code `code` that can take an SMS.
fn reachable_by_sms(code: u16, national: &str) -> Result<(), PhoneError> {
    region_plan(code, national).map_or(Err(PhoneError::Invalid), |(_, reach)| reach.into_result())
}

/// The numbering plan `national` belongs to among those sharing calling code `code`, and what it
/// says of the number. This is libphonenumber's own decision (its choice among the regions
/// sharing a calling code, then its order of types: a number in both a premium-rate and a mobile
/// range is premium rate), made in one pass over the patterns: the crate's `is_valid` and
/// `number_type` run them twice each, and the latter reads the national number without its
/// leading zeros, so in countries that keep them it called every number unknown (Côte d'Ivoire's
/// mobiles, +225 07..., were refused).
fn region_plan(code: u16, national: &str) -> Option<(&'static Metadata, Reach)> {
    let database: &'static phonenumber::metadata::Database = &phonenumber::metadata::DATABASE;
    let regions = database.region(&code)?;
    match regions.as_slice() {
        ["001"] => database
            .by_code(&code)
            .and_then(|plans| plans.into_iter().next())
            .map(|plan| (plan, reach(plan, national))),
        [region] => database
            .by_id(*region)
            .map(|plan| (plan, reach(plan, national))),
        // Regions sharing a code (+1, +44, +39...): the first whose leading digits match, or,
        // for one without leading digits, that knows the number.
        regions => regions
            .iter()
            .filter_map(|region| database.by_id(*region))
            .find_map(|plan| match plan.leading_digits() {
                Some(leading) => matches_at_start(leading.as_str(), national)
                    .then(|| (plan, reach(plan, national))),
                None => Some((plan, reach(plan, national)))
                    .filter(|(_, reach)| *reach != Reach::Unknown),
            }),
    }
}

/// Whether `national` is a number of the type `descriptor` describes: the crate's
/// `Descriptor::is_match`, with the pattern matched by `matches_at_start`.
fn describes(descriptor: &'static phonenumber::metadata::Descriptor, national: &str) -> bool {
    let possible = descriptor.possible_length();
    (possible.is_empty() || possible.contains(&(national.len() as u16)))
        && matches_at_start(descriptor.national_number().as_str(), national)
}

/// Metadata patterns by the address and length of their text (`None`: did not compile).
type CompiledPatterns = HashMap<(usize, usize), Option<Regex>>;

/// Whether a metadata `pattern` matches `text` from its first character: what the crate's
/// `Descriptor::is_match` and the callers of its patterns' `find` ask. The patterns are compiled
/// once each and kept, keyed by where the metadata holds them. The crate keeps its compiled
/// patterns in a shared cache of 100, keyed by the pattern's text: every look-up hashed a pattern
/// of up to hundreds of characters (more work than the match), and traffic to more than a few
/// countries would evict patterns and compile them again (each compile costs far more than a
/// request).
fn matches_at_start(pattern: &'static str, text: &str) -> bool {
    static COMPILED: LazyLock<RwLock<CompiledPatterns>> = LazyLock::new(RwLock::default);
    let key = (pattern.as_ptr() as usize, pattern.len());
    let found = |regex: &Option<Regex>| regex.as_ref().is_some_and(|regex| regex.is_match(text));
    if let Some(regex) = COMPILED.read().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return found(regex);
    }
    let regex = compile_anchored(pattern);
    let matched = found(&regex);
    COMPILED
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .insert(key, regex);
    matched
}

/// `pattern` compiled to match from the start of a text. Anchored, `is_match` asks "a match at
/// the start?" in one forward pass, where `find` then `start() == 0` also ran a reverse pass to
/// find where the leftmost match began. The newline ends any `#` comment the pattern's last line
/// might hold (whitespace mode), so the group always closes.
///
/// With ASCII classes where the pattern allows them (every one of the metadata's 1,459 does): the
/// texts are ASCII digits (`E164::check_shape`), and Unicode's `\d` (every script's digits) made
/// each automaton several times larger. Compiling them all took 80 ms against 635, and a
/// country's first send, which compiles its patterns on the request thread, 0.15-2.5 ms against
/// 1.8-11.5 (eight countries, two runs each, 2026-12-06; the United Kingdom's the longest).
/// Later sends cost the same (156,000 instructions on a Pinpoint send's request thread either
/// way). The crate compiled the same text in Unicode mode when it loaded its metadata, so the
/// second attempt does not fail; if it did, the pattern would match nothing.
fn compile_anchored(pattern: &str) -> Option<Regex> {
    let anchored = format!("^(?:{pattern}\n)");
    let compile = |unicode: bool| {
        RegexBuilder::new(&anchored)
            .ignore_whitespace(true)
            .unicode(unicode)
            .build()
    };
    compile(false).or_else(|_| compile(true)).ok()
}

impl Reach {
    fn into_result(self) -> Result<(), PhoneError> {
        match self {
            Reach::Handset => Ok(()),
            Reach::NotAHandset => Err(PhoneError::NotMobile),
            Reach::Unknown => Err(PhoneError::Invalid),
        }
    }
}

fn reach(plan: &'static Metadata, national: &str) -> Reach {
    let descriptors = plan.descriptors();
    let matches = |kind: Type| {
        descriptors
            .get(kind)
            .is_some_and(|d| describes(d, national))
    };
    if !describes(descriptors.general(), national) {
        return Reach::Unknown;
    }
    let special = [
        Type::PremiumRate,
        Type::TollFree,
        Type::SharedCost,
        Type::Voip,
    ];
    if special.into_iter().any(matches) {
        return Reach::NotAHandset;
    }
    if matches(Type::PersonalNumber) || matches(Type::Pager) {
        return Reach::Handset;
    }
    if matches(Type::Uan) || matches(Type::Voicemail) {
        return Reach::NotAHandset;
    }
    // A number in a range that is both fixed and mobile can take SMS.
    if matches(Type::Mobile) {
        Reach::Handset
    } else if matches(Type::FixedLine) {
        Reach::NotAHandset
    } else {
        Reach::Unknown
    }
}

impl fmt::Debug for E164 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "E164({})", self.redacted())
    }
}

impl fmt::Display for E164 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_mobile_numbers() {
        assert_eq!(
            E164::parse("+393481234567").map(|n| n.as_str().to_owned()),
            Ok("+393481234567".to_owned())
        );
        assert!(E164::parse("+12065550123").is_ok());
        assert!(E164::parse("+447911123456").is_ok());
        // Countries whose national numbers keep a leading zero: Côte d'Ivoire, Benin, Congo
        // (libphonenumber's examples), Gabon.
        for number in [
            "+2250123456789",
            "+2290195123456",
            "+242061234567",
            "+24107123456",
        ] {
            assert!(E164::parse(number).is_ok(), "{number}");
        }
    }

    #[test]
    fn requires_the_plus_for_strict_e164() {
        assert_eq!(E164::parse("393481234567"), Err(PhoneError::NotE164));
        assert!(E164::parse_international_digits("393481234567").is_ok());
        assert!(E164::parse_international_digits("+393481234567").is_ok());
    }

    #[test]
    fn rejects_malformed_numbers() {
        for bad in [
            "+",
            "+1234567",
            "+1234567890123456",
            "+39 348 1234567",
            "+39348abc4567",
            "+0393481234567",
            "",
        ] {
            assert_eq!(E164::parse(bad), Err(PhoneError::NotE164), "{bad}");
        }
    }

    #[test]
    fn rejects_numbers_invalid_for_their_country() {
        assert_eq!(E164::parse("+3912"), Err(PhoneError::NotE164));
        assert_eq!(E164::parse("+99912345678"), Err(PhoneError::Invalid));
        // Italy's mobile range, too short to be a number there.
        assert_eq!(E164::parse("+39348123"), Err(PhoneError::Invalid));
        assert_eq!(E164::parse("+1206555012"), Err(PhoneError::Invalid));
    }

    #[test]
    fn rejects_numbers_that_cannot_take_sms() {
        // An Italian landline (Rome) and a UK freephone number.
        assert_eq!(E164::parse("+390612345678"), Err(PhoneError::NotMobile));
        assert_eq!(E164::parse("+448001234567"), Err(PhoneError::NotMobile));
    }

    #[test]
    fn lookups_check_the_shape_only() {
        assert!(E164::parse_for_lookup("+393481234567").is_ok());
        assert!(E164::parse_for_lookup("+390612345678").is_ok());
        for bad in ["393481234567", "+12", "+0393481234567", "+39 348"] {
            assert_eq!(
                E164::parse_for_lookup(bad),
                Err(PhoneError::NotE164),
                "{bad}"
            );
        }
    }

    /// Every type of number a plan describes.
    const NUMBER_TYPES: [Type; 10] = [
        Type::FixedLine,
        Type::Mobile,
        Type::TollFree,
        Type::PremiumRate,
        Type::SharedCost,
        Type::Voip,
        Type::PersonalNumber,
        Type::Pager,
        Type::Uan,
        Type::Voicemail,
    ];

    #[test]
    fn patterns_compile_with_ascii_classes_and_unicode_only_when_they_need_it() {
        let digits = compile_anchored(r"\d{3}").expect("an ASCII pattern compiles");
        assert!(digits.is_match("123"));
        assert!(
            !digits.is_match("١٢٣"),
            "`\\d` is ASCII: Arabic-Indic digits are not digits here"
        );
        let greek = compile_anchored(r"\p{Greek}+").expect("a Unicode class compiles too");
        assert!(greek.is_match("αβγ"));
        assert!(
            compile_anchored("(").is_none(),
            "a broken pattern matches nothing"
        );
    }

    /// Every pattern of every plan, on every example number of the plan and two variants.
    #[test]
    fn compiled_patterns_match_as_the_crate_does() {
        let database = &*phonenumber::metadata::DATABASE;
        let mut compared = 0;
        for plan in database.iter() {
            let descriptors = plan.descriptors();
            let all: Vec<_> = NUMBER_TYPES
                .into_iter()
                .filter_map(|kind| descriptors.get(kind))
                .chain([descriptors.general()])
                .collect();
            let numbers: Vec<String> = all
                .iter()
                .filter_map(|descriptor| descriptor.example())
                .flat_map(|example| {
                    [
                        example.to_owned(),
                        format!("{example}9"),
                        format!("9{example}"),
                    ]
                })
                .collect();
            for number in &numbers {
                for descriptor in &all {
                    assert_eq!(
                        describes(descriptor, number),
                        descriptor.is_match(number),
                        "{} {number}",
                        plan.id()
                    );
                    compared += 1;
                }
                for rule in [plan.national_prefix_for_parsing(), plan.leading_digits()]
                    .into_iter()
                    .flatten()
                {
                    let theirs = rule.find(number).is_some_and(|found| found.start() == 0);
                    assert_eq!(matches_at_start(rule.as_str(), number), theirs, "{number}");
                }
            }
        }
        assert!(compared > 10_000, "{compared}");
    }

    /// Every example number of every region, a neighbour and a longer one, and with what a user
    /// might put in front of it (a national prefix, a zero, a one), parsed both ways.
    #[test]
    fn the_plain_path_agrees_with_libphonenumber_on_every_example() {
        let database = &*phonenumber::metadata::DATABASE;
        let kinds = NUMBER_TYPES;
        let mut compared = 0;
        for plan in database.iter() {
            let code = plan.country_code();
            let examples = kinds
                .iter()
                .filter_map(|kind| plan.descriptors().get(*kind))
                .filter_map(|descriptor| descriptor.example());
            for example in examples {
                let prefix = plan.national_prefix().unwrap_or("0");
                let (head, last) = example.split_at(example.len() - 1);
                let next = (last.parse::<u8>().unwrap_or(0) + 1) % 10;
                for national in [
                    example.to_owned(),
                    format!("{head}{next}"),
                    format!("{example}0"),
                    format!("{prefix}{example}"),
                    format!("0{example}"),
                    format!("1{example}"),
                ] {
                    let digits = format!("{code}{national}");
                    if E164::check_shape(&digits).is_err() {
                        continue;
                    }
                    assert_eq!(
                        E164::parse_digits(&digits),
                        E164::parse_with_libphonenumber(&digits),
                        "+{digits}"
                    );
                    compared += 1;
                }
            }
        }
        assert!(compared > 3000, "only {compared} numbers compared");
    }

    #[test]
    fn numbers_as_written_take_the_plain_path() {
        for digits in [
            "393481234567",
            "12065550123",
            "447911123456",
            "4915123456789",
        ] {
            assert!(parse_plain(digits).is_some(), "{digits}");
        }
        // A trunk zero after the country code is libphonenumber's to remove.
        assert!(parse_plain("4407911123456").is_none());
        assert_eq!(
            E164::parse("+4407911123456").map(|n| n.as_str().to_owned()),
            Ok("+447911123456".to_owned())
        );
    }

    proptest::proptest! {
        /// Any digits after any country code: the same answer both ways.
        #[test]
        fn the_plain_path_agrees_with_libphonenumber_on_any_digits(
            code in proptest::sample::select(vec![1u16, 7, 20, 33, 39, 44, 49, 52, 54, 55, 61, 81, 86, 91, 225, 229, 242, 234, 880, 971, 998]),
            national in "[0-9]{7,12}",
        ) {
            let digits = format!("{code}{national}");
            proptest::prop_assume!(E164::check_shape(&digits).is_ok());
            proptest::prop_assert_eq!(
                E164::parse_digits(&digits),
                E164::parse_with_libphonenumber(&digits)
            );
        }
    }

    #[test]
    fn redaction_keeps_only_the_country_prefix_and_last_digits() {
        let number = E164::parse("+393481234567").expect("valid");
        assert_eq!(number.redacted(), "+39********67");
        assert!(!format!("{number:?}").contains("348123"));
    }
}
