//! CPU BLAS kernel selection.
//!
//! On Linux the binary links Debian's OpenBLAS ahead of the reference BLAS that the MLX wheel
//! bundles (see `crates/mlx-sys/build.rs`), so MLX's `cblas_sgemm` calls land in OpenBLAS.
//! Debian 12's OpenBLAS 0.3.21 does not recognise recent Xeons and falls back to its generic
//! "Prescott" kernels (~45 GFLOP/s instead of ~200 for an f32 2048² GEMM on an AVX-512 core).
//! OpenBLAS reads `OPENBLAS_CORETYPE` once, while the library loads, before `main` runs; so
//! [`select_cpu_kernels`] re-executes the program once with the variable set when it is safe and
//! useful, and the new process checks a GEMM against a reference before trusting the kernels.
//!
//! Rules, in order:
//! 1. `OPENBLAS_CORETYPE` already set by the user or the machine: respected, never overridden.
//! 2. OpenBLAS already detected a specific core (not a generic fallback): nothing to do.
//! 3. The CPU supports AVX-512 (F, DQ, BW, VL) → `SkylakeX`; else AVX2 + FMA → `Haswell`.
//!    The re-executed process verifies `cblas_sgemm` against a float64 reference; if it is off,
//!    it re-executes once more without the variable (generic kernels, correct results).

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::path::PathBuf;

/// Environment variable through which a process tells its re-executed self what it chose.
pub const CHOICE_VAR: &str = "SD3LAB_BLAS_CHOICE";
/// OpenBLAS's own core-type override.
pub const CORETYPE_VAR: &str = "OPENBLAS_CORETYPE";

/// How the CPU GEMM kernels were chosen in this process.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", content = "core", rename_all = "snake_case")]
pub enum KernelChoice {
    /// No OpenBLAS in this build (macOS uses Accelerate; other builds the wheel's BLAS).
    NotApplicable,
    /// `OPENBLAS_CORETYPE` came from the environment and was left alone.
    FromEnvironment(String),
    /// OpenBLAS's own detection was kept (it found a specific core).
    Autodetected(String),
    /// SD3 Lab set `OPENBLAS_CORETYPE` and the GEMM check passed.
    ForcedVerified(String),
    /// SD3 Lab tried this core type, the GEMM check failed, generic kernels are in use.
    Rejected(String),
}

impl std::fmt::Display for KernelChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotApplicable => write!(f, "not applicable (no OpenBLAS in this build)"),
            Self::FromEnvironment(c) => write!(f, "{c}, from OPENBLAS_CORETYPE in the environment"),
            Self::Autodetected(c) => write!(f, "{c}, detected by OpenBLAS"),
            Self::ForcedVerified(c) => {
                write!(
                    f,
                    "{c}, chosen by sd3lab for this CPU and verified against a reference GEMM"
                )
            }
            Self::Rejected(c) => {
                write!(
                    f,
                    "generic: {c} failed the reference GEMM check, so it was not used"
                )
            }
        }
    }
}

/// Looks a symbol up the way the dynamic linker resolves it for libmlx (global scope).
fn global_symbol(name: &str) -> Option<*mut c_void> {
    let name = CString::new(name).ok()?;
    // SAFETY: dlsym with RTLD_DEFAULT and a valid C string has no preconditions.
    let ptr = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
    (!ptr.is_null()).then_some(ptr)
}

/// The file of the shared object that defines `ptr`.
fn library_of(ptr: *mut c_void) -> Option<PathBuf> {
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    // SAFETY: dladdr only reads the process's link map and fills `info`.
    if unsafe { libc::dladdr(ptr, &mut info) } == 0 || info.dli_fname.is_null() {
        return None;
    }
    // SAFETY: dladdr returned a NUL-terminated path owned by the loader.
    let name = unsafe { CStr::from_ptr(info.dli_fname) };
    Some(PathBuf::from(name.to_string_lossy().into_owned()))
}

fn openblas_string(symbol: &str) -> Option<String> {
    let ptr = global_symbol(symbol)?;
    // SAFETY: openblas_get_corename/openblas_get_config take no arguments and return a static string.
    let f: extern "C" fn() -> *const c_char = unsafe { std::mem::transmute(ptr) };
    let s = f();
    if s.is_null() {
        return None;
    }
    // SAFETY: OpenBLAS returns a NUL-terminated static string.
    Some(
        unsafe { CStr::from_ptr(s) }
            .to_string_lossy()
            .trim()
            .to_owned(),
    )
}

