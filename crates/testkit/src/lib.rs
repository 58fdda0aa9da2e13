//! bkv's test kit: code that tests, benches and fuzzers of several crates share and that no
//! shipped binary links (the fuzzers link [`one_node`] only: feature `processes` off). [`system`] is the system tests' harness (real processes of a dev deployment),
//! [`services`] what a service under test needs (a test PKI, free ports, its ready line),
//! [`one_node`] the loop a one-node host drives a core with, [`oprf_oracle`] the
//! operator-attacker's offline dictionary test.
#![forbid(unsafe_code)]
#![deny(unreachable_pub, unnameable_types, missing_docs)]

pub mod one_node;
pub mod oprf_oracle;
#[cfg(feature = "processes")]
pub mod services;
#[cfg(feature = "processes")]
pub mod system;
