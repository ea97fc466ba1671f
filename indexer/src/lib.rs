//! Builds the search index and serves the gRPC API. Filled in by its own issue.