/// The core type OpenBLAS runs with, if OpenBLAS is loaded.
pub fn openblas_core() -> Option<String> {
    openblas_string("openblas_get_corename")
}

/// OpenBLAS's build configuration string, if OpenBLAS is loaded.
pub fn openblas_config() -> Option<String> {
    openblas_string("openblas_get_config")
}

/// Core names OpenBLAS uses when it does not recognise the CPU (pre-AVX kernels).
fn is_generic_core(core: &str) -> bool {
    [
        "prescott",
        "core2",
        "nehalem",
        "penryn",
        "dunnington",
        "katmai",
        "coppermine",
        "northwood",
        "banias",
        "atom",
    ]
    .contains(&core.to_ascii_lowercase().as_str())
}

/// The fastest OpenBLAS core type this CPU can run, by its instruction set.
pub fn best_core_for_cpu() -> Option<&'static str> {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512dq")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vl")
        {
            return Some("SkylakeX");
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return Some("Haswell");
        }
    }
    None
}

/// The CBLAS `sgemm` signature (32-bit integers, as Debian's OpenBLAS and MLX use).
pub type CblasSgemm = extern "C" fn(
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    f32,
    *const f32,
    c_int,
    *const f32,
    c_int,
    f32,
    *mut f32,
    c_int,
);

/// The `cblas_sgemm` MLX's CPU backend calls (OpenBLAS on Linux), for kernels that multiply
/// matrices outside MLX's graph; `None` where the process has none.
pub fn cblas_sgemm() -> Option<CblasSgemm> {
    static SGEMM: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    let ptr = (*SGEMM.get_or_init(|| global_symbol("cblas_sgemm").map(|p| p as usize)))?;
    // SAFETY: the symbol is the standard CBLAS sgemm, whose signature `CblasSgemm` spells out.
    Some(unsafe { std::mem::transmute::<usize, CblasSgemm>(ptr) })
}

/// Runs the process's `cblas_sgemm` on a deterministic product and returns the largest
/// error relative to a float64 reference, scaled by the row norms. `None`: no cblas_sgemm.
pub fn sgemm_reference_error() -> Option<f64> {
    let sgemm = cblas_sgemm()?;
    let (m, n, k) = (67usize, 53usize, 129usize);
    let a: Vec<f32> = (0..m * k)
        .map(|i| ((i * 7919 % 211) as f32 - 105.0) / 53.0)
        .collect();
    let b: Vec<f32> = (0..k * n)
        .map(|i| ((i * 104729 % 197) as f32 - 98.0) / 41.0)
        .collect();
    let mut c = vec![0f32; m * n];
    const ROW_MAJOR: c_int = 101;
    const NO_TRANS: c_int = 111;
    sgemm(
        ROW_MAJOR,
        NO_TRANS,
        NO_TRANS,
        m as c_int,
        n as c_int,
        k as c_int,
        1.0,
        a.as_ptr(),
        k as c_int,
        b.as_ptr(),
        n as c_int,
        0.0,
        c.as_mut_ptr(),
        n as c_int,
    );
    Some(max_relative_error(&a, &b, &c, m, n, k))
}

/// max |C − A·B| / (|A|·|B|) per element, with the reference in float64.
pub fn max_relative_error(a: &[f32], b: &[f32], c: &[f32], m: usize, n: usize, k: usize) -> f64 {
    let mut worst = 0f64;
    for i in 0..m {
        for j in 0..n {
            let (mut exact, mut scale) = (0f64, 0f64);
            for p in 0..k {
                let term = a[i * k + p] as f64 * b[p * n + j] as f64;
                exact += term;
                scale += term.abs();
            }
            let err = (c[i * n + j] as f64 - exact).abs() / scale.max(f64::MIN_POSITIVE);
            worst = worst.max(err);
        }
    }
    worst
}

/// Tolerance of the GEMM check: float32 accumulation over k ≈ 129 terms stays far below it,
/// while kernels that compute garbage or use the wrong instruction set are far above it.
pub const SGEMM_TOLERANCE: f64 = 1e-4;

