use std::time::Instant;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{PreTokenizer, PreTokenizedString, OffsetReferential, OffsetType};

#[test]
fn scratch() {
    let paragraph = "The quick brown fox jumps over the lazy dog; it's 2024, and naïve café owners \
                     don't mind. 数据 🎉 fn main() { println!(\"{}\", 42); }\n";
    let text = paragraph.repeat(12);
    let time = |label: &str, f: &dyn Fn()| {
        for _ in 0..5 { f(); }
        let n = 50;
        let start = Instant::now();
        for _ in 0..n { f(); }
        println!("{label}: {:?}", start.elapsed() / n);
    };
    let bl = ByteLevel::new(false, true, true);
    time("bytelevel builtin regex", &|| { let mut p = PreTokenizedString::from(text.as_str()); bl.pre_tokenize(&mut p).unwrap(); std::hint::black_box(p.get_splits(OffsetReferential::Original, OffsetType::Byte).len()); });
    let re = fancy_regex::Regex::new(r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)").unwrap();
    time("fancy find_iter", &|| { std::hint::black_box(re.find_iter(&text).count()); });
    let re2 = regex::Regex::new(r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+").unwrap();
    time("regex crate find_iter (no lookahead)", &|| { std::hint::black_box(re2.find_iter(&text).count()); });
    let file = cleave_gguf::GgufFile::open(std::env::var("HOME").unwrap() + "/.cache/cleave/models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf").unwrap();
    let tok = cleave_tokens::Tokenizer::from_gguf(&file).unwrap();
    time("full encode", &|| { std::hint::black_box(tok.encode(&text, false).unwrap()); });
}
