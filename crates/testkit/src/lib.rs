//! bkv's test kit: code that tests of several crates share and that no binary links.
#![forbid(unsafe_code)]
#![deny(unreachable_pub, missing_docs)]

pub mod oprf_oracle;
