//! Test helpers shared by the collector's own integration tests. Real servers come from the
//! shared `mailvault-harness` crate (a test never skips because a server is missing).

#![allow(dead_code)] // each test binary uses a different part

pub mod http;
