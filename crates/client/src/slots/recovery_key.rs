//! Recovery keys: 256 random bits shown once as 13 groups of 4 symbols and a check symbol,
//! typed back to restore without the vault.

use super::SlotSecret;
use rand::RngCore;
use zeroize::Zeroizing;

/// Why a typed recovery key was refused (before any slot is tried).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecoveryKeyError {
    /// Wrong number of key characters, separators not counted (the count found).
    #[error("the recovery key has {0} characters; it should have 53 (13 groups of 4 and one check character)")]
    Length(usize),
    /// A character outside the alphabet (the character, its 1-based position in the input).
    #[error(
        "the recovery key contains {0:?} at position {1}, which is not a recovery key character"
    )]
    Character(char, usize),
    /// The check character does not match (a typo), or the key is not one this code issues.
    #[error("the recovery key has a typo: its check character does not match (look for a mistyped or swapped character)")]
    Checksum,
}

// Crockford base32: no I, L, O, U; check symbols add *~$=U (mod 37).
pub(super) const ALPHABET: &[u8; 37] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ*~$=U";
const DATA_SYMBOLS: usize = 52; // 260 bits >= 256
const GROUP: usize = 4;

/// A 256-bit recovery key, shown to the user once.
pub struct RecoveryKey(pub(super) Zeroizing<[u8; 32]>);

impl std::fmt::Debug for RecoveryKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecoveryKey(<redacted>)")
    }
}

fn symbol_value(c: char) -> Option<u8> {
    let c = c.to_ascii_uppercase();
    let c = match c {
        'O' => '0',
        'I' | 'L' => '1',
        c => c,
    };
    ALPHABET
        .iter()
        .position(|&a| a as char == c)
        .map(|p| p as u8)
}

/// The check symbol: the key's 52 base-32 digits as a number, mod 37. Since
/// 37 is prime and larger than 32, any single changed digit and any swap of
/// two adjacent different digits changes the remainder, so both are always
/// caught (the difference is d·32^i or d·32^i·31 with 0 < |d| < 32).
fn check_symbol(digits: &[u8]) -> u8 {
    digits
        .iter()
        .fold(0u32, |acc, &d| (acc * 32 + u32::from(d)) % 37) as u8
}

impl RecoveryKey {
    /// A fresh random recovery key from the OS RNG.
    pub fn generate() -> Self {
        let mut k = Zeroizing::new([0u8; 32]);
        crate::random::OsRng.fill_bytes(k.as_mut());
        RecoveryKey(k)
    }

    /// The key as 52 base-32 digits: 4 zero bits, then the 256 key bits, MSB first.
    fn digits(&self) -> Zeroizing<Vec<u8>> {
        let mut bits = Zeroizing::new(vec![false; 4]);
        for &b in self.0.iter() {
            bits.extend((0..8).rev().map(|i| (b >> i) & 1 == 1));
        }
        Zeroizing::new(
            bits.chunks(5)
                .map(|c| c.iter().fold(0u8, |acc, &bit| (acc << 1) | u8::from(bit)))
                .collect(),
        )
    }

    /// Grouped display form: 13 groups of 4 and the check character.
    pub fn display(&self) -> String {
        let d = self.digits();
        let mut s = String::new();
        for (i, &x) in d.iter().enumerate() {
            if i > 0 && i % GROUP == 0 {
                s.push('-');
            }
            s.push(ALPHABET[x as usize] as char);
        }
        s.push('-');
        s.push(ALPHABET[check_symbol(&d) as usize] as char);
        s
    }

    /// Parses a typed key: spaces, dashes and case are ignored; O/I/L read as 0/1/1.
    pub fn parse(input: &str) -> Result<Self, RecoveryKeyError> {
        let chars: Vec<(usize, char)> = input
            .chars()
            .enumerate()
            .filter(|(_, c)| !c.is_whitespace() && *c != '-')
            .collect();
        if chars.len() != DATA_SYMBOLS + 1 {
            return Err(RecoveryKeyError::Length(chars.len()));
        }
        let mut digits = Zeroizing::new(Vec::with_capacity(DATA_SYMBOLS));
        for &(pos, c) in &chars[..DATA_SYMBOLS] {
            match symbol_value(c) {
                Some(v) if v < 32 => digits.push(v),
                _ => return Err(RecoveryKeyError::Character(c, pos + 1)),
            }
        }
        let (pos, c) = chars[DATA_SYMBOLS];
        let check = symbol_value(c).ok_or(RecoveryKeyError::Character(c, pos + 1))?;
        if check != check_symbol(&digits) {
            return Err(RecoveryKeyError::Checksum);
        }
        let mut bits = Zeroizing::new(Vec::with_capacity(DATA_SYMBOLS * 5));
        for &d in digits.iter() {
            bits.extend((0..5).rev().map(|i| (d >> i) & 1 == 1));
        }
        // The 4 padding bits are always zero in a key we issued.
        if bits[..4].iter().any(|&b| b) {
            return Err(RecoveryKeyError::Checksum);
        }
        let mut key = Zeroizing::new([0u8; 32]);
        for (i, byte) in bits[4..].chunks(8).enumerate() {
            key[i] = byte
                .iter()
                .fold(0u8, |acc, &bit| (acc << 1) | u8::from(bit));
        }
        Ok(RecoveryKey(key))
    }

    /// The slot's X25519 secret: HKDF(recovery key, salt = slot id).
    pub fn slot_secret(&self, slot_id: &str) -> SlotSecret {
        SlotSecret::derive(self.0.as_ref(), slot_id, b"bkv recovery-key slot v1")
    }
}
