fn main() -> std::process::ExitCode {
    dt_cli::dtctl::main()
}
