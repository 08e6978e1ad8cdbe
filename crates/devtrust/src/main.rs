fn main() -> std::process::ExitCode {
    devtrust::main()
}
