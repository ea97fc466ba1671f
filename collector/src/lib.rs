//! Reads Exchange over EWS and publishes items to JetStream. Filled in by its own issue.
