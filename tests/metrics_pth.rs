//! The `.pth` reader against files written the way `torch.save` writes them
//! (tests/py/make_pth_fixtures.py), a real file PyTorch wrote (LPIPS v0.1's AlexNet heads, from
//! the `lpips` 0.1.4 wheel), and hostile or broken files it must refuse without panicking.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use sd3lab::metrics::pth::{self, Dtype, PthError, StateDict};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/pth")
        .join(name)
}

fn dtype_name(d: Dtype) -> String {
    d.to_string()
}

/// Asserts that `sd` holds exactly the tensors of an `expected.json` (names in order, dtypes,
/// shapes and every value, exactly).
fn assert_matches_json(sd: &StateDict, json_name: &str) {
    let text = std::fs::read_to_string(fixture(json_name)).expect("fixture JSON");
    let expected: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&text).expect("fixture JSON parses");
    let names: Vec<&str> = sd.names().collect();
    let want: Vec<&str> = expected.keys().map(String::as_str).collect();
    assert_eq!(names, want, "tensor names and order");
    for (name, e) in &expected {
        let t = sd.get(name).expect("listed above");
        assert_eq!(
            dtype_name(t.dtype()),
            e["dtype"].as_str().unwrap(),
            "{name}: dtype"
        );
        let shape: Vec<usize> = e["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(t.shape(), &shape[..], "{name}: shape");
        // Values are written as text (Python's repr) and parsed here, exactly.
        let values: Vec<f64> = e["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().parse().unwrap())
            .collect();
        assert_eq!(t.to_f64_vec(), values, "{name}: values");
        assert_eq!(t.numel(), values.len(), "{name}: numel");
        assert_eq!(
            t.bytes().len(),
            values.len() * t.dtype().size(),
            "{name}: bytes"
        );
    }
}

#[test]
fn zip_format_state_dict_reads_every_dtype_view_and_shared_tensor_exactly() {
    let sd = pth::read_pth(&fixture("state_zip.pth")).unwrap();
    assert_matches_json(&sd, "expected.json");
    // int64 values come back exactly, not through f64 rounding.
    let n = sd.get("bn.num_batches_tracked").unwrap();
    assert_eq!(n.shape(), &[] as &[usize]);
    assert_eq!(n.to_i64_vec(), Some(vec![123_456_789_012]));
    assert_eq!(sd.get("conv.weight").unwrap().to_i64_vec(), None);
}

#[test]
fn legacy_format_state_dict_reads_the_same_tensors() {
    let sd = pth::read_pth(&fixture("state_legacy.pth")).unwrap();
    assert_matches_json(&sd, "expected.json");
    let zip = pth::read_pth(&fixture("state_zip.pth")).unwrap();
    assert_eq!(sd, zip);
}

#[test]
fn big_endian_archive_with_a_plain_dict_is_byte_swapped() {
    let sd = pth::read_pth(&fixture("plain_big_endian_zip.pth")).unwrap();
    let state = pth::read_pth(&fixture("state_zip.pth")).unwrap();
    assert_eq!(sd.names().collect::<Vec<_>>(), ["a", "b"]);
    assert_eq!(sd.get("a"), state.get("conv.bias"));
    assert_eq!(sd.get("b"), state.get("bn.running_var"));
}

#[test]
fn real_legacy_file_written_by_pytorch_matches_pickles_own_decoding() {
    // LPIPS v0.1's linear heads: saved by PyTorch under Python 2 (SHORT_BINSTRING keys, an
    // OrderedDict built from a list of pairs, CUDA storage locations, `_metadata` via BUILD).
    let path = fixture("lpips_v0.1_alex.pth");
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 6009);
    let sd = pth::read_pth(&path).unwrap();
    assert_matches_json(&sd, "lpips_v0.1_alex.expected.json");
    let channels: Vec<usize> = sd.iter().map(|(_, t)| t.shape()[1]).collect();
    assert_eq!(channels, [64, 192, 384, 256, 256]);
}

/// `torch.save` itself (PyTorch 2.15) wrote these from the same state dict
/// (`make_pth_fixtures.py --torch`, which also checks that `torch.load` reads every fixture).
#[test]
fn real_torch_save_files_of_both_formats_match() {
    for name in ["real_zip.pth", "real_legacy.pth"] {
        let path = fixture(name);
        let sd = pth::read_pth(&path).unwrap();
        assert_matches_json(&sd, "expected.json");
    }
}

