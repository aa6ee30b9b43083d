//! A token bucket: the one rate limit behind the per-device message limit and the
//! per-session request limit.

use std::time::Instant;

/// Refilled at `rate` tokens a second up to `burst`; each message or request takes one.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TokenBucket {
    tokens: f64,
    refilled: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub(crate) fn full(burst: f64) -> Self {
        Self {
            tokens: burst,
            refilled: Instant::now(),
        }
    }

    /// Takes one token at `now`; `false` when there is none left.
    pub(crate) fn take(&mut self, rate: f64, burst: f64, now: Instant) -> bool {
        let earned = now.saturating_duration_since(self.refilled).as_secs_f64() * rate;
        self.tokens = (self.tokens + earned).min(burst);
        self.refilled = now;
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }

    /// When a token was last asked for.
    pub(crate) fn last_used(&self) -> Instant {
        self.refilled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_then_the_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::full(3.0);
        assert!((0..3).all(|_| bucket.take(1.0, 3.0, start)));
        assert!(!bucket.take(1.0, 3.0, start));
        assert!(bucket.take(1.0, 3.0, start + Duration::from_secs(1)));
        assert!(!bucket.take(1.0, 3.0, start + Duration::from_secs(1)));
        // Never more than the burst, however long it rested.
        let later = start + Duration::from_secs(100);
        assert!((0..3).all(|_| bucket.take(1.0, 3.0, later)));
        assert!(!bucket.take(1.0, 3.0, later));
    }
}
