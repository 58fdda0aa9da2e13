//! Integration tests of the transparency crate (one test binary): client
//! bundle verification, and cross-tests against independent
//! implementations of RFC 9162 proofs and C2SP signed notes.

mod cross_ct_merkle;
mod cross_signed_note;
mod verify;
