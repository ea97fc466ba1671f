//! TEMPORARY stub while the index core lands on its branch.
pub mod api;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    All,
    User(String),
}
