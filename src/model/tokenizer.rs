//! CLIP's byte-pair-encoding tokenizer, as DiffusionKit runs it (a port of Hugging Face's
//! `CLIPTokenizer` without ftfy or HTML clean-up):
//! lower-case, collapse whitespace, split with CLIP's regex, merge each piece by rank with
//! `</w>` marking word ends, truncate to 75 tokens, add BOS (49406) and EOS (49407).
//!
//! DiffusionKit looks each piece's characters up in the vocabulary as they are; on text it cannot
//! encode that way (it raises `KeyError`, e.g. most non-ASCII text) this tokenizer does what
//! OpenAI's CLIP tokenizer does instead: each piece's UTF-8 bytes are mapped through CLIP's
//! byte-to-unicode table before merging. The two agree on printable ASCII.

use std::collections::HashMap;
use std::path::Path;

/// OpenAI CLIP's own BPE merges, as every CLIP tokenizer's `merges.txt` on Hugging Face holds
/// them (the first 48,894 of CLIP's `bpe_simple_vocab_16e6.txt`): the demo model's tokenizers.
pub const CLIP_MERGES_TXT: &str = include_str!("../../assets/clip-bpe-merges.txt");

/// [`CLIP_MERGES_TXT`] as pairs.
pub fn clip_merges() -> Vec<(String, String)> {
    parse_merges(CLIP_MERGES_TXT).unwrap_or_default()
}

/// The merges of a `merges.txt` (a header line, then one pair per line, at most
/// [`MAX_MERGES`] read); a malformed line is `Err((line number, line))`.
pub fn parse_merges(text: &str) -> Result<Vec<(String, String)>, (usize, String)> {
    let mut merges = Vec::new();
    for (n, line) in text.trim().split('\n').enumerate().skip(1).take(MAX_MERGES) {
        let mut parts = line.split_whitespace();
        match (parts.next(), parts.next()) {
            (Some(a), Some(b)) => merges.push((a.to_owned(), b.to_owned())),
            _ => return Err((n + 1, line.to_owned())),
        }
    }
    Ok(merges)
}

/// Start-of-text marker.
pub const BOS: &str = "<|startoftext|>";
/// End-of-text marker.
pub const EOS: &str = "<|endoftext|>";
/// Merges DiffusionKit reads from `merges.txt` (lines 1..=48894).
pub const MAX_MERGES: usize = 49152 - 256 - 2;

/// The tokenizer's files in a `tokenizer_*/` folder of the published layout.
pub const VOCAB_FILE: &str = "vocab.json";
pub const MERGES_FILE: &str = "merges.txt";

/// Why a tokenizer could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Format { path: String, reason: String },
    #[error("the vocabulary has no {token}")]
    MissingToken { token: &'static str },
}

/// How padding is done for a CLIP model: CLIP-L pads with EOS, CLIP-G with 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    Eos,
    Zero,
}

/// A loaded CLIP BPE tokenizer.
#[derive(Debug, Clone)]
pub struct ClipTokenizer {
    vocab: HashMap<String, u32>,
    ranks: HashMap<(String, String), usize>,
    bos: u32,
    eos: u32,
    pub max_length: usize,
    pub padding: Padding,
    /// One compiled pattern for the process, shared by reference: its match caches live in the
    /// regex's own pool, so a new tokenizer does not rebuild them (a clone would).
    splitter: &'static regex::Regex,
    byte_encoder: [char; 256],
}

/// CLIP's reversible byte → printable character table (OpenAI's `bytes_to_unicode`).
pub fn bytes_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut extra = 0u32;
    for b in 0..256u32 {
        let printable = (b'!' as u32..=b'~' as u32).contains(&b)
            || (0xA1..=0xAC).contains(&b)
            || (0xAE..=0xFF).contains(&b);
        table[b as usize] = if printable {
            char::from_u32(b).unwrap_or('\0')
        } else {
            extra += 1;
            char::from_u32(255 + extra).unwrap_or('\0')
        };
    }
    table
}

