//! The auth service's one clock and one source of randomness. Every ceremony driver takes
//! both from here ([`ServerEnv::ceremony`]), so a test can fix the time the whole service
//! sees (token expiry, challenge lifetimes, certificate validity) and move it forward
//! without sleeping.

use std::sync::{Arc, Mutex};

use dt_ceremony::env::{Env, SystemEnv};
use time::{Duration, OffsetDateTime};

/// The clock and randomness of one auth server, cheap to clone.
#[derive(Clone, Debug)]
pub struct ServerEnv {
    clock: Arc<Clock>,
}

#[derive(Debug)]
enum Clock {
    System,
    /// A time that moves only when a test says so ([`ClockHandle`]).
    Fixed(Arc<Mutex<OffsetDateTime>>),
}

impl ServerEnv {
    /// The system clock (UTC) and the operating system's CSPRNG: what production runs.
    pub fn system() -> ServerEnv {
        ServerEnv {
            clock: Arc::new(Clock::System),
        }
    }

    /// A clock stopped at `at`, and the handle that moves it (tests). Randomness still
    /// comes from the operating system: a fixed clock never weakens challenges or tokens.
    pub fn fixed(at: OffsetDateTime) -> (ServerEnv, ClockHandle) {
        let t = Arc::new(Mutex::new(at));
        (
            ServerEnv {
                clock: Arc::new(Clock::Fixed(t.clone())),
            },
            ClockHandle(t),
        )
    }

    /// The time now.
    pub fn now(&self) -> OffsetDateTime {
        match self.clock.as_ref() {
            Clock::System => OffsetDateTime::now_utc(),
            Clock::Fixed(t) => *t.lock().unwrap_or_else(|p| p.into_inner()),
        }
    }

    /// The [`Env`] a ceremony's state machine runs with: this clock and the OS CSPRNG.
    pub fn ceremony(&self) -> CeremonyEnv {
        CeremonyEnv {
            clock: self.clone(),
            rng: SystemEnv::new(),
        }
    }
}

impl Default for ServerEnv {
    fn default() -> Self {
        ServerEnv::system()
    }
}

/// Moves a fixed [`ServerEnv`] clock.
#[derive(Clone, Debug)]
pub struct ClockHandle(Arc<Mutex<OffsetDateTime>>);

impl ClockHandle {
    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let mut t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *t += by;
    }
}

/// One ceremony's view of the [`ServerEnv`].
#[derive(Debug)]
pub struct CeremonyEnv {
    clock: ServerEnv,
    rng: SystemEnv,
}

impl Env for CeremonyEnv {
    fn now(&self) -> OffsetDateTime {
        self.clock.now()
    }

    fn random_bytes(&mut self, out: &mut [u8]) {
        self.rng.random_bytes(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fixed_clock_moves_only_when_advanced_and_ceremonies_see_it() {
        let at = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let (env, clock) = ServerEnv::fixed(at);
        assert_eq!(env.now(), at);
        let mut c = env.ceremony();
        assert_eq!(c.now(), at);
        clock.advance(Duration::minutes(5));
        assert_eq!(env.now(), at + Duration::minutes(5));
        // A ceremony started earlier follows the same clock.
        assert_eq!(c.now(), at + Duration::minutes(5));
        // Randomness is real even with a fixed clock.
        let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
        c.random_bytes(&mut a);
        c.random_bytes(&mut b);
        assert_ne!(a, b);
    }

    #[test]
    fn the_system_clock_is_the_real_time() {
        let env = ServerEnv::system();
        let d = (env.now() - OffsetDateTime::now_utc()).abs();
        assert!(d < Duration::seconds(5), "{d}");
    }
}
