//! The `sidetrack` binary, built inside this package so that the tests can
//! name it with `CARGO_BIN_EXE_*` however cargo was asked to build.
fn main() -> std::process::ExitCode {
    sidetrack::cli::main()
}
