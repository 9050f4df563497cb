//! Message text: bodies drawn from a fixed vocabulary of pseudo-words, so the fixture loader,
//! the API setup and the write scenarios produce the same kind of text, and the search
//! scenario knows which words exist (each matches about 2% of a chat's messages).

use bytes::Bytes;

const SYLLABLES: [&str; 16] = [
    "ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pa", "do", "fu", "gi", "ha", "je", "wu",
];

/// Words in the vocabulary.
pub const VOCABULARY: usize = 512;

/// The `i`-th word of the vocabulary: three syllables, six letters, all distinct. The index
/// is scrambled (an odd multiplier is a bijection mod 4096) so every syllable position varies.
pub fn word(i: usize) -> String {
    let j = ((i % VOCABULARY) as u64 * 0x9E37_79B1 % 4096) as usize;
    [j & 15, (j >> 4) & 15, (j >> 8) & 15]
        .iter()
        .map(|&s| SYLLABLES[s])
        .collect()
}

/// Every word of the vocabulary, in order.
pub fn vocabulary() -> Vec<String> {
    (0..VOCABULARY).map(word).collect()
}

/// A message body of 8 to 14 words (about 50 to 100 bytes), like a chat line.
pub fn body(rng: &mut fastrand::Rng) -> String {
    let words = rng.usize(8..=14);
    let mut text = String::with_capacity(words * 7);
    for i in 0..words {
        if i > 0 {
            text.push(' ');
        }
        text.push_str(&word(rng.usize(..VOCABULARY)));
    }
    text
}

/// Ready-to-send JSON bodies for `POST …/messages`, so the load loop does not format text.
pub fn json_bodies(count: usize, seed: u64) -> Vec<Bytes> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..count)
        .map(|_| {
            let value = serde_json::json!({ "body": body(&mut rng) });
            Bytes::from(serde_json::to_vec(&value).expect("a JSON value serialises"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_distinct_and_bodies_use_them() {
        let words = vocabulary();
        let unique: std::collections::HashSet<_> = words.iter().collect();
        assert_eq!(unique.len(), VOCABULARY);
        let mut rng = fastrand::Rng::with_seed(1);
        let text = body(&mut rng);
        assert!(text.split(' ').all(|w| unique.contains(&w.to_owned())));
        assert!((8..=14).contains(&text.split(' ').count()));
    }
}
