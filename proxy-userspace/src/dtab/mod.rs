//! Delegation tables (being written; see issue 3).
