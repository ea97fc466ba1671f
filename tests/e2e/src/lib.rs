//! End-to-end tests of the distributed pipeline live in `tests/`; this crate has no library
//! code. Run them with `cargo test -p mailvault-e2e` (they start nats-server, Garage and the EWS
//! simulator themselves; `MAILVAULT_CORPUS=<maildir>` adds a second simulator over real mail).
