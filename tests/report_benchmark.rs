//! The benchmark report (`report::benchmark`, `sd3lab report benchmark`) over a real tiny
//! benchmark: the HTML and Markdown reports' content (settings, summary numbers, figures,
//! each configuration's worst prompts in order with their thumbnails), the figures exported as
//! SVG and PNG, the CLI end to end, and user text escaped.

mod app_common;
mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use sd3lab::bench::{BenchFolder, PairedMetric, SummaryRow};
use sd3lab::report::benchmark::{
    BENCHMARK_FIGURE_SIZE, BenchmarkReportOptions, QualityMetric, THUMBNAIL_SIZE,
    benchmark_figures, figures_for, quality_note, write_benchmark_report,
};

/// The fixture benchmark, made once for this test binary (it takes ~20 s) in cargo's
/// temporary folder for integration tests. Tests only read it. One fixed folder, made afresh
/// by each run: a static is never dropped, so a folder per run would pile up (~90 MB each).
fn fixture() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("report-benchmark-fixture");
        if root.exists() {
            std::fs::remove_dir_all(&root).unwrap();
        }
        std::fs::create_dir_all(&root).unwrap();
        app_common::benchmark_fixture(&root)
    })
}

/// A scratch folder for one test's outputs.
fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("report-benchmark-out-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap()
}

/// The text between `start` and the next `end` after it (or the end of `text`).
fn section<'a>(text: &'a str, start: &str, end: &str) -> &'a str {
    let from = text
        .find(start)
        .unwrap_or_else(|| panic!("{start:?} missing"));
    let rest = &text[from + start.len()..];
    &rest[..rest.find(end).unwrap_or(rest.len())]
}

/// The image indices of the "image N (seed S)" headings in `text`, in order.
fn image_headings(text: &str) -> Vec<usize> {
    text.split("image ")
        .skip(1)
        .filter_map(|p| {
            let (n, rest) = p.split_once(' ')?;
            rest.starts_with("(seed ").then(|| n.parse().ok())?
        })
        .collect()
}

fn decode_png(path: &Path) -> image::RgbImage {
    image::open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_rgb8()
}

/// A PNG that shows something: more than one colour.
fn assert_not_blank(path: &Path) {
    let img = decode_png(path);
    let first = *img.get_pixel(0, 0);
    assert!(
        img.pixels().any(|p| *p != first),
        "{} is one colour",
        path.display()
    );
}

