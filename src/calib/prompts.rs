//! Prompt lists for calibration runs: a CSV file with a `prompt` column (any case) or a single
//! column without a header; UTF-8 with or without a byte-order mark; quoted fields may hold
//! commas and newlines; blank lines are skipped. SD3 Lab ships an original set of 206 prompts
//! (`assets/prompts.csv`), compiled into the binary.

use std::path::Path;

/// The shipped prompt set (CSV with `prompt,category`).
pub const BUILTIN_PROMPTS_CSV: &str = include_str!("../../assets/prompts.csv");

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
}

/// Parses CSV text (see the module docs). `name` is used in error messages.
pub fn parse_prompts(text: &str, name: &str) -> Result<Vec<String>, PromptError> {
    let err = |reason: String| PromptError::Format {
        path: name.to_owned(),
        reason,
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(text.as_bytes());
    let mut rows: Vec<Vec<String>> = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let record = record.map_err(|e| err(format!("row {}: {e}", i + 1)))?;
        let fields: Vec<String> = record.iter().map(str::to_owned).collect();
        if fields.iter().all(|f| f.trim().is_empty()) {
            continue;
        }
        rows.push(fields);
    }
    let Some(first) = rows.first() else {
        return Err(err("the file holds no prompts".into()));
    };
    let column = first
        .iter()
        .position(|h| h.trim().eq_ignore_ascii_case("prompt"));
    let prompts: Vec<String> = match column {
        Some(c) => rows[1..]
            .iter()
            .filter_map(|r| r.get(c))
            .map(|p| p.trim().to_owned())
            .filter(|p| !p.is_empty())
            .collect(),
        None if rows
            .iter()
            .all(|r| r.iter().filter(|f| !f.trim().is_empty()).count() <= 1) =>
        {
            rows.iter()
                .filter_map(|r| r.iter().find(|f| !f.trim().is_empty()))
                .map(|p| p.trim().to_owned())
                .collect()
        }
        None => {
            return Err(err(format!(
                "no 'prompt' column in the header ({}) and more than one column",
                first.join(", ")
            )));
        }
    };
    if prompts.is_empty() {
        return Err(err("the 'prompt' column is empty".into()));
    }
    Ok(prompts)
}

/// Reads prompts from a CSV file.
pub fn read_prompts(path: &Path) -> Result<Vec<String>, PromptError> {
    let name = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| PromptError::Io {
        path: name.clone(),
        source,
    })?;
    let text = String::from_utf8(bytes).map_err(|e| PromptError::Format {
        path: name.clone(),
        reason: format!("not UTF-8: {e}"),
    })?;
    parse_prompts(&text, &name)
}

/// The shipped prompt set.
pub fn builtin_prompts() -> Vec<String> {
    parse_prompts(BUILTIN_PROMPTS_CSV, "assets/prompts.csv").unwrap_or_default()
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