fn refused(path: &Path) -> String {
    match pth::read_pth(path) {
        Err(e @ PthError::Refused { .. }) => e.to_string(),
        other => panic!("{}: expected a refusal, got {other:?}", path.display()),
    }
}

#[test]
fn a_pickle_calling_os_system_is_refused_with_the_global_and_its_offset() {
    let path = fixture("evil_os_system_zip.pth");
    let msg = refused(&path);
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains("global 'os.system'"), "{msg}");
    assert!(msg.contains("archive/data.pkl at byte 2"), "{msg}");
}

#[test]
fn a_legacy_pickle_calling_builtins_eval_is_refused() {
    let msg = refused(&fixture("evil_eval_legacy.pth"));
    assert!(msg.contains("global 'builtins.eval'"), "{msg}");
    assert!(msg.contains("the main pickle at byte"), "{msg}");
}

#[test]
fn stack_global_names_are_checked_like_global() {
    let msg = refused(&fixture("evil_stack_global_zip.pth"));
    assert!(msg.contains("global 'posix.system'"), "{msg}");
}

fn error_text(path: &Path) -> String {
    pth::read_pth(path)
        .map(|sd| {
            panic!(
                "{}: read {} tensors, expected an error",
                path.display(),
                sd.len()
            )
        })
        .unwrap_err()
        .to_string()
}

#[test]
fn an_oversized_storage_is_refused_before_anything_is_allocated() {
    let msg = error_text(&fixture("oversized_storage_zip.pth"));
    assert!(
        msg.contains("storage '0' declares 1099511627776 elements"),
        "{msg}"
    );
}

#[test]
fn a_storage_missing_from_the_archive_is_named() {
    let msg = error_text(&fixture("missing_storage_zip.pth"));
    assert!(msg.contains("storage '7' is missing"), "{msg}");
    assert!(msg.contains("archive/data/7"), "{msg}");
}

#[test]
fn a_record_shorter_than_its_storage_is_refused() {
    let msg = error_text(&fixture("short_record_zip.pth"));
    assert!(
        msg.contains("has 12 bytes but storage '0' declares 4 elements"),
        "{msg}"
    );
}

#[test]
fn the_byte_limit_applies_to_the_tensors() {
    let e = pth::read_pth_with_limit(&fixture("state_zip.pth"), 100).unwrap_err();
    assert!(e.to_string().contains("100-byte limit"), "{e}");
    let e = pth::read_pth_with_limit(&fixture("state_legacy.pth"), 100).unwrap_err();
    assert!(e.to_string().contains("100-byte limit"), "{e}");
}

#[test]
fn every_truncation_of_either_format_is_an_error_not_a_panic() {
    for name in [
        "state_zip.pth",
        "state_legacy.pth",
        "real_zip.pth",
        "real_legacy.pth",
        "lpips_v0.1_alex.pth",
    ] {
        let bytes = std::fs::read(fixture(name)).unwrap();
        let origin = Path::new(name);
        for len in 0..bytes.len() {
            let r = pth::read_pth_from(origin, Cursor::new(&bytes[..len]), pth::MAX_TOTAL_BYTES);
            let e = r.expect_err(&format!("{name} cut to {len} bytes was accepted"));
            assert!(e.to_string().starts_with(name), "{name}[..{len}]: {e}");
        }
        assert!(pth::read_pth_from(origin, Cursor::new(&bytes[..]), pth::MAX_TOTAL_BYTES).is_ok());
    }
}

#[test]
fn every_single_byte_corruption_of_a_small_file_is_handled_without_panicking() {
    // Not every flipped byte is detectable (a changed float value is still a valid file), but
    // none may crash the reader or make it allocate without bound.
    for name in ["state_legacy.pth", "state_zip.pth"] {
        let bytes = std::fs::read(fixture(name)).unwrap();
        for i in 0..bytes.len() {
            for x in [0x01u8, 0x80, 0xff] {
                let mut b = bytes.clone();
                b[i] ^= x;
                let _ = pth::read_pth_from(Path::new(name), Cursor::new(b), 1 << 20);
            }
        }
    }
}

// --- Hand-assembled legacy files -----------------------------------------------------------

/// A legacy-format file around `main` (a protocol-2 pickle ending in STOP), with no storages.
fn legacy_with(main: &[u8], storages: &[u8]) -> Vec<u8> {
    let mut v = vec![0x80, 0x02, 0x8a, 0x0a];
    v.extend_from_slice(&0x1950_a86a_20f9_469c_fc6cu128.to_le_bytes()[..10]);
    v.push(b'.');
    v.extend_from_slice(&[0x80, 0x02, b'M', 0xe9, 0x03, b'.']); // 1001
    v.extend_from_slice(&[0x80, 0x02, b'}', b'.']); // sys_info
    v.extend_from_slice(main);
    v.extend_from_slice(storages);
    v
}

