//! A tiny xorshift for the fault tests' random kill instants, reproducible
//! from the seed it prints.

use std::time::SystemTime;

/// The generator.
pub struct Rng(u64);

impl Rng {
    /// Seeded from `$var` if it is set, else from the clock; prints the
    /// seed as `var=seed`, ready to paste to replay a failure.
    pub fn from_env(var: &str) -> Rng {
        let seed = std::env::var(var)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        eprintln!("kill instants seed: {var}={seed}");
        Rng(seed)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}
