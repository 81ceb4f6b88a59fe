"""numpy side of tests/numpy_rng.rs: writes legacy-RNG draws as .npy files."""
import sys

import numpy as np

out = sys.argv[1]
for seed in (0, 1, 42, 4294967295):
    np.random.seed(seed)
    np.save(f"{out}/randn_{seed}.npy", np.random.randn(1, 16, 8, 6))
    r = np.random.RandomState(seed)
    np.save(f"{out}/sample_{seed}.npy", r.random_sample(7))
    np.save(f"{out}/perm_{seed}.npy", r.permutation(1000).astype(np.int64))