fn read_legacy(main: &[u8], storages: &[u8]) -> Result<StateDict, PthError> {
    let file = legacy_with(main, storages);
    pth::read_pth_from(Path::new("hand.pth"), Cursor::new(file), 1 << 20)
}

/// `{'w': tensor}` with one float32 storage '0' of `numel` elements and the given view.
fn one_tensor(numel: u8, offset: u8, size: &[u8], stride: &[u8]) -> Vec<u8> {
    let mut v = b"\x80\x02}X\x01\x00\x00\x00wctorch._utils\n_rebuild_tensor_v2\n((".to_vec();
    v.extend_from_slice(b"X\x07\x00\x00\x00storagectorch\nFloatStorage\n");
    v.extend_from_slice(b"X\x01\x00\x00\x000X\x03\x00\x00\x00cpuK");
    v.push(numel);
    v.extend_from_slice(b"NtQK");
    v.push(offset);
    for dims in [size, stride] {
        v.push(b'(');
        for &d in dims {
            v.extend_from_slice(&[b'K', d]);
        }
        v.push(b't');
    }
    v.extend_from_slice(b"\x89NtRs.");
    v
}

fn storage_bytes(values: &[f32]) -> Vec<u8> {
    let mut v = b"\x80\x02]X\x01\x00\x00\x000a.".to_vec(); // the key list ['0']
    v.extend_from_slice(&(values.len() as u64).to_le_bytes());
    for x in values {
        v.extend_from_slice(&x.to_le_bytes());
    }
    v
}

#[test]
fn hand_assembled_legacy_file_reads_a_strided_view() {
    let data = [0.0f32, 1.0, 2.0, 3.0, 4.0, 5.0];
    let sd = read_legacy(&one_tensor(6, 1, &[2, 2], &[3, 1]), &storage_bytes(&data)).unwrap();
    let t = sd.get("w").unwrap();
    assert_eq!(t.shape(), &[2, 2]);
    assert_eq!(t.to_f32_vec(), [1.0, 2.0, 4.0, 5.0]);
}

#[test]
fn a_view_reaching_past_its_storage_is_refused() {
    let data = [0.0f32; 6];
    let e = read_legacy(&one_tensor(6, 1, &[2, 3], &[3, 1]), &storage_bytes(&data)).unwrap_err();
    assert!(
        e.to_string()
            .contains("reaches past the end of storage '0'"),
        "{e}"
    );
}

#[test]
fn a_storage_whose_recorded_count_differs_from_its_declaration_is_refused() {
    let mut s = storage_bytes(&[0.0f32; 4]);
    let at = s.len() - 16 - 8;
    s[at..at + 8].copy_from_slice(&3u64.to_le_bytes());
    let e = read_legacy(&one_tensor(4, 0, &[4], &[1]), &s).unwrap_err();
    assert!(
        e.to_string()
            .contains("holds 3 elements but its tensors declare 4"),
        "{e}"
    );
}

#[test]
fn object_construction_opcodes_are_refused_by_name() {
    for (op, name) in [
        (b"i" as &[u8], "INST"),
        (b"o", "OBJ"),
        (b"\x81", "NEWOBJ"),
        (b"\x92", "NEWOBJ_EX"),
        (b"\x82", "EXT1"),
        (b"P", "PERSID"),
    ] {
        let mut main = b"\x80\x02}".to_vec();
        main.extend_from_slice(op);
        main.push(b'.');
        let e = read_legacy(&main, b"").unwrap_err();
        assert!(matches!(e, PthError::Refused { .. }), "{name}: {e}");
        assert!(e.to_string().contains(&format!("opcode {name}")), "{e}");
    }
}

#[test]
fn build_on_anything_but_an_ordered_dict_is_refused() {
    // BUILD on a plain dict would set attributes on an arbitrary object in Python.
    let e = read_legacy(b"\x80\x02}}b.", b"").unwrap_err();
    assert!(e.to_string().contains("BUILD on a dict"), "{e}");
    // Calling the tensor rebuild function's storage class is refused too.
    let e = read_legacy(b"\x80\x02ctorch\nFloatStorage\n)R.", b"").unwrap_err();
    assert!(e.to_string().contains("storage class"), "{e}");
}

