//! The CLIP tokenizer against DiffusionKit's on the real CLIP BPE data (48,894 merges from
//! open_clip's `bpe_simple_vocab_16e6.txt.gz`), and against OpenAI's byte-level behaviour where
//! DiffusionKit would raise; the merges shipped in `assets/` are that data.

mod common;

use std::collections::HashMap;

use sd3lab::model::tokenizer::{ClipTokenizer, Padding};

const PROMPTS: &[&str] = &[
    "a red fox in snow",
    "",
    "   ",
    "A photograph of an astronaut riding a horse, 4k, highly detailed!!!",
    "Text that says \"HELLO WORLD\" on a neon sign; 3 cats & 2 dogs.",
    "it's a dog's life, they're here, we'll see, I'd go, you've got it, I'm in",
    "numbers 1234567890 and 3.14159 and -42 and 1e10",
    "UPPER lower MiXeD CaSe",
    "emoji-free punctuation: (parentheses) [brackets] {braces} <angles> @#$%^*_+=|~`",
    "tabs\tand\nnewlines\r\nand  multiple   spaces",
    "<|startoftext|> literal markers <|endoftext|>",
    "café naïve résumé",
    "日本語のテキスト",
    "snowman ☃ and rocket 🚀",
];

#[test]
fn matches_diffusionkit_and_openai_on_real_bpe_data() {
    let dir = tempfile::tempdir().unwrap();
    let mut prompts: Vec<String> = PROMPTS.iter().map(|s| s.to_string()).collect();
    // Truncation: far more than 75 tokens.
    prompts.push("a very long prompt about a castle on a hill ".repeat(12));
    let prompts_file = dir.path().join("prompts.json");
    std::fs::write(&prompts_file, serde_json::to_string(&prompts).unwrap()).unwrap();
    common::run_oracle(
        "tokenizer_oracle.py",
        &[dir.path().as_os_str(), prompts_file.as_os_str()],
    );

    let tok = ClipTokenizer::load(dir.path(), Padding::Eos).unwrap();
    assert_eq!((tok.bos(), tok.eos()), (49406, 49407));
    let ids: HashMap<String, serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("ids.json")).unwrap())
            .unwrap();
    let as_ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    let mut handled = 0;
    for p in &prompts {
        let ours = tok.tokenize(p);
        let expected = &ids[p];
        if expected["diffusionkit"].is_null() {
            assert_eq!(
                ours,
                as_ids(&expected["openai"]),
                "OpenAI fallback for {p:?}"
            );
        } else {
            handled += 1;
            assert_eq!(
                ours,
                as_ids(&expected["diffusionkit"]),
                "DiffusionKit parity for {p:?}"
            );
        }
        assert!(ours.len() <= 77, "{p:?}");
    }
    // Most of the list is text DiffusionKit handles; the CJK and emoji prompts are not.
    assert!(
        handled >= 12,
        "only {handled} prompts were compared with DiffusionKit"
    );
    let long = tok.tokenize(&prompts[prompts.len() - 1]);
    assert_eq!(long.len(), 77);

    // The merges shipped for the demo model are these, and the vocabulary built from them is
    // OpenAI's / Hugging Face's, id for id.
    use sd3lab::model::tokenizer::{clip_merges, parse_merges, vocab_from_merges};
    let theirs = std::fs::read_to_string(dir.path().join("merges.txt")).unwrap();
    assert_eq!(parse_merges(&theirs).unwrap(), clip_merges());
    let their_vocab: HashMap<String, u32> =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("vocab.json")).unwrap())
            .unwrap();
    assert_eq!(vocab_from_merges(&clip_merges()), their_vocab);
}
