//! `sd3lab doctor`: proves that MLX works here and says how fast its CPU GEMM is.

use std::time::{Duration, Instant};

use mlx_rs::{Array, Device, DeviceType};

use super::blas::{self, BlasInfo};
use super::mlx_info;

/// What `doctor` measures.
#[derive(Debug, Clone)]
pub struct DoctorOptions {
    /// Wall time spent in the GEMM micro-benchmark (after one warm-up product).
    pub bench_time: Duration,
    /// Side of the square f32 matrices of the benchmark.
    pub gemm_size: i32,
}

impl Default for DoctorOptions {
    fn default() -> Self {
        Self {
            bench_time: Duration::from_secs(1),
            gemm_size: 2048,
        }
    }
}

/// The GEMM micro-benchmark's result.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GemmBench {
    pub size: i32,
    pub iterations: u32,
    pub seconds: f64,
    pub gflops: f64,
    /// Max error of a small MLX matmul relative to a float64 reference (see `blas::max_relative_error`).
    pub check_error: f64,
}

/// Memory figures in bytes.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MemoryInfo {
    pub mlx_active: usize,
    pub mlx_peak: usize,
    pub mlx_cache: usize,
    pub mlx_limit: usize,
    pub system_total: Option<u64>,
    pub system_available: Option<u64>,
    pub process_peak_rss: Option<u64>,
}

/// Everything `doctor` found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DoctorReport {
    pub sd3lab_version: String,
    pub mlx_version: String,
    pub mlx_pinned_version: String,
    /// The MLX flavour linked at build time (`cpu`, `metal`, `cuda12`, `cuda13`).
    pub backend: String,
    pub default_device: String,
    pub libmlx: Option<String>,
    pub metal_available: bool,
    pub metallib: Option<String>,
    pub cuda_available: bool,
    pub blas: BlasInfo,
    pub gemm: GemmBench,
    pub memory: MemoryInfo,
    /// Problems that make MLX unusable or wrong here; empty when all is well.
    pub problems: Vec<String>,
    /// Things worth knowing that do not stop anything.
    pub warnings: Vec<String>,
}

/// Why doctor could not even run its checks.
#[derive(Debug, thiserror::Error)]
pub enum DoctorError {
    #[error("MLX operation failed: {0}")]
    Mlx(#[from] mlx_rs::error::Exception),
}

fn device_name(device: &Device) -> String {
    match device.get_type() {
        Ok(DeviceType::Cpu) => "cpu".to_owned(),
        Ok(DeviceType::Gpu) => format!("gpu:{}", device.get_index().unwrap_or(0)),
        Err(e) => format!("unknown ({e})"),
    }
}

/// Checks an MLX matmul against a float64 product computed here.
fn mlx_matmul_check() -> Result<f64, DoctorError> {
    let (m, n, k) = (48usize, 40usize, 96usize);
    let a: Vec<f32> = (0..m * k)
        .map(|i| ((i * 31 % 97) as f32 - 48.0) / 17.0)
        .collect();
    let b: Vec<f32> = (0..k * n)
        .map(|i| ((i * 53 % 89) as f32 - 44.0) / 13.0)
        .collect();
    let c = Array::from_slice(&a, &[m as i32, k as i32])
        .matmul(Array::from_slice(&b, &[k as i32, n as i32]))?;
    c.eval()?;
    Ok(blas::max_relative_error(
        &a,
        &b,
        c.as_slice::<f32>(),
        m,
        n,
        k,
    ))
}

fn gemm_bench(opts: &DoctorOptions) -> Result<GemmBench, DoctorError> {
    let n = opts.gemm_size;
    let key = mlx_rs::random::key(0)?;
    let a = mlx_rs::random::normal::<f32>(&[n, n][..], None, None, &key)?;
    let b = mlx_rs::random::normal::<f32>(&[n, n][..], None, None, &key)?;
    a.eval()?;
    b.eval()?;
    a.matmul(&b)?.eval()?; // warm-up: thread pools, allocator
    let start = Instant::now();
    let mut iterations = 0u32;
    while iterations == 0 || start.elapsed() < opts.bench_time {
        a.matmul(&b)?.eval()?;
        iterations += 1;
    }
    let seconds = start.elapsed().as_secs_f64();
    let flops = 2.0 * (n as f64).powi(3) * iterations as f64;
    Ok(GemmBench {
        size: n,
        iterations,
        seconds,
        gflops: flops / seconds / 1e9,
        check_error: mlx_matmul_check()?,
    })
}

fn meminfo_field(text: &str, field: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Resets the process's peak resident set size (Linux: writes 5 to `/proc/self/clear_refs`,
/// after which VmHWM restarts from the current RSS). Returns whether it could; macOS has no
/// such reset, so there [`process_peak_rss`] stays the peak since the process started.
pub fn reset_peak_rss() -> bool {
    #[cfg(target_os = "linux")]
    {
        std::fs::write("/proc/self/clear_refs", "5").is_ok()
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

/// Peak resident set size of this process in bytes (Linux: VmHWM; macOS: ru_maxrss).
pub fn process_peak_rss() -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        meminfo_field(&status, "VmHWM:")
    }
    #[cfg(not(target_os = "linux"))]
    {
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: getrusage fills the struct.
        (unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } == 0)
            .then_some(usage.ru_maxrss as u64)
    }
}

fn memory_info() -> Result<MemoryInfo, DoctorError> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    Ok(MemoryInfo {
        mlx_active: mlx_rs::memory::active_memory()?,
        mlx_peak: mlx_rs::memory::peak_memory()?,
        mlx_cache: mlx_rs::memory::cache_memory()?,
        mlx_limit: mlx_rs::memory::memory_limit()?,
        system_total: meminfo_field(&meminfo, "MemTotal:"),
        system_available: meminfo_field(&meminfo, "MemAvailable:"),
        process_peak_rss: process_peak_rss(),
    })
}