impl ClipTokenizer {
    /// Builds a tokenizer from a vocabulary and ranked merges.
    pub fn new(
        vocab: HashMap<String, u32>,
        merges: Vec<(String, String)>,
        padding: Padding,
    ) -> Result<Self, TokenizerError> {
        let special = |token: &'static str| {
            vocab
                .get(token)
                .copied()
                .ok_or(TokenizerError::MissingToken { token })
        };
        let (bos, eos) = (special(BOS)?, special(EOS)?);
        let ranks = merges
            .into_iter()
            .enumerate()
            .map(|(i, pair)| (pair, i))
            .collect();
        // Compiled once per process (its Unicode classes take milliseconds).
        static SPLITTER: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
            regex::Regex::new(
                r"(?i)<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+",
            )
            .expect("the pre-tokenizer pattern is a constant that compiles")
        });
        let splitter: &'static regex::Regex = &SPLITTER;
        Ok(Self {
            vocab,
            ranks,
            bos,
            eos,
            max_length: 77,
            padding,
            splitter,
            byte_encoder: bytes_to_unicode(),
        })
    }

    /// Loads `vocab.json` and `merges.txt` from `dir` (the published `tokenizer_l/`,
    /// `tokenizer_g/` layout).
    pub fn load(dir: &Path, padding: Padding) -> Result<Self, TokenizerError> {
        let vocab_path = dir.join(VOCAB_FILE);
        let merges_path = dir.join(MERGES_FILE);
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|source| TokenizerError::Io {
                path: p.display().to_string(),
                source,
            })
        };
        let vocab: HashMap<String, u32> =
            serde_json::from_str(&read(&vocab_path)?).map_err(|e| TokenizerError::Format {
                path: vocab_path.display().to_string(),
                reason: format!("not a token → id JSON object: {e}"),
            })?;
        let merges =
            parse_merges(&read(&merges_path)?).map_err(|(n, line)| TokenizerError::Format {
                path: merges_path.display().to_string(),
                reason: format!("line {n}: expected two symbols, found {line:?}"),
            })?;
        // The vocabulary came from `vocab_path`: name it in the error.
        Self::new(vocab, merges, padding).map_err(|e| match e {
            TokenizerError::MissingToken { .. } => TokenizerError::Format {
                path: vocab_path.display().to_string(),
                reason: e.to_string(),
            },
            other => other,
        })
    }

    /// The token with the largest id (every id this tokenizer can produce is at most this;
    /// padding's 0 included). Ties, which a valid vocabulary has none of, go to the first name.
    pub fn largest_id(&self) -> (&str, u32) {
        self.vocab
            .iter()
            .map(|(t, &id)| (t.as_str(), id))
            .max_by(|a, b| a.1.cmp(&b.1).then_with(|| b.0.cmp(a.0)))
            .unwrap_or(("", 0))
    }

    pub fn bos(&self) -> u32 {
        self.bos
    }

    pub fn eos(&self) -> u32 {
        self.eos
    }

    pub fn pad_id(&self) -> u32 {
        match self.padding {
            Padding::Eos => self.eos,
            Padding::Zero => 0,
        }
    }

    /// Merges one piece's symbols by rank; the last symbol carries `</w>`.
    fn bpe(&self, symbols: Vec<String>) -> Vec<String> {
        let mut unigrams = symbols;
        if let Some(last) = unigrams.last_mut() {
            last.push_str("</w>");
        }
        loop {
            if unigrams.len() < 2 {
                return unigrams;
            }
            let best = unigrams
                .windows(2)
                .filter_map(|w| {
                    self.ranks
                        .get(&(w[0].clone(), w[1].clone()))
                        .map(|r| (*r, (w[0].clone(), w[1].clone())))
                })
                .min_by_key(|(r, _)| *r);
            let Some((_, (a, b))) = best else {
                return unigrams;
            };
            let mut merged = Vec::with_capacity(unigrams.len());
            let mut i = 0;
            while i < unigrams.len() {
                if i + 1 < unigrams.len() && unigrams[i] == a && unigrams[i + 1] == b {
                    merged.push(format!("{a}{b}"));
                    i += 2;
                } else {
                    merged.push(unigrams[i].clone());
                    i += 1;
                }
            }
            unigrams = merged;
        }
    }

    /// The text's pieces after lower-casing and whitespace clean-up.
    fn pieces<'t>(&self, clean: &'t str) -> Vec<&'t str> {
        self.splitter.find_iter(clean).map(|m| m.as_str()).collect()
    }

    /// Token ids without BOS/EOS, DiffusionKit's way, or `None` where DiffusionKit would fail.
    fn ids_as_diffusionkit(&self, clean: &str) -> Option<Vec<u32>> {
        let mut ids = Vec::new();
        for piece in self.pieces(clean) {
            // DiffusionKit's BPE cache returns the two markers as plain strings, which are then
            // iterated character by character.
            let symbols: Vec<String> = if piece == BOS || piece == EOS {
                piece.chars().map(String::from).collect()
            } else {
                self.bpe(piece.chars().map(String::from).collect())
            };
            for s in symbols {
                ids.push(*self.vocab.get(&s)?);
            }
        }
        Some(ids)
    }

    /// Token ids without BOS/EOS, OpenAI's byte-level way (unknown symbols are skipped).
    fn ids_byte_level(&self, clean: &str) -> Vec<u32> {
        let mut ids = Vec::new();
        for piece in self.pieces(clean) {
            let symbols: Vec<String> = piece
                .bytes()
                .map(|b| self.byte_encoder[b as usize].to_string())
                .collect();
            ids.extend(self.bpe(symbols).iter().filter_map(|s| self.vocab.get(s)));
        }
        ids
    }

    /// `[BOS] + ids + [EOS]`, with the ids truncated to fit `max_length`, unpadded.
    pub fn tokenize(&self, text: &str) -> Vec<u32> {
        let lower = text.to_lowercase();
        let clean = lower.split_whitespace().collect::<Vec<_>>().join(" ");
        // `\s+` → " " keeps one leading/trailing space, which the splitter ignores anyway.
        let mut ids = self
            .ids_as_diffusionkit(&clean)
            .unwrap_or_else(|| self.ids_byte_level(&clean));
        ids.truncate(self.max_length.saturating_sub(2));
        let mut out = Vec::with_capacity(ids.len() + 2);
        out.push(self.bos);
        out.extend(ids);
        out.push(self.eos);
        out
    }

    /// The CFG token batch DiffusionKit builds: the prompt padded to `max_length`, then the
    /// negative prompt (if any), both padded to the same length with this model's pad id.
    pub fn batch(&self, prompt: &str, negative: Option<&str>) -> Vec<Vec<u32>> {
        let pad = self.pad_id();
        let mut first = self.tokenize(prompt);
        first.resize(first.len().max(self.max_length), pad);
        let mut rows = vec![first];
        if let Some(neg) = negative {
            rows.push(self.tokenize(neg));
        }
        let n = rows.iter().map(Vec::len).max().unwrap_or(0);
        for r in &mut rows {
            r.resize(n, pad);
        }
        rows
    }
}

