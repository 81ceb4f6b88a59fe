//! Prompt lists for calibration runs: a CSV file with a `prompt` column (any case) or a single
//! column without a header; UTF-8 with or without a byte-order mark; quoted fields may hold
//! commas and newlines; blank lines are skipped. SD3 Lab ships an original set of 206 prompts
//! (`assets/prompts.csv`), compiled into the binary.

use std::path::Path;

/// The shipped prompt set (CSV with `prompt,category`).
pub const BUILTIN_PROMPTS_CSV: &str = include_str!("../../assets/prompts.csv");

/// The largest prompt file read: a prompt list is kilobytes to a few megabytes (COCO-30k's
/// captions are about 3 MB); anything larger is refused before it is read.
pub const MAX_PROMPT_FILE_BYTES: u64 = 64 << 20;

/// The most characters kept of one prompt. CLIP reads 77 tokens (75 and the two markers) after
/// collapsing whitespace; a longer prompt is cut here, when read, so that a 10 MB prompt costs
/// kilobytes (and the tokenizer's merges stay quick), not gigabytes. Whitespace runs of a cut
/// prompt are collapsed first, as the tokenizer does, so that padding cannot push words out.
pub const MAX_PROMPT_CHARS: usize = 4096;

/// Why a prompt file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Format { path: String, reason: String },
    #[error("{path} is {what}, not a prompt file (a CSV file with a 'prompt' column)")]
    NotAFile { path: String, what: &'static str },
    #[error(
        "{path} is {bytes} bytes, more than the {max} a prompt file may be",
        max = MAX_PROMPT_FILE_BYTES
    )]
    TooLarge { path: String, bytes: u64 },
}

/// Prompts read from a file, with what the user should know about them.
#[derive(Debug, Clone, PartialEq)]
pub struct Prompts {
    pub prompts: Vec<String>,
    /// Prompts that were cut to [`MAX_PROMPT_CHARS`].
    pub notes: Vec<String>,
}

/// Parses CSV text (see the module docs). `name` is used in error messages.
pub fn parse_prompts(text: &str, name: &str) -> Result<Vec<String>, PromptError> {
    parse_prompts_limited(text, name, usize::MAX).map(|p| p.prompts)
}

/// [`parse_prompts`] keeping the first `limit` prompts only (a run of N images uses N), each
/// cut to [`MAX_PROMPT_CHARS`]: memory follows what is used, not the file. Every row is still
/// checked, so a file that is refused whole is refused whatever the limit.
pub fn parse_prompts_limited(text: &str, name: &str, limit: usize) -> Result<Prompts, PromptError> {
    let err = |reason: String| PromptError::Format {
        path: name.to_owned(),
        reason,
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(text.as_bytes());
    // Read row by row: one record at a time in memory, never the whole table.
    let mut record = csv::StringRecord::new();
    let mut row = 0usize;
    // The header's column of prompts, or `None` for a single column without header; decided
    // by the first non-blank row (kept, shortened, for the error message).
    let mut layout: Option<(Option<usize>, String)> = None;
    let mut prompts = Vec::new();
    let mut cut = Vec::new();
    let mut found = 0usize;
    loop {
        match reader.read_record(&mut record) {
            Ok(true) => row += 1,
            Ok(false) => break,
            Err(e) => return Err(err(format!("row {}: {e}", row + 1))),
        }
        let filled = record.iter().filter(|f| !f.trim().is_empty()).count();
        if filled == 0 {
            continue;
        }
        let prompt = match &layout {
            None => {
                let column = record
                    .iter()
                    .position(|h| h.trim().eq_ignore_ascii_case("prompt"));
                let header: String = record.iter().collect::<Vec<_>>().join(", ");
                let header = header.chars().take(200).collect();
                layout = Some((column, header));
                match column {
                    Some(_) => continue,
                    None => record.iter().find(|f| !f.trim().is_empty()),
                }
            }
            Some((Some(c), _)) => record.get(*c).filter(|p| !p.trim().is_empty()),
            Some((None, _)) => record.iter().find(|f| !f.trim().is_empty()),
        };
        if let Some((None, header)) = &layout
            && filled > 1
        {
            return Err(err(format!(
                "no 'prompt' column in the header ({header}) and more than one column"
            )));
        }
        let Some(prompt) = prompt else { continue };
        found += 1;
        if prompts.len() < limit {
            let (kept, was_cut) = shorten(prompt.trim());
            if was_cut {
                cut.push(found - 1);
            }
            prompts.push(kept);
        }
    }
    match layout {
        None => return Err(err("the file holds no prompts".into())),
        Some((Some(_), _)) if found == 0 => {
            return Err(err("the 'prompt' column is empty".into()));
        }
        _ => {}
    }
    let notes = if cut.is_empty() {
        Vec::new()
    } else {
        let shown: Vec<String> = cut.iter().take(10).map(usize::to_string).collect();
        vec![format!(
            "{name}: {} prompt(s) longer than {MAX_PROMPT_CHARS} characters were cut to that \
             length (CLIP reads 77 tokens): prompt {}{}",
            cut.len(),
            shown.join(", "),
            if cut.len() > shown.len() { ", …" } else { "" }
        )]
    };
    Ok(Prompts { prompts, notes })
}

/// `prompt` as used: unchanged when at most [`MAX_PROMPT_CHARS`] long, else its words joined
/// by single spaces (as the tokenizer sees them) and cut to that many characters. The second
/// value says whether it was cut.
fn shorten(prompt: &str) -> (String, bool) {
    if prompt.len() <= MAX_PROMPT_CHARS || prompt.chars().count() <= MAX_PROMPT_CHARS {
        return (prompt.to_owned(), false);
    }
    let mut kept = String::with_capacity(MAX_PROMPT_CHARS + 8);
    let mut chars = 0usize;
    'words: for word in prompt.split_whitespace() {
        if chars > 0 {
            if chars == MAX_PROMPT_CHARS {
                break;
            }
            kept.push(' ');
            chars += 1;
        }
        for c in word.chars() {
            if chars == MAX_PROMPT_CHARS {
                break 'words;
            }
            kept.push(c);
            chars += 1;
        }
    }
    let was_cut = kept.len() < prompt.len();
    (kept, was_cut)
}