#[test]
fn the_html_report_shows_the_run_its_numbers_figures_and_worst_prompts_in_order() {
    let folder = BenchFolder::open(fixture()).unwrap();
    let out_dir = scratch();
    let out = out_dir.path().join("bench.html");
    let written =
        write_benchmark_report(&folder, &out, &BenchmarkReportOptions::default()).unwrap();
    let html = std::fs::read_to_string(&out).unwrap();
    assert!(html.contains("<title>SD3 Lab benchmark report</title>"));
    assert!(html.contains("<td>steps</td><td>2</td>"), "settings table");
    assert!(html.contains("<td>size</td><td>64 x 64</td>"));
    assert!(html.contains("<td>reference verified</td><td>yes"));
    let rows = folder.summary();
    for r in &rows {
        // Every cell of the summary as the table formats it (the FID of w4g64 among them).
        let cells = r.cells();
        let line: String = cells.iter().map(|c| format!("<td>{c}</td>")).collect();
        assert!(html.contains(&line), "{} row missing: {line}", r.name);
    }
    let w4 = &rows[2];
    assert_eq!(w4.name, "w4g64");
    let fid = format!("<td>{:.2}</td>", w4.fid.expect("the fixture computes FID"));
    assert!(html.contains(&fid), "{fid}");
    for h in SummaryRow::COLUMNS {
        assert!(html.contains(&format!("<th>{h}</th>")), "{h}");
    }
    // The three figures, inline.
    assert_eq!(html.matches("<svg").count(), 3);
    for title in [
        "FID vs MMDiT weight size",
        "latency per image",
        "peak MLX memory",
    ] {
        assert!(html.contains(title), "{title}");
    }
    // fp32 equals the reference: said so, no thumbnails of it.
    let fp32 = section(&html, "<h2>fp32: ", "<h2>");
    assert!(fp32.contains("identical"), "{fp32}");
    assert!(!fp32.contains("base64"));
    // w4g64's prompts worst first (PSNR ascending), each with its three thumbnails.
    let expected: Vec<usize> = folder
        .worst_first("w4g64", PairedMetric::Psnr)
        .iter()
        .map(|p| p.0)
        .collect();
    assert_eq!(expected.len(), 4);
    let w4_section = section(&html, "<h2>w4g64: ", "<h2>");
    assert_eq!(image_headings(w4_section), expected);
    let (worst_index, worst_value) = folder.worst_first("w4g64", PairedMetric::Psnr)[0];
    assert!(w4_section.contains(&format!(
        "image {worst_index} (seed {}): PSNR (dB) {}",
        folder.prompts[worst_index].seed,
        PairedMetric::Psnr.format(worst_value)
    )));
    let prompt = &folder.prompts[worst_index].prompt;
    let escaped = prompt
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;");
    assert!(
        w4_section.contains(&format!("<p>Prompt: {escaped}</p>")),
        "{prompt}"
    );
    // "iVBORw0KGgo" is the PNG signature in base64.
    assert_eq!(
        w4_section
            .matches("src=\"data:image/png;base64,iVBORw0KGgo")
            .count(),
        3 * expected.len()
    );
    assert!(w4_section.contains("|Δ| × 8"));
    // --worst limits the rows.
    let two = out_dir.path().join("two.html");
    let opts = BenchmarkReportOptions {
        worst: 2,
        ..Default::default()
    };
    write_benchmark_report(&folder, &two, &opts).unwrap();
    let html2 = std::fs::read_to_string(&two).unwrap();
    assert_eq!(
        image_headings(section(&html2, "<h2>w4g64: ", "<h2>")),
        expected[..2]
    );
    // The data beside it: results.json as it is, the summary's numbers as CSV.
    let json = out_dir.path().join("bench_data.json");
    let csv = out_dir.path().join("bench_data.csv");
    assert_eq!(written, [csv.clone(), json.clone(), out.clone()]);
    assert_eq!(
        std::fs::read(&json).unwrap(),
        std::fs::read(fixture().join("results.json")).unwrap()
    );
    let csv = std::fs::read_to_string(&csv).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 4, "{csv}");
    assert!(lines[3].starts_with(&format!("w4g64,{}", w4.fid.unwrap())));
    assert!(html.contains("<code>bench_data.csv</code>"));
    // Another extension is refused, naming the file, before anything is written.
    let pdf = out_dir.path().join("other.pdf");
    let err = write_benchmark_report(&folder, &pdf, &BenchmarkReportOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("other.pdf") && err.contains(".html or .md"),
        "{err}"
    );
    assert!(!out_dir.path().join("other_data.csv").exists());
}