/// Runs every check. Errors only when MLX itself fails; wrong results or a missing
/// library are listed in `problems`.
pub fn run_doctor(opts: &DoctorOptions) -> Result<DoctorReport, DoctorError> {
    let default_device = Device::try_default()?;
    let gemm = gemm_bench(opts)?;
    let blas = BlasInfo::collect();
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    let mlx_version = mlx_info::mlx_version();
    if mlx_version != mlx_sys::MLX_VERSION {
        problems.push(format!(
            "libmlx reports {mlx_version} but this build expects {}",
            mlx_sys::MLX_VERSION
        ));
    }
    if gemm.check_error >= blas::SGEMM_TOLERANCE {
        problems.push(format!(
            "MLX matmul is wrong: relative error {:.2e} against a float64 reference",
            gemm.check_error
        ));
    }
    if let Some(err) = blas.sgemm_check_error
        && err >= blas::SGEMM_TOLERANCE
    {
        problems.push(format!(
            "cblas_sgemm is wrong: relative error {err:.2e} against a float64 reference"
        ));
    }
    if blas.implementation == "reference" {
        warnings.push("MLX's CPU GEMM uses the wheel's reference BLAS (slow): install libopenblas0-pthread and rebuild".into());
    }
    if let blas::KernelChoice::Rejected(core) = &blas.choice {
        warnings.push(format!(
            "OpenBLAS's {core} kernels failed the GEMM check; running the generic ones"
        ));
    }
    let metal_available = mlx_info::metal_available();
    let metallib = mlx_info::metallib_path();
    if mlx_sys::MLX_BACKEND == "metal" && metallib.is_none() {
        problems.push(
            "mlx.metallib was not found next to libmlx.dylib: GPU kernels cannot load".into(),
        );
    }
    Ok(DoctorReport {
        sd3lab_version: env!("CARGO_PKG_VERSION").to_owned(),
        mlx_version,
        mlx_pinned_version: mlx_sys::MLX_VERSION.to_owned(),
        backend: mlx_sys::MLX_BACKEND.to_owned(),
        default_device: device_name(&default_device),
        libmlx: mlx_info::libmlx_path().map(|p| p.display().to_string()),
        metal_available,
        metallib: metallib.map(|p| p.display().to_string()),
        cuda_available: mlx_info::cuda_available(),
        blas,
        gemm,
        memory: memory_info()?,
        problems,
        warnings,
    })
}

fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
}

impl std::fmt::Display for DoctorReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let opt = |o: &Option<String>| o.clone().unwrap_or_else(|| "not found".into());
        writeln!(f, "sd3lab {}", self.sd3lab_version)?;
        writeln!(
            f,
            "MLX             {} (built for {}), backend {}",
            self.mlx_version, self.mlx_pinned_version, self.backend
        )?;
        writeln!(f, "default device  {}", self.default_device)?;
        writeln!(f, "libmlx          {}", opt(&self.libmlx))?;
        writeln!(
            f,
            "Metal           {} (metallib: {})",
            yes_no(self.metal_available),
            opt(&self.metallib)
        )?;
        writeln!(f, "CUDA            {}", yes_no(self.cuda_available))?;
        let lib = self
            .blas
            .sgemm_library
            .as_ref()
            .map(|p| p.display().to_string());
        writeln!(
            f,
            "CPU BLAS        {} ({})",
            self.blas.implementation,
            opt(&lib)
        )?;
        if let Some(core) = &self.blas.openblas_core {
            writeln!(f, "  kernels       {core}: {}", self.blas.choice)?;
        }
        if let Some(cfg) = &self.blas.openblas_config {
            writeln!(f, "  config        {cfg}")?;
        }
        if let Some(err) = self.blas.sgemm_check_error {
            writeln!(
                f,
                "  sgemm check   max relative error {err:.1e} (limit {:.0e})",
                blas::SGEMM_TOLERANCE
            )?;
        }
        let g = &self.gemm;
        writeln!(
            f,
            "f32 GEMM        {:.1} GFLOP/s ({}x{}, {} products in {:.2} s on {}; check error {:.1e})",
            g.gflops, g.size, g.size, g.iterations, g.seconds, self.default_device, g.check_error
        )?;
        let m = &self.memory;
        writeln!(
            f,
            "MLX memory      active {}, peak {}, cache {}, limit {}",
            gib(m.mlx_active as u64),
            gib(m.mlx_peak as u64),
            gib(m.mlx_cache as u64),
            gib(m.mlx_limit as u64)
        )?;
        if let (Some(total), Some(avail)) = (m.system_total, m.system_available) {
            writeln!(
                f,
                "system memory   {} total, {} available",
                gib(total),
                gib(avail)
            )?;
        }
        if let Some(rss) = m.process_peak_rss {
            writeln!(f, "process         peak RSS {}", gib(rss))?;
        }
        for w in &self.warnings {
            writeln!(f, "warning: {w}")?;
        }
        for p in &self.problems {
            writeln!(f, "PROBLEM: {p}")?;
        }
        if self.problems.is_empty() {
            writeln!(f, "MLX works.")?;
        }
        Ok(())
    }
}

fn yes_no(b: bool) -> &'static str {
    if b { "available" } else { "not available" }
}
