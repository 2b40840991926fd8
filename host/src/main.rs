fn main() -> std::process::ExitCode {
    themis::cli::main()
}