#[test]
fn the_markdown_report_writes_its_figures_and_thumbnails_as_pngs_that_decode() {
    let folder = BenchFolder::open(fixture()).unwrap();
    let out_dir = scratch();
    let out = out_dir.path().join("bench.md");
    let written =
        write_benchmark_report(&folder, &out, &BenchmarkReportOptions::default()).unwrap();
    let md = std::fs::read_to_string(&out).unwrap();
    assert!(md.starts_with("# SD3 Lab benchmark report"));
    // Every image the Markdown links exists, was reported written and decodes.
    let links: Vec<&str> = md
        .split("](")
        .skip(1)
        .filter_map(|p| p.split_once(')').map(|l| l.0))
        .collect();
    // 3 figures, then w8g64's and w4g64's 4 rows of 3 thumbnails.
    assert_eq!(links.len(), 3 + 2 * 4 * 3, "{links:?}");
    for link in &links {
        let path = out_dir.path().join(link);
        assert!(written.contains(&path), "{link} not reported");
        assert_not_blank(&path);
    }
    let figure = decode_png(&out_dir.path().join("bench_files/quality-vs-weights.png"));
    assert_eq!(figure.dimensions(), (900, 420));
    // The thumbnails: the 64×64 images enlarged ×4 by nearest neighbour, pixel for pixel.
    let (index, _) = folder.worst_first("w4g64", PairedMetric::Psnr)[0];
    let w4 = folder.configuration("w4g64").unwrap();
    let original = decode_png(&w4.images[&index]);
    let thumb = decode_png(
        &out_dir
            .path()
            .join(format!("bench_files/c2-w4g64-{index:06}.png")),
    );
    assert_eq!(thumb.dimensions(), (THUMBNAIL_SIZE, THUMBNAIL_SIZE));
    for (x, y) in [(0, 0), (13, 50), (63, 63)] {
        assert_eq!(
            thumb.get_pixel(4 * x + 3, 4 * y + 1),
            original.get_pixel(x, y)
        );
    }
    // The difference shows change where the images differ, and black-purple (viridis at 0)
    // where they do not.
    let reference = decode_png(folder.reference[index].as_ref().unwrap());
    let diff = decode_png(
        &out_dir
            .path()
            .join(format!("bench_files/c2-w4g64-{index:06}-difference.png")),
    );
    let zero = sd3lab::report::colormap::viridis(0.0);
    let mut changed = 0;
    for (x, y, p) in original.enumerate_pixels() {
        let same = p == reference.get_pixel(x, y);
        let d = diff.get_pixel(4 * x, 4 * y).0;
        assert_eq!(d == zero, same, "pixel ({x}, {y})");
        changed += usize::from(!same);
    }
    assert!(changed > 0, "w4 should differ from the reference");
    // The reference thumbnail is written once, shared by the configurations' rows.
    assert_eq!(
        md.matches(&format!("(bench_files/reference-{index:06}.png)"))
            .count(),
        2
    );
}

#[test]
fn the_figures_export_as_svg_and_png_with_titles_and_configuration_names() {
    let folder = BenchFolder::open(fixture()).unwrap();
    let rows = folder.summary();
    let quality = QualityMetric::default_for(&rows);
    assert_eq!(quality, QualityMetric::Fid);
    let figs = benchmark_figures(&folder, quality);
    let stems: Vec<&str> = figs.iter().map(|f| f.0.as_str()).collect();
    assert_eq!(stems, ["quality-vs-weights", "latency", "peak-memory"]);
    let dir = scratch();
    let written = sd3lab::report::export_figures(&figs, dir.path(), BENCHMARK_FIGURE_SIZE).unwrap();
    assert_eq!(written.len(), 6);
    for (stem, fig) in &figs {
        let svg = std::fs::read_to_string(dir.path().join(format!("{stem}.svg"))).unwrap();
        assert!(svg.contains(fig.title()), "{stem}: title");
        for r in &rows {
            assert!(svg.contains(&r.name), "{stem}: {}", r.name);
        }
        let png = decode_png(&dir.path().join(format!("{stem}.png")));
        assert_eq!(png.dimensions(), BENCHMARK_FIGURE_SIZE);
        assert_not_blank(&dir.path().join(format!("{stem}.png")));
    }
    let svg = std::fs::read_to_string(dir.path().join("quality-vs-weights.svg")).unwrap();
    assert!(svg.contains("MMDiT weights (MB)") && svg.contains("FID, lower is better"));
    // PSNR: fp32 is identical to the reference (infinite PSNR), so it is left off and said so.
    let psnr = benchmark_figures(&folder, QualityMetric::Psnr);
    let sd3lab::report::Figure::Lines { markers, .. } = &psnr[0].1 else {
        panic!("lines")
    };
    let names: Vec<&str> = markers.iter().map(|m| m.0.as_str()).collect();
    assert_eq!(names, ["w8g64", "w4g64"]);
    let note = quality_note(&folder, QualityMetric::Psnr).unwrap();
    assert!(
        note.contains("fp32") && note.contains("identical"),
        "{note}"
    );
    // LPIPS was not measured (no weights in tests): no empty plot, and the reason given.
    let lpips = benchmark_figures(&folder, QualityMetric::Lpips);
    assert!(lpips.iter().all(|f| f.0 != "quality-vs-weights"));
    let note = quality_note(&folder, QualityMetric::Lpips).unwrap();
    assert!(
        note.starts_with("No configuration has a LPIPS value"),
        "{note}"
    );
    assert!(quality_note(&folder, QualityMetric::Fid).is_none());
}