#[test]
fn deep_nesting_and_memo_copy_bombs_are_refused() {
    let mut deep = b"\x80\x02)".to_vec();
    deep.extend(std::iter::repeat_n(0x85u8, 100_000)); // TUPLE1 around the last value
    deep.push(b'.');
    let e = read_legacy(&deep, b"").unwrap_err();
    assert!(e.to_string().contains("nested deeper"), "{e}");

    // Each round doubles the value by fetching it twice from the memo: 2^60 nodes if copied.
    let mut bomb = b"\x80\x02)q\x00".to_vec();
    for _ in 0..60 {
        bomb.extend_from_slice(b"h\x00h\x00\x86q\x000");
    }
    bomb.extend_from_slice(b"h\x00.");
    let e = read_legacy(&bomb, b"").unwrap_err();
    assert!(e.to_string().contains("copied through the memo"), "{e}");
}

#[test]
fn a_file_that_is_not_a_state_dict_says_what_it_holds() {
    let e = read_legacy(b"\x80\x02]X\x01\x00\x00\x00xa.", b"\x80\x02].").unwrap_err();
    assert!(
        e.to_string().contains("holds a list, not a state dict"),
        "{e}"
    );
    let e = pth::read_pth_from(Path::new("x.pth"), Cursor::new(b"hello".to_vec()), 1 << 20)
        .unwrap_err();
    assert!(e.to_string().contains("not a PyTorch file"), "{e}");
}

// --- Conversion to safetensors, resolving and fetching weights (metrics::weights) -----------

mod common;

use sd3lab::job::CancelToken;
use sd3lab::metrics::weights::{self, FetchEvent, WeightsError, WeightsSource};

/// The converted file's tensors as MLX loads them, byte for byte equal to the reader's.
fn assert_mlx_loads_the_same(st: &Path, sd: &StateDict) {
    use mlx_rs::Array;
    let loaded = Array::load_safetensors(st).expect("MLX loads the converted file");
    assert_eq!(loaded.len(), sd.len());
    for (name, t) in sd.iter() {
        let a = &loaded[name];
        let shape: Vec<usize> = a.shape().iter().map(|&d| d as usize).collect();
        assert_eq!(shape, t.shape(), "{name}: shape");
        if t.numel() == 0 {
            // MLX gives no data pointer for an empty array; its shape was checked.
            continue;
        }
        fn le<T: mlx_rs::ArrayElement + Copy>(a: &Array, f: impl Fn(T) -> Vec<u8>) -> Vec<u8> {
            a.as_slice::<T>().iter().flat_map(|&x| f(x)).collect()
        }
        // float64 is stored as float32 (MLX does not load float64): the reader's values rounded.
        let want: Vec<u8> = match t.dtype() {
            Dtype::F64 => t
                .to_f32_vec()
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
            _ => t.bytes().to_vec(),
        };
        let bytes = match t.dtype() {
            Dtype::F32 | Dtype::F64 => le(a, |x: f32| x.to_le_bytes().to_vec()),
            Dtype::F16 => le(a, |x: half::f16| x.to_le_bytes().to_vec()),
            Dtype::BF16 => le(a, |x: half::bf16| x.to_le_bytes().to_vec()),
            Dtype::I64 => le(a, |x: i64| x.to_le_bytes().to_vec()),
            Dtype::I32 => le(a, |x: i32| x.to_le_bytes().to_vec()),
            Dtype::I16 => le(a, |x: i16| x.to_le_bytes().to_vec()),
            Dtype::I8 => le(a, |x: i8| x.to_le_bytes().to_vec()),
            Dtype::U8 => le(a, |x: u8| vec![x]),
            Dtype::Bool => le(a, |x: bool| vec![x as u8]),
        };
        assert_eq!(bytes, want, "{name}: values");
    }
}

#[test]
fn conversion_to_safetensors_round_trips_exactly_through_mlx() {
    let dir = tempfile::tempdir().unwrap();
    let st = dir.path().join("state.safetensors");
    weights::convert_pth(&fixture("state_zip.pth"), &st, None, &[("source", "test")]).unwrap();
    let sd = pth::read_pth(&fixture("state_zip.pth")).unwrap();
    assert_mlx_loads_the_same(&st, &sd);
}

