//! Helpers shared by Sidetrack's integration tests.
