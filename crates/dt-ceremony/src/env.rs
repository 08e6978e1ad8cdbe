//! The clock and the randomness a ceremony uses, injected so tests are deterministic.

use ring::rand::{SecureRandom, SystemRandom};
use time::OffsetDateTime;

/// What a state machine may ask of the outside world: the time and random bytes.
///
/// Implementations must fill `out` entirely with unpredictable bytes in production; the
/// challenges and tokens built from them are only as good as this source.
pub trait Env {
    fn now(&self) -> OffsetDateTime;
    fn random_bytes(&mut self, out: &mut [u8]);
}

/// Fills a fixed-size array from the environment's randomness.
pub fn random_array<const N: usize>(env: &mut (impl Env + ?Sized)) -> [u8; N] {
    let mut out = [0u8; N];
    env.random_bytes(&mut out);
    out
}

/// The production environment: the system clock (UTC) and the operating system's CSPRNG
/// (through ring).
#[derive(Debug)]
pub struct SystemEnv {
    rng: SystemRandom,
}

impl SystemEnv {
    pub fn new() -> Self {
        SystemEnv {
            rng: SystemRandom::new(),
        }
    }
}

impl Default for SystemEnv {
    fn default() -> Self {
        SystemEnv::new()
    }
}

impl Env for SystemEnv {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    fn random_bytes(&mut self, out: &mut [u8]) {
        if self.rng.fill(out).is_err() {
            // ring fails only when the OS has no usable getrandom/urandom. Continuing would
            // hand out predictable challenges and tokens; there is no safe fallback, so stop
            // the process rather than fail open.
            eprintln!("devtrust: the operating system refused to provide random bytes; stopping");
            std::process::abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_env_gives_distinct_random_values() {
        let mut env = SystemEnv::new();
        let a: [u8; 32] = random_array(&mut env);
        let b: [u8; 32] = random_array(&mut env);
        assert_ne!(a, b);
        assert!(env.now().year() >= 2024);
    }
}
