//! `bench::BenchFolder` over a real tiny benchmark: configurations in order, every image and
//! its reference twin found, paired metrics read back, fp32 identical to the reference.

mod app_common;

use sd3lab::bench::{BenchFolder, PairedMetric};

#[test]
fn a_benchmark_folder_reads_back_with_images_twins_and_paired_metrics() {
    let root = tempfile::tempdir().unwrap();
    let dir = app_common::benchmark_fixture(root.path());
    let f = BenchFolder::open(&dir).unwrap();
    let names: Vec<&str> = f.configurations.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["fp32", "w8g64", "w4g64"]);
    assert_eq!(f.prompts.len(), 4);
    assert!(f.reference_problem.is_none());
    for (i, r) in f.reference.iter().enumerate() {
        let r = r.as_ref().unwrap();
        assert!(r.is_file(), "{}", r.display());
        for c in &f.configurations {
            assert!(c.images[&i].is_file());
        }
    }
    // fp32 is the reference's twin byte for byte: every PSNR infinite, SSIM 1.
    let fp32 = f.configuration("fp32").unwrap();
    assert_eq!(fp32.paired.len(), 4);
    assert!(
        fp32.paired
            .values()
            .all(|p| p.psnr.is_none() && p.ssim == 1.0)
    );
    // w4g64 differs, and its worst-first order is by increasing PSNR.
    let worst = f.worst_first("w4g64", PairedMetric::Psnr);
    assert_eq!(worst.len(), 4);
    assert!(worst.windows(2).all(|w| w[0].1 <= w[1].1), "{worst:?}");
    assert!(worst[0].1.is_finite());
    assert!(f.has_metric(PairedMetric::Ssim));
    // The summary: fp32 weighs 1x fp32, the quantized ones less; every cell filled but LPIPS.
    let rows = f.summary();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0].ratio_fp32, 1.0);
    assert!(rows[2].ratio_fp32 > rows[1].ratio_fp32 && rows[1].ratio_fp32 > 1.0);
    let cells = rows[2].cells();
    assert_eq!(cells.len(), sd3lab::bench::SummaryRow::COLUMNS.len());
    assert_eq!(cells[0], "w4g64");
    assert!(cells[1].parse::<f64>().is_ok(), "{cells:?}");
    assert!(cells[2].contains(" ± "), "{cells:?}");
    assert_eq!(cells[6], "-");
    assert_eq!(rows[0].cells()[4], "identical");
    // A reference recorded relative to where the run started (here: the folder holding
    // `bench/`, not the test's working directory) is found from the benchmark's own folders.
    let results = dir.join("results.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&results).unwrap()).unwrap();
    v["settings"]["reference"]["dir"] = "reference".into();
    std::fs::write(&results, v.to_string()).unwrap();
    let moved = BenchFolder::open(&dir).unwrap();
    assert!(
        moved.reference_problem.is_none(),
        "{:?}",
        moved.reference_problem
    );
    assert_eq!(moved.reference, f.reference);
    // One that is nowhere is said, and the images are still there.
    v["settings"]["reference"]["dir"] = "gone-reference".into();
    std::fs::write(&results, v.to_string()).unwrap();
    let gone = BenchFolder::open(&dir).unwrap();
    let problem = gone
        .reference_problem
        .expect("the missing reference is said");
    assert!(problem.contains("gone-reference"), "{problem}");
    assert!(gone.reference.iter().all(Option::is_none));
    assert_eq!(gone.configurations[2].images.len(), 4);
    // The folder is listed among its parent's benchmarks.
    assert_eq!(
        sd3lab::bench::list_benchmarks(root.path()),
        std::slice::from_ref(&dir)
    );
}