/// What this process's kernels are and how they were chosen (after [`select_cpu_kernels`]).
pub fn current_choice() -> KernelChoice {
    if !mlx_sys::OPENBLAS_LINKED || openblas_core().is_none() {
        return KernelChoice::NotApplicable;
    }
    let marker = std::env::var(CHOICE_VAR).ok();
    let env_core = std::env::var(CORETYPE_VAR)
        .ok()
        .filter(|v| !v.trim().is_empty());
    match (marker.as_deref(), env_core) {
        (Some(m), Some(core)) if m == format!("forced:{core}") => {
            KernelChoice::ForcedVerified(core)
        }
        (_, Some(core)) => KernelChoice::FromEnvironment(core),
        (Some(m), None) if m.starts_with("rejected:") => {
            KernelChoice::Rejected(m["rejected:".len()..].to_owned())
        }
        _ => KernelChoice::Autodetected(openblas_core().unwrap_or_default()),
    }
}

/// What [`select_cpu_kernels`] does next, decided from the process's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelAction {
    /// Keep the kernels this process has.
    Keep,
    /// Restart with `OPENBLAS_CORETYPE` set to this core.
    Force(&'static str),
    /// Restart without `OPENBLAS_CORETYPE`: the forced core failed the GEMM check.
    Reject(String),
}

/// The kernel-selection rules (see the module docs) as a pure function.
/// `marker`: [`CHOICE_VAR`]; `env_core`: a non-empty `OPENBLAS_CORETYPE`; `detected`: the core
/// OpenBLAS runs with; `best`: [`best_core_for_cpu`]; `sgemm_ok`: runs the GEMM check.
pub fn plan_kernels(
    marker: Option<&str>,
    env_core: Option<&str>,
    detected: &str,
    best: Option<&'static str>,
    sgemm_ok: impl FnOnce() -> bool,
) -> KernelAction {
    match (marker, env_core) {
        (Some(m), Some(core)) if m.strip_prefix("forced:") == Some(core) => {
            // Forced by our parent process: trust it only if the GEMM is right.
            if sgemm_ok() {
                KernelAction::Keep
            } else {
                KernelAction::Reject(core.to_owned())
            }
        }
        (_, Some(_)) => KernelAction::Keep, // the environment decides
        (Some(m), None) if m.starts_with("rejected:") => KernelAction::Keep, // already fell back
        _ => match best {
            Some(best) if is_generic_core(detected) => KernelAction::Force(best),
            _ => KernelAction::Keep,
        },
    }
}

/// Call first thing in `main`, before any thread starts. May replace the process (exec) with
/// itself under `OPENBLAS_CORETYPE`; returns normally when no change is needed or possible.
pub fn select_cpu_kernels() {
    if !cfg!(target_os = "linux") || !mlx_sys::OPENBLAS_LINKED {
        return;
    }
    let Some(detected) = openblas_core() else {
        return;
    };
    let marker = std::env::var(CHOICE_VAR).ok();
    let env_core = std::env::var(CORETYPE_VAR)
        .ok()
        .filter(|v| !v.trim().is_empty());
    let sgemm_ok = || sgemm_reference_error().is_some_and(|e| e < SGEMM_TOLERANCE);
    match plan_kernels(
        marker.as_deref(),
        env_core.as_deref(),
        &detected,
        best_core_for_cpu(),
        sgemm_ok,
    ) {
        KernelAction::Keep => {}
        KernelAction::Force(core) => reexec(Some(core), &format!("forced:{core}")),
        KernelAction::Reject(core) => reexec(None, &format!("rejected:{core}")),
    }
}

/// Replaces the process with itself, same arguments, with `OPENBLAS_CORETYPE` set to `core`
/// (or removed) and the choice marker set. Returns only if exec fails (then nothing changes).
fn reexec(core: Option<&str>, marker: &str) {
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        let mut args = std::env::args_os();
        let arg0 = args.next().unwrap_or_default();
        let mut cmd = std::process::Command::new("/proc/self/exe");
        cmd.arg0(arg0).args(args).env(CHOICE_VAR, marker);
        match core {
            Some(core) => cmd.env(CORETYPE_VAR, core),
            None => cmd.env_remove(CORETYPE_VAR),
        };
        let err = cmd.exec();
        eprintln!(
            "sd3lab: could not restart with faster BLAS kernels ({err}); continuing with the current ones"
        );
    }
    #[cfg(not(unix))]
    let _ = (core, marker);
}