/// Reads prompts from a CSV file: the first `limit` prompts (see [`parse_prompts_limited`]).
/// A folder, FIFO or device is refused without opening it (reading a FIFO would wait for a
/// writer), and so is a file larger than [`MAX_PROMPT_FILE_BYTES`].
pub fn read_prompts(path: &Path, limit: usize) -> Result<Prompts, PromptError> {
    let name = path.display().to_string();
    let io = |source| PromptError::Io {
        path: name.clone(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if !meta.is_file() {
        return Err(PromptError::NotAFile {
            path: name,
            what: file_kind(&meta.file_type()),
        });
    }
    if meta.len() > MAX_PROMPT_FILE_BYTES {
        return Err(PromptError::TooLarge {
            path: name,
            bytes: meta.len(),
        });
    }
    let mut bytes = Vec::new();
    // The file may grow between the check and the read: read one byte past the bound at most.
    std::io::Read::read_to_end(
        &mut std::io::Read::take(
            std::fs::File::open(path).map_err(io)?,
            MAX_PROMPT_FILE_BYTES + 1,
        ),
        &mut bytes,
    )
    .map_err(io)?;
    if bytes.len() as u64 > MAX_PROMPT_FILE_BYTES {
        return Err(PromptError::TooLarge {
            path: name,
            bytes: bytes.len() as u64,
        });
    }
    let text = String::from_utf8(bytes).map_err(|e| PromptError::Format {
        path: name.clone(),
        reason: format!("not UTF-8: {e}"),
    })?;
    parse_prompts_limited(&text, &name, limit)
}

/// What a path that is not a regular file is, in words.
fn file_kind(kind: &std::fs::FileType) -> &'static str {
    if kind.is_dir() {
        return "a folder";
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if kind.is_fifo() {
            return "a FIFO (named pipe)";
        }
        if kind.is_block_device() || kind.is_char_device() {
            return "a device";
        }
        if kind.is_socket() {
            return "a socket";
        }
    }
    "not a regular file"
}

/// The shipped prompt set.
pub fn builtin_prompts() -> Vec<String> {
    parse_prompts(BUILTIN_PROMPTS_CSV, "assets/prompts.csv").unwrap_or_default()
}

/// The demo model's shipped prompts (`assets/demo-prompts.csv`): 40 captions of its world that
/// its training never showed (`sd3lab model shapes --held-out --count 40 --seed 0`).
pub const DEMO_PROMPTS_CSV: &str = include_str!("../../assets/demo-prompts.csv");

/// The prompts a run uses when it is given none: the demo captions for the built-in `tiny`
/// model (it knows no other words), the general set otherwise; with the file they come from.
pub fn builtin_prompts_for(model: &str) -> (Vec<String>, &'static str) {
    if model == "tiny" {
        let file = "assets/demo-prompts.csv";
        (
            parse_prompts(DEMO_PROMPTS_CSV, file).unwrap_or_default(),
            file,
        )
    } else {
        (builtin_prompts(), "assets/prompts.csv")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_column_any_case_with_bom_quotes_and_blank_lines() {
        let text = "\u{feff}id,PROMPT,extra\n1,\"a fox, in snow\",x\n\n2,\"two\nlines\",y\n3,,z\n";
        assert_eq!(
            parse_prompts(text, "t.csv").unwrap(),
            vec!["a fox, in snow", "two\nlines"]
        );
    }

    #[test]
    fn single_column_without_header() {
        assert_eq!(
            parse_prompts("a cat\n\n  a dog  \n", "t.csv").unwrap(),
            vec!["a cat", "a dog"]
        );
    }

    #[test]
    fn clear_errors() {
        let e = parse_prompts("", "empty.csv").unwrap_err().to_string();
        assert!(e.contains("empty.csv") && e.contains("no prompts"), "{e}");
        let e = parse_prompts("a,b\n1,2\n", "two.csv")
            .unwrap_err()
            .to_string();
        assert!(e.contains("no 'prompt' column"), "{e}");
        let e = parse_prompts("prompt\n\n", "hdr.csv")
            .unwrap_err()
            .to_string();
        assert!(e.contains("empty"), "{e}");
    }

    #[test]
    fn only_the_prompts_used_are_kept_and_every_row_is_still_checked() {
        let text = "prompt\na\nb\nc\nd\n";
        let p = parse_prompts_limited(text, "t.csv", 2).unwrap();
        assert_eq!(p.prompts, ["a", "b"]);
        // A bad row after the limit still refuses the file, as without a limit.
        let e = parse_prompts_limited("a\nb\nc,d\n", "t.csv", 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("more than one column"), "{e}");
    }

    #[test]
    fn a_huge_prompt_is_cut_when_read_with_its_words_kept_and_said() {
        // 10 MB on one line: words separated by long whitespace runs, as CLIP sees them.
        let words = ["a", "red", "fox"].repeat(500_000).join(" \t   ");
        assert!(words.len() > 10_000_000);
        let text = format!("prompt\n\"{words}\"\nshort one\n");
        let p = parse_prompts_limited(&text, "big.csv", 10).unwrap();
        assert_eq!(p.prompts.len(), 2);
        let cut = &p.prompts[0];
        assert_eq!(cut.chars().count(), MAX_PROMPT_CHARS);
        assert!(cut.starts_with("a red fox a red fox"), "{}", &cut[..40]);
        assert_eq!(p.prompts[1], "short one");
        assert!(
            p.notes.len() == 1 && p.notes[0].contains("big.csv") && p.notes[0].contains("prompt 0"),
            "{:?}",
            p.notes
        );
        // One huge piece without whitespace (the tokenizer's slowest case) is cut too.
        let bang = format!("{}\n", "!".repeat(10_000_000));
        let p = parse_prompts_limited(&bang, "bang.csv", 1).unwrap();
        assert_eq!(p.prompts[0].len(), MAX_PROMPT_CHARS);
        // A prompt at the bound is kept as it is, spaces included.
        let exact = format!("x{}y", "  ".repeat((MAX_PROMPT_CHARS - 2) / 2));
        let p = parse_prompts_limited(&exact, "ok.csv", 1).unwrap();
        assert_eq!((p.prompts[0].as_str(), p.notes.len()), (exact.as_str(), 0));
    }

    #[test]
    fn folders_fifos_and_oversized_files_are_refused_saying_what_they_are() {
        let dir = tempfile::tempdir().unwrap();
        let e = read_prompts(dir.path(), 1).unwrap_err().to_string();
        assert!(e.contains("is a folder, not a prompt file"), "{e}");
        #[cfg(unix)]
        {
            let fifo = dir.path().join("pipe.csv");
            let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
            // SAFETY: mkfifo with a valid NUL-terminated path.
            assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
            // Refused without opening it (opening would wait for a writer forever).
            let e = read_prompts(&fifo, 1).unwrap_err().to_string();
            assert!(e.contains("pipe.csv is a FIFO (named pipe)"), "{e}");
        }
        let big = dir.path().join("big.csv");
        let f = std::fs::File::create(&big).unwrap();
        f.set_len(MAX_PROMPT_FILE_BYTES + 1).unwrap();
        let e = read_prompts(&big, 1).unwrap_err().to_string();
        assert!(e.contains("big.csv") && e.contains("more than"), "{e}");
    }

    #[test]
    fn shipped_set_is_large_and_varied() {
        let p = builtin_prompts();
        assert!(p.len() >= 200, "{}", p.len());
        let mut unique = p.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), p.len());
        assert!(
            p.iter().any(|s| s.contains('"')),
            "text-rendering prompts with quotes"
        );
    }
}
