//! The legacy NumPy generator reproduced bit for bit: DiffusionKit's initial noise
//! (`np.random.seed(s); np.random.randn(1, 16, h, w)`) and torch-fidelity's subset draws.

mod common;

use sd3lab::calib::NpyData;
use sd3lab::rng::NumpyRandomState;

#[test]
fn randn_random_sample_and_permutation_match_numpy_exactly() {
    let dir = tempfile::tempdir().unwrap();
    common::run_oracle("numpy_rng.py", &[dir.path().as_os_str()]);
    for seed in [0u32, 1, 42, u32::MAX] {
        let want = common::read_npy(&dir.path().join(format!("randn_{seed}.npy")));
        assert_eq!(want.shape, vec![1, 16, 8, 6]);
        let got = NumpyRandomState::new(seed).randn(16 * 8 * 6);
        match &want.data {
            NpyData::Float64(v) => assert_eq!(
                v.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                got.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                "seed {seed}"
            ),
            other => panic!("unexpected dtype {:?}", other.dtype()),
        }
        let mut r = NumpyRandomState::new(seed);
        let samples: Vec<f64> = (0..7).map(|_| r.next_f64()).collect();
        assert_eq!(
            common::read_npy(&dir.path().join(format!("sample_{seed}.npy"))).data,
            NpyData::Float64(samples)
        );
        let perm: Vec<i64> = r.permutation(1000).into_iter().map(|i| i as i64).collect();
        assert_eq!(
            common::read_npy(&dir.path().join(format!("perm_{seed}.npy"))).data,
            NpyData::Int64(perm)
        );
    }
}