/// Facts about the CPU BLAS in this process, for `doctor`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BlasInfo {
    /// The shared object that `cblas_sgemm` resolves to (what MLX's CPU GEMM calls).
    pub sgemm_library: Option<PathBuf>,
    /// `openblas` when that library is OpenBLAS, else `reference` / `accelerate` / `unknown`.
    pub implementation: String,
    pub openblas_core: Option<String>,
    pub openblas_config: Option<String>,
    pub choice: KernelChoice,
    /// The GEMM check's result (max relative error), if `cblas_sgemm` is reachable.
    pub sgemm_check_error: Option<f64>,
}

impl BlasInfo {
    pub fn collect() -> Self {
        let sgemm_library = global_symbol("cblas_sgemm").and_then(library_of);
        let openblas_core = openblas_core();
        let name = sgemm_library
            .as_ref()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        let implementation = if name.contains("openblas") {
            "openblas"
        } else if name.contains("accelerate") || name.contains("veclib") {
            "accelerate"
        } else if name.starts_with("libblas") || name.starts_with("libcblas") {
            "reference"
        } else if cfg!(target_os = "macos") {
            "accelerate"
        } else {
            "unknown"
        };
        Self {
            sgemm_library,
            implementation: implementation.to_owned(),
            openblas_core,
            openblas_config: openblas_config(),
            choice: current_choice(),
            sgemm_check_error: sgemm_reference_error(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generic_detection_on_an_avx512_cpu_forces_skylakex() {
        let action = plan_kernels(None, None, "Prescott", Some("SkylakeX"), || unreachable!());
        assert_eq!(action, KernelAction::Force("SkylakeX"));
    }

    #[test]
    fn a_specific_detection_is_kept() {
        assert_eq!(
            plan_kernels(None, None, "Cooperlake", Some("SkylakeX"), || true),
            KernelAction::Keep
        );
        assert_eq!(
            plan_kernels(None, None, "Prescott", None, || true),
            KernelAction::Keep
        );
    }

    #[test]
    fn the_environment_wins() {
        assert_eq!(
            plan_kernels(None, Some("Prescott"), "Prescott", Some("SkylakeX"), || {
                true
            }),
            KernelAction::Keep
        );
        // A marker for another core (inherited from elsewhere) does not make it ours.
        assert_eq!(
            plan_kernels(
                Some("forced:Haswell"),
                Some("Zen"),
                "Zen",
                Some("SkylakeX"),
                || false
            ),
            KernelAction::Keep
        );
    }

    #[test]
    fn a_forced_core_is_verified_and_rejected_when_wrong() {
        assert_eq!(
            plan_kernels(
                Some("forced:SkylakeX"),
                Some("SkylakeX"),
                "SkylakeX",
                Some("SkylakeX"),
                || true
            ),
            KernelAction::Keep
        );
        assert_eq!(
            plan_kernels(
                Some("forced:SkylakeX"),
                Some("SkylakeX"),
                "SkylakeX",
                Some("SkylakeX"),
                || false
            ),
            KernelAction::Reject("SkylakeX".into())
        );
        // After a rejection the generic kernels stay: no restart loop.
        assert_eq!(
            plan_kernels(
                Some("rejected:SkylakeX"),
                None,
                "Prescott",
                Some("SkylakeX"),
                || true
            ),
            KernelAction::Keep
        );
    }

    #[test]
    fn the_reference_error_catches_a_wrong_product() {
        let (m, n, k) = (3, 2, 4);
        let a: Vec<f32> = (0..m * k).map(|i| i as f32 - 5.0).collect();
        let b: Vec<f32> = (0..k * n).map(|i| 1.0 + i as f32).collect();
        let mut c = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            }
        }
        assert!(max_relative_error(&a, &b, &c, m, n, k) < 1e-6);
        c[3] += 0.5;
        assert!(max_relative_error(&a, &b, &c, m, n, k) > SGEMM_TOLERANCE);
    }
}
