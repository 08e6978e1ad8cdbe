fn main() -> std::process::ExitCode {
    dt_cli::devtrust::main()
}
