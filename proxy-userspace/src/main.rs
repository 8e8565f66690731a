fn main() -> std::process::ExitCode {
    sidetrack::cli::main()
}
