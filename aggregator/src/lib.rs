//! Consumes items from JetStream and stores them in the repository. Filled in by its own issue.
