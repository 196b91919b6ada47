//! The one rule for the short identifiers and names otpd stores from outside: account and
//! application names, Pinpoint `ReferenceId`s, amm `app_id`s, carriers' message ids and receipt
//! states.

/// Whether `text` is 1 to `max_chars` characters, none of them a control character. Identifiers
/// have no use for control characters, and PostgreSQL's text cannot hold NUL: a request carrying
/// one would fail there as an internal error. The bound keeps a value within what an index
/// entry holds.
pub fn is_short_printable(text: &str, max_chars: usize) -> bool {
    (1..=max_chars).contains(&text.chars().count()) && !text.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_printable_text_is_bounded_and_has_no_control_character() {
        assert!(is_short_printable("order-1", 48));
        assert!(is_short_printable("ü", 1));
        assert!(is_short_printable(&"x".repeat(48), 48));
        assert!(!is_short_printable(&"x".repeat(49), 48));
        assert!(!is_short_printable("", 48));
        for control in ["a\0b", "line\nbreak", "tab\there", "\u{7f}", "\u{9b}"] {
            assert!(!is_short_printable(control, 48), "{control:?}");
        }
    }
}
