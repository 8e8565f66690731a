//! Sidetrack's developer commands, shared between the `xtask` binary and the
//! integration tests.
