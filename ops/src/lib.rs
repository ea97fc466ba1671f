//! The `mailvault` CLI's library: the single-process (all-in-one) mode in [`local`].

pub mod local;
