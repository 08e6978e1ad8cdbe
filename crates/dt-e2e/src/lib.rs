//! End-to-end tests and benchmarks live in `tests/` and `benches/`; they drive the programs
//! that `dt_testkit::bin` builds and finds (the `devtrust`, `dtctl` and `dtsh` packages).