#[test]
fn written_safetensors_are_read_exactly_by_the_safetensors_package() {
    // Every dtype as is (float64 included), checked by the reference implementation.
    let dir = tempfile::tempdir().unwrap();
    let st = dir.path().join("state.safetensors");
    let sd = pth::read_pth(&fixture("state_legacy.pth")).unwrap();
    let tensors: Vec<_> = sd.iter().collect();
    weights::write_safetensors(&st, &tensors, &[("source", "test")]).unwrap();
    let out = common::run_oracle("pth_safetensors_check.py", &[st.as_os_str()]);
    let got: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(got["metadata"]["source"], "test");
    let text = std::fs::read_to_string(fixture("expected.json")).unwrap();
    let expected: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text).unwrap();
    for (name, e) in &expected {
        let g = &got["tensors"][name];
        assert_eq!(g["shape"], e["shape"], "{name}");
        let want = sd.get(name).unwrap().dtype().safetensors_name();
        assert_eq!(g["dtype"], want, "{name}");
        if !g["values"].is_null() {
            let g: Vec<f64> = g["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().parse().unwrap())
                .collect();
            let w: Vec<f64> = e["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().parse().unwrap())
                .collect();
            assert_eq!(g, w, "{name}");
        }
    }
}

#[test]
fn a_prefix_filter_keeps_only_matching_tensors_and_refuses_an_empty_result() {
    let dir = tempfile::tempdir().unwrap();
    let st = dir.path().join("conv.safetensors");
    weights::convert_pth(&fixture("state_legacy.pth"), &st, Some("conv."), &[]).unwrap();
    let loaded = mlx_rs::Array::load_safetensors(&st).unwrap();
    let mut names: Vec<&String> = loaded.keys().collect();
    names.sort();
    assert_eq!(names, ["conv.bias", "conv.weight"]);
    let e = weights::convert_pth(&fixture("state_legacy.pth"), &st, Some("features."), &[])
        .unwrap_err();
    assert!(matches!(e, WeightsError::NothingKept { .. }), "{e}");
}

/// The library says what is missing and where; the front ends add what to run (the CLI's
/// wording is tested in tests/metrics_cli.rs and tests/benchmark.rs).
#[test]
fn without_weights_the_error_says_what_is_missing_and_where() {
    let cache = tempfile::tempdir().unwrap();
    let dir = weights::weights_dir(cache.path());
    let e = weights::resolve_inception_weights_in(cache.path(), None).unwrap_err();
    assert!(
        matches!(&e, WeightsError::Missing { what: "Inception", cache } if *cache == dir),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        format!("no Inception weights in {}", dir.display())
    );
    let e = weights::resolve_lpips_weights_in(cache.path()).unwrap_err();
    assert!(
        matches!(&e, WeightsError::Missing { what, .. } if what.starts_with("LPIPS")),
        "{e:?}"
    );
}

#[test]
fn an_explicit_pth_is_converted_once_into_the_cache_and_safetensors_are_used_as_is() {
    let cache = tempfile::tempdir().unwrap();
    let pth_path = fixture("state_zip.pth");
    let st = weights::resolve_inception_weights_in(cache.path(), Some(&pth_path)).unwrap();
    assert!(
        st.starts_with(weights::weights_dir(cache.path())),
        "{}",
        st.display()
    );
    let sd = pth::read_pth(&pth_path).unwrap();
    assert_mlx_loads_the_same(&st, &sd);
    let modified = std::fs::metadata(&st).unwrap().modified().unwrap();
    // The same file again: found by its hash, not converted a second time.
    let again = weights::resolve_inception_weights_in(cache.path(), Some(&pth_path)).unwrap();
    assert_eq!(again, st);
    assert_eq!(
        std::fs::metadata(&st).unwrap().modified().unwrap(),
        modified
    );
    // Another .pth gets its own converted file.
    let other =
        weights::resolve_inception_weights_in(cache.path(), Some(&fixture("state_legacy.pth")))
            .unwrap();
    assert_ne!(other, st);
    // A .safetensors is returned unchanged; anything else is refused.
    assert_eq!(
        weights::resolve_inception_weights_in(cache.path(), Some(&st)).unwrap(),
        st
    );
    let e =
        weights::resolve_inception_weights_in(cache.path(), Some(Path::new("w.bin"))).unwrap_err();
    assert!(matches!(e, WeightsError::UnknownKind { .. }), "{e}");
    // A hostile .pth never becomes weights.
    let e = weights::resolve_inception_weights_in(
        cache.path(),
        Some(&fixture("evil_os_system_zip.pth")),
    )
    .unwrap_err();
    assert!(e.to_string().contains("os.system"), "{e}");
}

/// Serves `body` over HTTP on the loopback interface for `requests` connections.
fn serve(body: Vec<u8>, requests: usize) -> String {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/alex.pth", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for _ in 0..requests {
            let Ok((stream, _)) = listener.accept() else {
                return;
            };
            let mut reader = BufReader::new(stream);
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let mut stream = reader.into_inner();
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
        }
    });
    url
}

