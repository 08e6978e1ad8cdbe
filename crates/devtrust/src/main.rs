// mimalloc instead of glibc's malloc: the server allocates and frees many small buffers
// on several threads at once (requests, certificates, audit events), and glibc's arenas
// took about a tenth of a device authentication's CPU (malloc, free, consolidation).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    devtrust::main()
}
