//! Seeded generator of realistic Exchange mail.
