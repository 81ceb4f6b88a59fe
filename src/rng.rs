//! NumPy's legacy random number generator (`np.random.seed` / `RandomState`), bit for bit:
//! MT19937 seeded with `init_genrand`, `random_sample` (53-bit doubles), `randn` (polar
//! Box–Muller with the cached second value), `permutation` and `choice(replace=False)`.
//! DiffusionKit draws its initial noise with `np.random.seed(seed); np.random.randn(...)`, and
//! torch-fidelity picks KID subsets with `RandomState(2020)`, so both need exactly this.

const N: usize = 624;
const M: usize = 397;

/// `numpy.random.RandomState(seed)` (the MT19937 legacy generator).
#[derive(Clone)]
pub struct NumpyRandomState {
    mt: [u32; N],
    index: usize,
    cached_gauss: Option<f64>,
}

impl NumpyRandomState {
    /// `np.random.seed(seed)` for an integer seed in 0..2³².
    pub fn new(seed: u32) -> Self {
        let mut mt = [0u32; N];
        mt[0] = seed;
        for i in 1..N {
            mt[i] = 1812433253u32
                .wrapping_mul(mt[i - 1] ^ (mt[i - 1] >> 30))
                .wrapping_add(i as u32);
        }
        Self {
            mt,
            index: N,
            cached_gauss: None,
        }
    }

    fn generate(&mut self) {
        for i in 0..N {
            let y = (self.mt[i] & 0x8000_0000) | (self.mt[(i + 1) % N] & 0x7fff_ffff);
            let mut v = self.mt[(i + M) % N] ^ (y >> 1);
            if y & 1 != 0 {
                v ^= 0x9908_b0df;
            }
            self.mt[i] = v;
        }
        self.index = 0;
    }

    /// The next raw 32-bit output.
    pub fn next_u32(&mut self) -> u32 {
        if self.index >= N {
            self.generate();
        }
        let mut y = self.mt[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// `random_sample()`: a double in [0, 1) from two outputs (53 bits).
    pub fn next_f64(&mut self) -> f64 {
        let a = (self.next_u32() >> 5) as f64;
        let b = (self.next_u32() >> 6) as f64;
        (a * 67_108_864.0 + b) / 9_007_199_254_740_992.0
    }

    /// One standard normal value (`legacy_gauss`).
    pub fn next_gauss(&mut self) -> f64 {
        if let Some(g) = self.cached_gauss.take() {
            return g;
        }
        loop {
            let x1 = 2.0 * self.next_f64() - 1.0;
            let x2 = 2.0 * self.next_f64() - 1.0;
            let r2 = x1 * x1 + x2 * x2;
            if r2 < 1.0 && r2 != 0.0 {
                let f = (-2.0 * r2.ln() / r2).sqrt();
                self.cached_gauss = Some(f * x1);
                return f * x2;
            }
        }
    }

    /// `randn(n)`: `n` standard normal values in order.
    pub fn randn(&mut self, n: usize) -> Vec<f64> {
        (0..n).map(|_| self.next_gauss()).collect()
    }

    /// A uniform integer in 0..=max by masked rejection (NumPy's `random_interval`).
    fn interval(&mut self, max: u64) -> u64 {
        if max == 0 {
            return 0;
        }
        let mut mask = max;
        for shift in [1, 2, 4, 8, 16, 32] {
            mask |= mask >> shift;
        }
        if max <= 0xffff_ffff {
            loop {
                let v = (self.next_u32() as u64) & mask;
                if v <= max {
                    return v;
                }
            }
        }
        loop {
            let v = (((self.next_u32() as u64) << 32) | self.next_u32() as u64) & mask;
            if v <= max {
                return v;
            }
        }
    }

    /// `permutation(n)`: Fisher–Yates from the end.
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut v: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let j = self.interval(i as u64) as usize;
            v.swap(i, j);
        }
        v
    }

    /// `choice(n, k, replace=False)` = `permutation(n)[:k]`.
    pub fn choice_without_replacement(&mut self, n: usize, k: usize) -> Vec<usize> {
        let mut p = self.permutation(n);
        p.truncate(k);
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_numpy_reference_values() {
        // Values from the metrics reference (numpy 2.x, legacy RandomState).
        let mut r = NumpyRandomState::new(2020);
        assert_eq!(r.permutation(10), vec![2, 4, 9, 1, 5, 7, 6, 3, 8, 0]);
        let mut r = NumpyRandomState::new(2020);
        assert_eq!(
            r.choice_without_replacement(150, 5),
            vec![104, 8, 61, 54, 78]
        );
        assert_eq!(
            r.choice_without_replacement(150, 5),
            vec![32, 147, 47, 50, 82]
        );
        // MT19937 reference: the first output for seed 5489 is 3499211612.
        assert_eq!(NumpyRandomState::new(5489).next_u32(), 3_499_211_612);
    }
}
