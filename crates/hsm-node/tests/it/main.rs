//! Integration tests of the replication layer (one test binary): openraft's
//! storage suite against the sealed stores, and in-process fleets over
//! loopback TCP.

mod byzantine;
mod fleet;
mod operator;
mod raft_storage;
mod rollback;