/// Builds CLIP's standard vocabulary from ranked merges: the 256 byte symbols, the same with
/// `</w>`, one entry per merge, then BOS and EOS (OpenAI's construction; 49,408 entries for the
/// published 48,894 merges).
pub fn vocab_from_merges(merges: &[(String, String)]) -> HashMap<String, u32> {
    // OpenAI's order: the printable bytes' symbols (themselves) then the others' (from U+0100
    // on), each in byte order, which is the symbols' code point order.
    let mut bytes = bytes_to_unicode();
    bytes.sort_unstable();
    let mut tokens: Vec<String> = bytes.iter().map(|c| c.to_string()).collect();
    tokens.extend(bytes.iter().map(|c| format!("{c}</w>")));
    tokens.extend(merges.iter().map(|(a, b)| format!("{a}{b}")));
    tokens.push(BOS.to_owned());
    tokens.push(EOS.to_owned());
    tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| (t, i as u32))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy() -> ClipTokenizer {
        ClipTokenizer::new(vocab_from_merges(&toy_merges()), toy_merges(), Padding::Eos).unwrap()
    }

    /// "red" merges in two steps (e+d</w>, then r+ed</w>); "fox" likewise; (d, e) is never used.
    fn toy_merges() -> Vec<(String, String)> {
        [
            ("e", "d</w>"),
            ("r", "ed</w>"),
            ("f", "o"),
            ("fo", "x</w>"),
            ("d", "e"),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
    }

    #[test]
    fn the_shipped_merges_are_clips_and_tokenize_as_openais_tokenizer_does() {
        let merges = clip_merges();
        assert_eq!(merges.len(), MAX_MERGES);
        assert_eq!(merges[0], ("i".to_owned(), "n".to_owned()));
        let t = ClipTokenizer::new(vocab_from_merges(&merges), merges, Padding::Eos).unwrap();
        // OpenAI's CLIP tokenizer's well-known ids: "a photo of a cat".
        assert_eq!(
            t.tokenize("A photo of a cat"),
            [49406, 320, 1125, 539, 320, 2368, 49407]
        );
        // The demo captions' words are single tokens.
        let ids = t.tokenize("two large white rings on an orange background");
        assert_eq!(ids.len(), 2 + 8, "{ids:?}");
    }

    #[test]
    fn a_vocabulary_without_its_special_tokens_is_refused_by_name() {
        let mut vocab = vocab_from_merges(&toy_merges());
        vocab.remove(EOS);
        let err = ClipTokenizer::new(vocab.clone(), toy_merges(), Padding::Eos).unwrap_err();
        assert!(
            matches!(err, TokenizerError::MissingToken { token: EOS }),
            "{err:?}"
        );
        // Loaded from files, the error names the vocabulary file.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("vocab.json"),
            serde_json::to_string(&vocab).unwrap(),
        )
        .unwrap();
        std::fs::write(dir.path().join("merges.txt"), "#version: 0.2\ne d</w>\n").unwrap();
        let err = ClipTokenizer::load(dir.path(), Padding::Eos)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("vocab.json") && err.contains("has no <|endoftext|>"),
            "{err}"
        );
    }

    #[test]
    fn merges_by_rank_and_wraps_with_bos_eos() {
        let t = toy();
        let v = vocab_from_merges(&toy_merges());
        let ids = t.tokenize("  A RED\tfox ");
        assert_eq!(
            ids,
            vec![t.bos(), v["a</w>"], v["red</w>"], v["fox</w>"], t.eos()]
        );
        assert_eq!(t.tokenize(""), vec![t.bos(), t.eos()]);
    }

    #[test]
    fn truncates_to_77_and_pads_per_model() {
        let t = toy();
        let long = "fox ".repeat(100);
        let ids = t.tokenize(&long);
        assert_eq!(ids.len(), 77);
        assert_eq!((ids[0], ids[76]), (t.bos(), t.eos()));
        let batch = t.batch("fox", Some(""));
        assert_eq!(batch.len(), 2);
        assert!(batch.iter().all(|r| r.len() == 77));
        assert_eq!(batch[1][..3], [t.bos(), t.eos(), t.eos()]);
        let mut g = toy();
        g.padding = Padding::Zero;
        assert_eq!(g.batch("fox", None)[0][3..], [0u32; 74]);
    }

    #[test]
    fn non_ascii_falls_back_to_bytes() {
        let t = toy();
        let ids = t.tokenize("naïve ☃");
        // Every id is a known byte-level symbol, and nothing panicked.
        assert_eq!(ids.first(), Some(&t.bos()));
        assert!(ids.len() > 4);
    }
}