#[test]
fn the_cli_writes_the_report_and_figures_and_refuses_what_it_cannot_read_or_write() {
    let out_dir = scratch();
    let cache = out_dir.path().join("cache");
    let bench = fixture().to_str().unwrap().to_owned();
    let html = out_dir.path().join("r.html");
    let figures = out_dir.path().join("figs");
    let run = |args: &[&str]| {
        common::sd3lab_command(&cache, args)
            .output()
            .expect("the binary runs")
    };
    let out = run(&[
        "report",
        "benchmark",
        &bench,
        "--output",
        html.to_str().unwrap(),
        "--worst",
        "3",
        "--metric",
        "ssim",
        "--quality",
        "psnr",
        "--figures",
        figures.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Vec<PathBuf> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("wrote "))
        .map(PathBuf::from)
        .collect();
    // The report, its two data files and three figures as SVG and PNG.
    assert_eq!(printed.len(), 3 + 6, "{stdout}");
    for p in &printed {
        assert!(p.is_file(), "{}", p.display());
    }
    assert!(printed.contains(&figures.join("quality-vs-weights.svg")));
    let text = std::fs::read_to_string(&html).unwrap();
    assert!(text.contains("PSNR (dB) vs MMDiT weight size"));
    let w4 = section(&text, "<h2>w4g64: ", "<h2>");
    assert!(w4.contains("furthest from the reference by SSIM"));
    assert_eq!(image_headings(w4).len(), 3);
    // The PSNR plot leaves fp32 out, and the CLI says why.
    assert!(String::from_utf8_lossy(&out.stderr).contains("fp32"));

    // A configuration the folder does not have is refused, naming it and the ones it has;
    // so is showing no worst prompts. Nothing is written.
    let refused = out_dir.path().join("refused.html");
    for (args, says) in [
        (
            vec!["--configuration", "w4g64", "--configuration", "w3g64"],
            vec!["w3g64", "fp32, w8g64, w4g64"],
        ),
        (vec!["--worst", "0"], vec!["at least 1"]),
    ] {
        let mut all = vec!["report", "benchmark", &bench, "--output"];
        all.push(refused.to_str().unwrap());
        all.extend(args.iter().copied());
        let out = run(&all);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}: {stderr}");
        for s in says {
            assert!(stderr.contains(s), "{args:?}: {stderr}");
        }
        assert!(!refused.exists());
        assert!(!out_dir.path().join("refused_data.csv").exists());
    }

    // A folder that is not a benchmark.
    let empty = out_dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let out = run(&[
        "report",
        "benchmark",
        empty.to_str().unwrap(),
        "--output",
        out_dir.path().join("x.html").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("is not a benchmark folder") && stderr.contains("empty"),
        "{stderr}"
    );
    assert!(!out_dir.path().join("x.html").exists());
    // An output that is neither HTML nor Markdown.
    let out = run(&[
        "report",
        "benchmark",
        &bench,
        "--output",
        out_dir.path().join("r.pdf").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("r.pdf") && stderr.contains(".html or .md"),
        "{stderr}"
    );

    // A figures folder that is a file: refused before anything is written (the report and
    // its data used to be written first).
    let taken = out_dir.path().join("taken");
    std::fs::write(&taken, b"").unwrap();
    let fresh = out_dir.path().join("fresh.html");
    let out = run(&[
        "report",
        "benchmark",
        &bench,
        "--output",
        fresh.to_str().unwrap(),
        "--figures",
        taken.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is a file, not a folder"), "{stderr}");
    assert!(!fresh.exists());
    assert!(!out_dir.path().join("fresh_data.csv").exists());
    assert!(!out_dir.path().join("fresh_data.json").exists());
    // An output that is one of the report's inputs (here through a symbolic link): refused,
    // the input untouched, nothing written.
    #[cfg(unix)]
    {
        let results = Path::new(&bench).join("results.json");
        let before = std::fs::read(&results).unwrap();
        let link = out_dir.path().join("link.html");
        std::os::unix::fs::symlink(&results, &link).unwrap();
        let out = run(&[
            "report",
            "benchmark",
            &bench,
            "--output",
            link.to_str().unwrap(),
        ]);
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("is one of this report's inputs"),
            "{stderr}"
        );
        assert!(std::fs::read(&results).unwrap() == before);
        assert!(!out_dir.path().join("link_data.csv").exists());
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

#[test]
fn prompts_are_escaped_and_an_unreadable_image_is_named_not_fatal() {
    let dir = scratch();
    let bench = dir.path().join("bench");
    copy_dir(fixture(), &bench);
    let hostile = "<script>alert(\"x\")</script> & *bold* [link](y)";
    let results = bench.join("results.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&results).unwrap()).unwrap();
    for p in json["settings"]["generation"]["prompts"]
        .as_array_mut()
        .unwrap()
    {
        *p = serde_json::Value::String(hostile.into());
    }
    std::fs::write(&results, serde_json::to_string_pretty(&json).unwrap()).unwrap();
    // The worst w4g64 image becomes unreadable (same size: still a finished image).
    let folder = BenchFolder::open(&bench).unwrap();
    let (index, _) = folder.worst_first("w4g64", PairedMetric::Psnr)[0];
    let broken = folder.configuration("w4g64").unwrap().images[&index].clone();
    let len = std::fs::metadata(&broken).unwrap().len() as usize;
    std::fs::write(&broken, vec![b'x'; len]).unwrap();
    let folder = BenchFolder::open(&bench).unwrap();
    assert_eq!(folder.prompts[0].prompt, hostile);

    let html_path = dir.path().join("r.html");
    write_benchmark_report(&folder, &html_path, &BenchmarkReportOptions::default()).unwrap();
    let html = std::fs::read_to_string(&html_path).unwrap();
    assert!(
        !html.contains("<script"),
        "a prompt's markup reached the HTML"
    );
    assert!(html.contains("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; *bold*"));
    let w4 = section(&html, "<h2>w4g64: ", "<h2>");
    let file = broken.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        w4.contains("Not shown: w4g64: ") && w4.contains(&file),
        "the unreadable image is named"
    );
    // Its row still has the reference; the other rows all three thumbnails.
    assert_eq!(w4.matches("base64,").count(), 3 * 4 - 2);

    let md_path = dir.path().join("r.md");
    write_benchmark_report(&folder, &md_path, &BenchmarkReportOptions::default()).unwrap();
    let md = std::fs::read_to_string(&md_path).unwrap();
    assert!(
        !md.replace("\\<", "").contains("<script"),
        "raw HTML in the Markdown"
    );
    assert!(md.contains("\\<script\\>alert(\"x\")\\</script\\> \\& \\*bold\\* \\[link\\](y)"));
}

#[test]
fn the_figures_follow_the_reports_configurations_and_quality() {
    let folder = BenchFolder::open(fixture()).unwrap();
    let opts = BenchmarkReportOptions {
        configurations: vec!["w8g64".into(), "w4g64".into()],
        quality: Some(QualityMetric::Psnr),
        ..Default::default()
    };
    let (figs, note) = figures_for(&folder, &opts).unwrap();
    let sd3lab::report::Figure::Lines { markers, .. } = &figs[0].1 else {
        panic!("lines")
    };
    let names: Vec<&str> = markers.iter().map(|m| m.0.as_str()).collect();
    assert_eq!(names, ["w8g64", "w4g64"]);
    // fp32 (infinite PSNR) is not shown, so nothing is left off the plot.
    assert_eq!(note, None);
    let (_, note) = figures_for(
        &folder,
        &BenchmarkReportOptions {
            quality: Some(QualityMetric::Psnr),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(note.unwrap().contains("fp32"));
    let err = figures_for(
        &folder,
        &BenchmarkReportOptions {
            configurations: vec!["nope".into()],
            ..Default::default()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("nope") && err.contains("fp32, w8g64, w4g64"),
        "{err}"
    );
}

/// `worst_first` orders by each metric's own direction: checked against the values of
/// `per_image.csv`, sorted here worst first (PSNR and SSIM ascending, "inf" the best PSNR).
#[test]
fn worst_first_follows_per_image_csv_for_psnr_and_ssim() {
    let folder = BenchFolder::open(fixture()).unwrap();
    let mut reader = csv::Reader::from_path(fixture().join("per_image.csv")).unwrap();
    let header = reader.headers().unwrap().clone();
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    let (c_conf, c_index, c_psnr, c_ssim) = (
        col("configuration"),
        col("index"),
        col("psnr_db"),
        col("ssim"),
    );
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    let mut checked = 0;
    for c in &folder.configurations {
        for (metric, column) in [(PairedMetric::Psnr, c_psnr), (PairedMetric::Ssim, c_ssim)] {
            let mut want: Vec<(usize, f64)> = rows
                .iter()
                .filter(|r| &r[c_conf] == c.name.as_str() && !r[column].is_empty())
                .map(|r| {
                    let v = match &r[column] {
                        "inf" => f64::INFINITY,
                        v => v.parse().unwrap(),
                    };
                    (r[c_index].parse().unwrap(), v)
                })
                .collect();
            want.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
            let got = folder.worst_first(&c.name, metric);
            assert_eq!(got.len(), want.len(), "{} {metric:?}", c.name);
            for (g, w) in got.iter().zip(&want) {
                assert_eq!(g.0, w.0, "{} {metric:?}: {got:?} vs {want:?}", c.name);
                assert!(
                    g.1 == w.1 || (g.1 - w.1).abs() < 1e-5,
                    "{} {metric:?}: {got:?} vs {want:?}",
                    c.name
                );
            }
            checked += want.len();
        }
    }
    // 3 configurations × 4 images × 2 metrics.
    assert_eq!(checked, 24);
}

#[test]
fn identical_pairs_are_never_among_the_worst() {
    let dir = scratch();
    let bench = dir.path().join("bench");
    copy_dir(fixture(), &bench);
    // w4g64's worst image recorded as identical to its twin (PSNR null: infinite).
    let folder = BenchFolder::open(&bench).unwrap();
    let order = folder.worst_first("w4g64", PairedMetric::Psnr);
    let (index, _) = order[0];
    let metrics = bench.join("w4g64").join("metrics.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&metrics).unwrap()).unwrap();
    let entry = json["per_image"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|p| p["index"] == index)
        .unwrap();
    entry["psnr"] = serde_json::Value::Null;
    std::fs::write(&metrics, serde_json::to_string_pretty(&json).unwrap()).unwrap();
    let folder = BenchFolder::open(&bench).unwrap();
    assert_eq!(
        folder.worst_first("w4g64", PairedMetric::Psnr).last(),
        Some(&(index, f64::INFINITY))
    );
    let out = dir.path().join("r.html");
    write_benchmark_report(&folder, &out, &BenchmarkReportOptions::default()).unwrap();
    let html = std::fs::read_to_string(&out).unwrap();
    let w4 = section(&html, "<h2>w4g64: ", "<h2>");
    let shown = image_headings(w4);
    let want: Vec<usize> = order[1..].iter().map(|p| p.0).collect();
    assert_eq!(shown, want);
    assert!(w4.contains("1 identical to their twins left out"), "{w4}");
    assert!(!w4.contains(" inf"), "{w4}");
    // fp32: every image identical, no worst list at all.
    let fp32 = section(&html, "<h2>fp32: ", "<h2>");
    assert!(fp32.contains("Every image is identical"), "{fp32}");
    assert!(image_headings(fp32).is_empty());
}
