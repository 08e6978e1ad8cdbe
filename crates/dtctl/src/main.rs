fn main() -> std::process::ExitCode {
    dtctl::main()
}
