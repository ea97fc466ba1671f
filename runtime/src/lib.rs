//! Shared service runtime.
