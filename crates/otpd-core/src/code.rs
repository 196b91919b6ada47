//! One-time codes: their length, their generation from the OS CSPRNG, and a type that never
//! prints its digits.

use std::fmt;

use rand::RngExt;
use rand::rand_core::UnwrapErr;
use rand::rngs::SysRng;
use zeroize::Zeroizing;

/// How many digits a code has. Each dialect narrows the range further (Pinpoint 5-8, amm 4-6);
/// the core accepts anything either dialect can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodeLength(u8);

impl CodeLength {
    pub const MIN: u8 = 4;
    pub const MAX: u8 = 8;

    pub fn new(digits: u8) -> Option<Self> {
        (Self::MIN..=Self::MAX)
            .contains(&digits)
            .then_some(Self(digits))
    }

    pub fn digits(self) -> u8 {
        self.0
    }
}

/// A code as generated or as submitted by a user. Its `Debug` never shows the digits.
#[derive(Clone, PartialEq, Eq)]
pub struct OtpCode(Zeroizing<String>);

impl OtpCode {
    /// Draws a code of `length` uniform random digits from the operating system's CSPRNG.
    /// The whole number is drawn at once from `0..10^length` with rand's unbiased uniform
    /// sampling (rejection, so no modulo bias), then left-padded with zeros.
    pub fn generate(length: CodeLength) -> Self {
        let digits = usize::from(length.digits());
        let upper = 10u64.pow(u32::from(length.digits()));
        let value = UnwrapErr(SysRng).random_range(0..upper);
        Self(Zeroizing::new(format!("{value:0digits$}")))
    }

    /// A code submitted for checking. Anything is accepted here (a wrong format is simply a
    /// wrong code), but it is bounded so a huge input cannot cost work. Control characters,
    /// which no code has, are kept as U+FFFD: the amm search history stores the submission, and
    /// PostgreSQL's text cannot hold NUL.
    pub fn submitted(input: &str) -> Option<Self> {
        if input.is_empty() || input.len() > 64 {
            return None;
        }
        if !input.chars().any(char::is_control) {
            return Some(Self(Zeroizing::new(input.to_owned())));
        }
        // Room for every character as U+FFFD (3 bytes), so the buffer never moves and leaves a
        // copy behind.
        let mut printable = String::with_capacity(input.len() * 3);
        for c in input.chars() {
            printable.push(if c.is_control() {
                char::REPLACEMENT_CHARACTER
            } else {
                c
            });
        }
        Some(Self(Zeroizing::new(printable)))
    }

    /// The digits, for the one place that must have them: the message text.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for OtpCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OtpCode([REDACTED])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn length_range_is_four_to_eight() {
        assert!(CodeLength::new(3).is_none());
        assert_eq!(CodeLength::new(4).map(CodeLength::digits), Some(4));
        assert_eq!(CodeLength::new(8).map(CodeLength::digits), Some(8));
        assert!(CodeLength::new(9).is_none());
    }

    #[test]
    fn debug_hides_the_digits() {
        let code = OtpCode::submitted("123456").expect("valid");
        assert_eq!(format!("{code:?}"), "OtpCode([REDACTED])");
    }

    #[test]
    fn submitted_codes_are_bounded() {
        assert!(OtpCode::submitted("").is_none());
        assert!(OtpCode::submitted(&"1".repeat(65)).is_none());
        assert!(OtpCode::submitted(&"1".repeat(64)).is_some());
        let with_nul = OtpCode::submitted("12\u{0}34").expect("submitted");
        assert_eq!(with_nul.expose(), "12\u{fffd}34");
    }

    #[test]
    fn leading_zeros_occur_and_are_kept() {
        // With 4 digits a leading zero has probability 1/10 per draw; 2,000 draws without one
        // would happen with probability 0.9^2000, i.e. never.
        let length = CodeLength::new(4).expect("valid");
        let saw_leading_zero =
            (0..2_000).any(|_| OtpCode::generate(length).expose().starts_with('0'));
        assert!(saw_leading_zero);
    }

    #[test]
    fn every_digit_appears_in_every_position() {
        let length = CodeLength::new(6).expect("valid");
        let mut seen = [[false; 10]; 6];
        for _ in 0..5_000 {
            let code = OtpCode::generate(length);
            for (position, digit) in code.expose().bytes().enumerate() {
                seen[position][usize::from(digit - b'0')] = true;
            }
        }
        assert!(seen.iter().flatten().all(|&s| s));
    }

    proptest! {
        #[test]
        fn generated_codes_have_the_length_and_only_digits(digits in 4u8..=8) {
            let length = CodeLength::new(digits).expect("in range");
            let code = OtpCode::generate(length);
            prop_assert_eq!(code.expose().len(), usize::from(digits));
            prop_assert!(code.expose().bytes().all(|b| b.is_ascii_digit()));
        }
    }
}
