//! One module per group of commands.

pub mod backup;
pub mod bench;
pub mod bench_dist;
pub mod client;
pub mod demo;
pub mod local;
pub mod nats;
pub mod repo;
