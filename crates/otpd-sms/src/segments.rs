//! How many SMS parts a text takes, and how it is split into them.
//!
//! GSM 7-bit: 160 septets in one SMS, 153 per part when concatenated (the UDH takes the rest);
//! an escape pair is never split. UCS-2: 70 UTF-16 units alone, 67 per part; a surrogate pair
//! is never split.

use otpd_core::sms::Encoding;

use crate::gsm;

pub const GSM_SINGLE: usize = 160;
pub const GSM_PART: usize = 153;
pub const UCS2_SINGLE: usize = 70;
pub const UCS2_PART: usize = 67;

/// The most parts otpd will send a message as (the amm API's limit).
pub const MAX_PARTS: usize = 5;

/// `text` split into the parts it would be sent as, or `None` if `encoding` cannot carry it.
pub fn split(text: &str, encoding: Encoding) -> Option<Vec<&str>> {
    let (single, part): (usize, usize) = match encoding {
        Encoding::Gsm7 => (GSM_SINGLE, GSM_PART),
        Encoding::Ucs2 => (UCS2_SINGLE, UCS2_PART),
    };
    let cost = |c: char| -> Option<usize> {
        match encoding {
            Encoding::Gsm7 => gsm::septets(c).map(gsm::Septets::cost),
            Encoding::Ucs2 => Some(c.len_utf16()),
        }
    };
    let mut total = 0;
    for c in text.chars() {
        total += cost(c)?;
    }
    if total <= single {
        return Some(vec![text]);
    }
    let mut parts = Vec::new();
    let (mut start, mut used) = (0, 0);
    for (index, c) in text.char_indices() {
        let units = cost(c)?;
        if used + units > part {
            parts.push(&text[start..index]);
            start = index;
            used = 0;
        }
        used += units;
    }
    parts.push(&text[start..]);
    Some(parts)
}

/// The number of parts `text` takes in `encoding`.
pub fn count(text: &str, encoding: Encoding) -> Option<usize> {
    split(text, encoding).map(|parts| parts.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn gsm_limits() {
        assert_eq!(count(&"a".repeat(160), Encoding::Gsm7), Some(1));
        assert_eq!(count(&"a".repeat(161), Encoding::Gsm7), Some(2));
        assert_eq!(count(&"a".repeat(306), Encoding::Gsm7), Some(2));
        assert_eq!(count(&"a".repeat(307), Encoding::Gsm7), Some(3));
        assert_eq!(count(&"a".repeat(765), Encoding::Gsm7), Some(5));
        assert_eq!(count(&"a".repeat(766), Encoding::Gsm7), Some(6));
    }

    #[test]
    fn extension_characters_count_twice_and_are_not_split() {
        assert_eq!(count(&"€".repeat(80), Encoding::Gsm7), Some(1));
        assert_eq!(count(&"€".repeat(81), Encoding::Gsm7), Some(2));
        // 152 plain characters then a euro: the escape pair would straddle 153, so it moves.
        let text = format!("{}€", "a".repeat(152));
        let long = format!("{text}{}", "b".repeat(10));
        let parts = split(&long, Encoding::Gsm7).expect("fits");
        assert_eq!(parts[0].chars().count(), 152);
        assert!(parts[1].starts_with('€'));
    }

    #[test]
    fn ucs2_limits_and_surrogates() {
        assert_eq!(count(&"è".repeat(70), Encoding::Ucs2), Some(1));
        assert_eq!(count(&"è".repeat(71), Encoding::Ucs2), Some(2));
        assert_eq!(count(&"😀".repeat(35), Encoding::Ucs2), Some(1));
        assert_eq!(count(&"😀".repeat(36), Encoding::Ucs2), Some(2));
        let emoji = "😀".repeat(36);
        let parts = split(&emoji, Encoding::Ucs2).expect("fits");
        // 67 units hold 33 emoji (66 units); the 34th would be split, so it moves.
        assert_eq!(parts[0].chars().count(), 33);
    }

    #[test]
    fn gsm_refuses_what_it_cannot_carry() {
        assert_eq!(count("Código", Encoding::Gsm7), None);
        assert_eq!(count("Código", Encoding::Ucs2), Some(1));
    }

    /// An independent oracle: the number of parts from the cost sequence alone, computed
    /// without slicing text, by a different route (per-part capacity arithmetic).
    fn oracle(costs: &[usize], single: usize, part: usize) -> usize {
        let total: usize = costs.iter().sum();
        if total <= single {
            return 1;
        }
        let mut parts = 1;
        let mut room = part;
        for &c in costs {
            if c > room {
                parts += 1;
                room = part;
            }
            room -= c;
        }
        parts
    }

    proptest! {
        #[test]
        fn gsm_count_matches_the_oracle(text in "[a-z€\\[\\]{}0-9 ]{0,800}") {
            let costs: Vec<usize> = text.chars().map(|c| gsm::septets(c).map(gsm::Septets::cost).unwrap_or(0)).collect();
            let parts = split(&text, Encoding::Gsm7).expect("all GSM");
            prop_assert_eq!(parts.len(), oracle(&costs, GSM_SINGLE, GSM_PART));
            prop_assert_eq!(parts.concat(), text.clone());
            if parts.len() > 1 {
                for p in &parts {
                    let septets: usize = p.chars().map(|c| gsm::septets(c).map(gsm::Septets::cost).unwrap_or(0)).sum();
                    prop_assert!(septets <= GSM_PART);
                }
            }
        }

        #[test]
        fn ucs2_count_matches_the_oracle(text in "[a-zè漢😀🎉]{0,300}") {
            let costs: Vec<usize> = text.chars().map(char::len_utf16).collect();
            let parts = split(&text, Encoding::Ucs2).expect("UCS-2 carries all");
            prop_assert_eq!(parts.len(), oracle(&costs, UCS2_SINGLE, UCS2_PART));
            prop_assert_eq!(parts.concat(), text.clone());
        }
    }
}
