fn main() -> std::process::ExitCode {
    dtsh::main()
}
