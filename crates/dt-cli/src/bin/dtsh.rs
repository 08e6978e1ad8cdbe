fn main() -> std::process::ExitCode {
    dt_cli::dtsh::main()
}
