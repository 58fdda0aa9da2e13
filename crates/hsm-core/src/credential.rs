//! How a stored credential names its OPRF key (docs/formats.md "Credential"; issue 27, item 1).
//!
//! opaque-ke derives a record's OPRF key from the fleet's OPRF seed and a *credential
//! identifier*. With the record id alone as the identifier, every registration of a user on a
//! fleet had the same key, so anyone holding the user's token could evaluate it for a whole
//! dictionary outside any counted login and test the dictionary offline against one counted
//! `LoginStart`. Each registration now draws a fresh salt, and the identifier is
//! `record_id || salt`: an evaluation outside the user's own registration session is under
//! another key and says nothing about the registered password.
//!
//! `Credential::opaque_record` is either (format 2) `0x02 || salt[32] || ServerRegistration`
//! (225 bytes), or (format 1, registered by an earlier release) the bare 192-byte
//! `ServerRegistration`, whose identifier is the record id.

use crate::state::RecordId;

/// Bytes of a registration's salt.
pub(crate) const SALT_LEN: usize = 32;
/// The tag of a salted record (format 2).
const SALTED: u8 = 2;
/// Bytes of a serialized `ServerRegistration` of bkv's suite: the client's public key (32),
/// the masking key (64) and the envelope (nonce 32, tag 64).
const REGISTRATION_LEN: usize = 192;

/// The credential identifier of a registration with `salt`.
pub(crate) fn identifier(record_id: &RecordId, salt: &[u8; SALT_LEN]) -> Vec<u8> {
    let mut id = Vec::with_capacity(record_id.len() + SALT_LEN);
    id.extend_from_slice(record_id);
    id.extend_from_slice(salt);
    id
}

/// The stored form of a registration made with `salt` (format 2).
pub(crate) fn salted(salt: &[u8; SALT_LEN], registration: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + SALT_LEN + registration.len());
    out.push(SALTED);
    out.extend_from_slice(salt);
    out.extend_from_slice(registration);
    out
}

/// A stored record's credential identifier and its `ServerRegistration` bytes.
pub(crate) fn split<'a>(record_id: &RecordId, opaque_record: &'a [u8]) -> (Vec<u8>, &'a [u8]) {
    if opaque_record.len() == 1 + SALT_LEN + REGISTRATION_LEN {
        if let Some((&SALTED, rest)) = opaque_record.split_first() {
            let (salt, registration) = rest.split_at(SALT_LEN);
            if let Ok(salt) = <[u8; SALT_LEN]>::try_from(salt) {
                return (identifier(record_id, &salt), registration);
            }
        }
    }
    (record_id.to_vec(), opaque_record)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn salted_records_split_back_and_legacy_records_use_the_record_id() {
        let rid = [7u8; 32];
        let reg = [9u8; REGISTRATION_LEN];
        let stored = salted(&[1; SALT_LEN], &reg);
        let (id, r) = split(&rid, &stored);
        assert_eq!(r, reg);
        assert_eq!(id, identifier(&rid, &[1; SALT_LEN]));
        // A legacy record (whatever its first byte) keeps the record id.
        let mut legacy = reg;
        legacy[0] = SALTED;
        let (id, r) = split(&rid, &legacy);
        assert_eq!((id.as_slice(), r), (rid.as_slice(), legacy.as_slice()));
    }
}
