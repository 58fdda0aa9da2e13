//! UniFFI's binding generator at the version this crate's scaffolding uses:
//! `cargo run -p bkv-bindings --example uniffi-bindgen -- generate --library
//! target/debug/libbkv_sdk.so --language python --out-dir DIR` (scripts/bindings.sh runs it).
fn main() {
    uniffi::uniffi_bindgen_main()
}
