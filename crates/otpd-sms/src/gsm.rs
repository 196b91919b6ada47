//! The GSM 03.38 default alphabet and its extension table.

/// The 128 characters of the default alphabet, in code order.
const BASIC: [char; 128] = [
    '@', '£', '$', '¥', 'è', 'é', 'ù', 'ì', 'ò', 'Ç', '\n', 'Ø', 'ø', '\r', 'Å', 'å', //
    'Δ', '_', 'Φ', 'Γ', 'Λ', 'Ω', 'Π', 'Ψ', 'Σ', 'Θ', 'Ξ', '\u{1b}', 'Æ', 'æ', 'ß', 'É', //
    ' ', '!', '"', '#', '¤', '%', '&', '\'', '(', ')', '*', '+', ',', '-', '.', '/', //
    '0', '1', '2', '3', '4', '5', '6', '7', '8', '9', ':', ';', '<', '=', '>', '?', //
    '¡', 'A', 'B', 'C', 'D', 'E', 'F', 'G', 'H', 'I', 'J', 'K', 'L', 'M', 'N', 'O', //
    'P', 'Q', 'R', 'S', 'T', 'U', 'V', 'W', 'X', 'Y', 'Z', 'Ä', 'Ö', 'Ñ', 'Ü', '§', //
    '¿', 'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j', 'k', 'l', 'm', 'n', 'o', //
    'p', 'q', 'r', 's', 't', 'u', 'v', 'w', 'x', 'y', 'z', 'ä', 'ö', 'ñ', 'ü', 'à', //
];

/// The extension table: characters sent as ESC (0x1B) followed by this code.
const EXTENSION: [(char, u8); 10] = [
    ('\u{0c}', 0x0A),
    ('^', 0x14),
    ('{', 0x28),
    ('}', 0x29),
    ('\\', 0x2F),
    ('[', 0x3C),
    ('~', 0x3D),
    (']', 0x3E),
    ('|', 0x40),
    ('€', 0x65),
];

pub const ESCAPE: u8 = 0x1B;

/// How a character is written in GSM 7-bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Septets {
    /// One septet from the default alphabet.
    Basic(u8),
    /// ESC and one septet from the extension table: costs two.
    Extended(u8),
}

impl Septets {
    pub fn cost(self) -> usize {
        match self {
            Self::Basic(_) => 1,
            Self::Extended(_) => 2,
        }
    }
}

/// The GSM encoding of `c`, or `None` if the default alphabet cannot carry it. The escape
/// character itself is not a character a text may contain.
pub fn septets(c: char) -> Option<Septets> {
    if let Some(&ascii) = ASCII.get(c as usize) {
        return ascii;
    }
    search(c)
}

/// `septets` for the ASCII range, worked out once at compile time from the two tables: texts
/// are mostly ASCII, and searching the 128 characters for each of them was most of composing
/// a message.
const ASCII: [Option<Septets>; 128] = {
    let mut table = [None; 128];
    let mut c = 0;
    while c < 128 {
        table[c] = search(c as u8 as char);
        c += 1;
    }
    table
};

/// Looks `c` up in the alphabet, then in the extension table.
const fn search(c: char) -> Option<Septets> {
    if c == '\u{1b}' {
        return None;
    }
    let mut code = 0;
    while code < BASIC.len() {
        if BASIC[code] == c {
            return Some(Septets::Basic(code as u8));
        }
        code += 1;
    }
    let mut index = 0;
    while index < EXTENSION.len() {
        if EXTENSION[index].0 == c {
            return Some(Septets::Extended(EXTENSION[index].1));
        }
        index += 1;
    }
    None
}

/// Whether every character of `text` fits the GSM 7-bit alphabet.
pub fn fits(text: &str) -> bool {
    text.chars().all(|c| septets(c).is_some())
}

/// `text` as unpacked septets (one per byte), as SMPP's GSM data coding carries it.
pub fn encode_unpacked(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len());
    for c in text.chars() {
        match septets(c)? {
            Septets::Basic(code) => out.push(code),
            Septets::Extended(code) => out.extend([ESCAPE, code]),
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascii_letters_and_digits_are_basic() {
        assert_eq!(septets('A'), Some(Septets::Basic(0x41)));
        assert_eq!(septets('0'), Some(Septets::Basic(0x30)));
        assert_eq!(septets('@'), Some(Septets::Basic(0x00)));
    }

    #[test]
    fn extension_characters_cost_two() {
        assert_eq!(septets('€'), Some(Septets::Extended(0x65)));
        assert_eq!(septets('€').map(Septets::cost), Some(2));
        for c in ['^', '{', '}', '\\', '[', '~', ']', '|', '\u{0c}'] {
            assert_eq!(septets(c).map(Septets::cost), Some(2), "{c:?}");
        }
    }

    #[test]
    fn characters_outside_the_alphabet() {
        for c in ['`', 'ú', 'ç', '漢', '😀', '\u{1b}'] {
            assert_eq!(septets(c), None, "{c:?}");
        }
        assert!(fits("Codice è 1234 à ù"));
        assert!(!fits("Código 1234"));
    }

    #[test]
    fn the_ascii_table_agrees_with_the_alphabet() {
        for c in (0..=255u8)
            .map(char::from)
            .chain(BASIC)
            .chain(EXTENSION.map(|(c, _)| c))
        {
            assert_eq!(septets(c), search(c), "{c:?}");
        }
        // Printable ASCII but the backtick (94), and line feed, carriage return, form feed.
        assert_eq!(ASCII.iter().filter(|entry| entry.is_some()).count(), 97);
    }

    #[test]
    fn unpacked_encoding_escapes_extension_characters() {
        assert_eq!(encode_unpacked("A€"), Some(vec![0x41, 0x1B, 0x65]));
        assert_eq!(encode_unpacked("`"), None);
    }
}