#[test]
fn fetching_downloads_checks_converts_and_then_uses_the_cache() {
    // The LPIPS heads fixture is the published file, so the real constants check it.
    let body = std::fs::read(fixture("lpips_v0.1_alex.pth")).unwrap();
    let url = serve(body, 1);
    let cache = tempfile::tempdir().unwrap();
    let mut events = Vec::new();
    let src = weights::LPIPS_ALEX_LIN;
    let st = weights::fetch_from(&src, &url, cache.path(), &CancelToken::new(), &mut |e| {
        events.push(e)
    })
    .unwrap();
    assert_eq!(st, weights::converted_path(cache.path(), &src));
    assert!(events.iter().any(|e| matches!(
        e,
        FetchEvent::Downloading {
            done: 6009,
            total: Some(6009),
            ..
        }
    )));
    assert!(
        events
            .iter()
            .any(|e| matches!(e, FetchEvent::Converting { .. }))
    );
    let sd = pth::read_pth(&fixture("lpips_v0.1_alex.pth")).unwrap();
    assert_mlx_loads_the_same(&st, &sd);
    // Only the converted file stays.
    let left: Vec<_> = std::fs::read_dir(weights::weights_dir(cache.path()))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        left,
        [std::ffi::OsString::from(format!(
            "{}.safetensors",
            src.name
        ))]
    );
    // A second fetch finds it without a server.
    let mut events = Vec::new();
    let again = weights::fetch_from(
        &src,
        "http://127.0.0.1:9/",
        cache.path(),
        &CancelToken::new(),
        &mut |e| events.push(e),
    )
    .unwrap();
    assert_eq!(again, st);
    assert!(matches!(events[..], [FetchEvent::Cached { .. }]));
}

#[test]
fn a_download_with_the_wrong_hash_or_cancelled_leaves_nothing_in_the_cache() {
    let mut body = std::fs::read(fixture("lpips_v0.1_alex.pth")).unwrap();
    let n = body.len();
    body[n - 1] ^= 1;
    let url = serve(body, 1);
    let cache = tempfile::tempdir().unwrap();
    let src: WeightsSource = weights::LPIPS_ALEX_LIN;
    let e = weights::fetch_from(&src, &url, cache.path(), &CancelToken::new(), &mut |_| {})
        .unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, WeightsError::Mismatch { .. }), "{msg}");
    assert!(msg.contains(src.sha256), "{msg}");
    let empty = |dir: &Path| std::fs::read_dir(dir).unwrap().next().is_none();
    assert!(empty(&weights::weights_dir(cache.path())));

    let url = serve(std::fs::read(fixture("lpips_v0.1_alex.pth")).unwrap(), 1);
    let cancel = CancelToken::new();
    cancel.cancel();
    let e = weights::fetch_from(&src, &url, cache.path(), &cancel, &mut |_| {}).unwrap_err();
    assert!(matches!(e, WeightsError::Cancelled), "{e}");
    assert!(empty(&weights::weights_dir(cache.path())));
}

#[test]
fn the_published_sources_are_consistent_with_their_file_names() {
    // torch.hub's check: the hash in the file name is the SHA-256's prefix.
    for s in [weights::INCEPTION, weights::ALEXNET] {
        let prefix = s
            .file_name
            .rsplit('-')
            .next()
            .unwrap()
            .trim_end_matches(".pth");
        assert!(s.sha256.starts_with(prefix), "{}", s.file_name);
        assert!(s.url.ends_with(s.file_name), "{}", s.url);
    }
    for s in [
        weights::INCEPTION,
        weights::ALEXNET,
        weights::LPIPS_ALEX_LIN,
    ] {
        assert_eq!(s.sha256.len(), 64);
        assert!(
            s.sha256
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
    }
    weights::verify(&weights::LPIPS_ALEX_LIN, &fixture("lpips_v0.1_alex.pth")).unwrap();
    let e = weights::verify(&weights::INCEPTION, &fixture("lpips_v0.1_alex.pth")).unwrap_err();
    assert!(matches!(e, WeightsError::Mismatch { .. }), "{e}");
}
