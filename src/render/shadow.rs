//! Shadow rendering: which text of a rendered file derives from a secret.
//!
//! Guessing the encodings a template may apply to a secret cannot be
//! complete (a filter, a method, a slice, a macro can each make a new
//! form). Instead a file that read a secret is rendered twice more with
//! stand-ins: for every secret a random value of the same length, each
//! character replaced by another of its kind (letter by a letter of the same
//! case, digit by digit, punctuation by punctuation; whitespace kept, so
//! lines stay lines; base64 of text stays base64 of text). Text where the
//! real render differs from the shadow renders is text the secret decided,
//! whatever the template did to it, and the whole differing span of the
//! real render is masked.
//!
//! What cannot be aligned is refused rather than guessed: shadows with
//! another number of lines (a secret decided an `if` or a loop), a shadow
//! that fails where the real render succeeded (a construct that accepts
//! only some values), and a derived span too short to mask.

use base64::Engine as _;

use crate::secrets::MIN_SECRET_LEN;

/// Why the text a secret decided cannot be told from the rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Untraceable {
    /// A shadow render has another number of lines than the real one.
    Lines { real: usize, shadow: usize },
    /// Text on `line` (1-based) derives from a secret but is shorter than
    /// [`MIN_SECRET_LEN`] characters.
    TooShort { line: usize, chars: usize },
}

/// Longest differing middle of a line (after the common prefix and suffix)
/// that is diffed character by character; a longer one is taken whole,
/// which masks more than needed but never less. Render reads no clock, so
/// the diff is bounded by its input instead of a deadline.
const MAX_DIFFED_CHARS: usize = 2048;

/// Equal text between two changed runs that is shorter than this and holds
/// no quote (or is only whitespace) joins them into one span: a transformed
/// secret can agree with a stand-in's form here and there (`%2F` and `%21`
/// share `%2`, `\u0026` and `\u003c` share `\u00`), and one derived value
/// must be masked as one. Each run is masked on its own as well.
const MAX_GAP: usize = 8;

/// The spans of `real` that differ from the `shadows`: on each line, the
/// runs of characters that differ from any shadow, each widened over
/// adjacent letters and digits and an escape's lead (a shadow may agree
/// with the real value on an edge by chance, or on `\u00`); runs close
/// together are also joined into one span.
pub(super) fn derived(real: &str, shadows: &[String]) -> Result<Vec<String>, Untraceable> {
    let real_lines: Vec<&str> = real.split('\n').collect();
    let shadow_lines: Vec<Vec<&str>> = shadows.iter().map(|s| s.split('\n').collect()).collect();
    if let Some(s) = shadow_lines.iter().find(|s| s.len() != real_lines.len()) {
        return Err(Untraceable::Lines {
            real: real_lines.len(),
            shadow: s.len(),
        });
    }
    let mut spans = Vec::new();
    for (i, line) in real_lines.iter().enumerate() {
        if shadow_lines.iter().all(|s| s[i] == *line) {
            continue;
        }
        let chars: Vec<char> = line.chars().collect();
        let mut runs: Vec<(usize, usize)> = Vec::new();
        for shadow in &shadow_lines {
            let other: Vec<char> = shadow[i].chars().collect();
            runs.extend(changed(&chars, &other));
        }
        let runs: Vec<(usize, usize)> = runs.into_iter().map(|r| widen(&chars, r)).collect();
        for group in join(&chars, runs) {
            let (start, end) = group.span;
            if end - start < MIN_SECRET_LEN {
                return Err(Untraceable::TooShort {
                    line: i + 1,
                    chars: end - start,
                });
            }
            spans.push(chars[start..end].iter().collect());
            if group.runs.len() > 1 {
                spans.extend(
                    group
                        .runs
                        .iter()
                        .filter(|(s, e)| e - s >= MIN_SECRET_LEN)
                        .map(|&(s, e)| chars[s..e].iter().collect::<String>()),
                );
            }
        }
    }
    spans.sort();
    spans.dedup();
    Ok(spans)
}

/// `run` widened over adjacent word characters — letters, digits and the
/// punctuation that joins a word rather than ending it (`-._~+!*^|`) —
/// on the left also over what leads an escape (`\\`, `%`, `&`, `#`) and
/// on the right over an entity's `;`. A shadow can agree with the real
/// text on an edge by chance, or by construction (`\u00`, `%2`, the
/// largest character of a sorted value); the edge goes with the span.
/// Quotes, spaces and separators (`:,=@/` and brackets) stop it.
fn widen(chars: &[char], (mut start, mut end): (usize, usize)) -> (usize, usize) {
    let word = |c: char| c.is_ascii_alphanumeric() || "-._~+!*^|".contains(c);
    while start > 0 && (word(chars[start - 1]) || "\\%&#".contains(chars[start - 1])) {
        start -= 1;
    }
    while end < chars.len() && (word(chars[end]) || chars[end] == ';') {
        end += 1;
    }
    (start, end)
}

/// The runs of `real` (character ranges) that `other` does not have.
///
/// Lines of one length are compared position by position: a stand-in
/// replaces a secret character for character, so that is where they differ,
/// and an alignment could pair a secret's `/` with a `/` the stand-in has
/// elsewhere, leaving it unmasked. Other lines are diffed.
fn changed(real: &[char], other: &[char]) -> Vec<(usize, usize)> {
    if real.len() == other.len() {
        let mut runs: Vec<(usize, usize)> = Vec::new();
        for (i, (a, b)) in real.iter().zip(other).enumerate() {
            if a == b {
                continue;
            }
            match runs.last_mut() {
                Some(last) if last.1 == i => last.1 = i + 1,
                _ => runs.push((i, i + 1)),
            }
        }
        return runs;
    }
    let prefix = real.iter().zip(other).take_while(|(a, b)| a == b).count();
    let room = real.len().min(other.len()) - prefix;
    let suffix = real
        .iter()
        .rev()
        .zip(other.iter().rev())
        .take(room)
        .take_while(|(a, b)| a == b)
        .count();
    let (end, other_end) = (real.len() - suffix, other.len() - suffix);
    if prefix == end {
        // The real line only lacks text the other has: none of it differs.
        return Vec::new();
    }
    if end - prefix > MAX_DIFFED_CHARS || other_end - prefix > MAX_DIFFED_CHARS {
        return vec![(prefix, end)];
    }
    similar::capture_diff_slices(
        similar::Algorithm::Myers,
        &real[prefix..end],
        &other[prefix..other_end],
    )
    .iter()
    .filter(|op| {
        matches!(
            op.tag(),
            similar::DiffTag::Delete | similar::DiffTag::Replace
        )
    })
    .map(|op| {
        let r = op.old_range();
        (prefix + r.start, prefix + r.end)
    })
    .collect()
}

/// Runs joined into one span, with the runs it holds.
struct Group {
    span: (usize, usize),
    runs: Vec<(usize, usize)>,
}

/// Runs sorted and grouped: overlapping ones, and ones a short gap without
/// quotes (or a blank one) apart.
fn join(chars: &[char], mut runs: Vec<(usize, usize)>) -> Vec<Group> {
    runs.sort_unstable();
    let mut out: Vec<Group> = Vec::new();
    for (start, end) in runs {
        if let Some(last) = out.last_mut() {
            let gap = &chars[last.span.1.min(start)..start];
            let blank = gap.iter().all(|c| c.is_whitespace());
            let short = gap.len() < MAX_GAP && !gap.iter().any(|c| matches!(c, '"' | '\'' | ','));
            if start <= last.span.1 || short || blank {
                last.span.1 = last.span.1.max(end);
                last.runs.push((start, end));
                continue;
            }
        }
        out.push(Group {
            span: (start, end),
            runs: vec![(start, end)],
        });
    }
    out
}

/// The forms a span takes once the file it is in is read: inside a JSON or
/// YAML double-quoted string (escapes undone) and inside a YAML
/// single-quoted one (`''` is `'`).
pub(super) fn read_forms(span: &str) -> Vec<String> {
    let mut forms = vec![span.to_owned()];
    if span.contains('\\')
        && let Ok(s) = serde_json::from_str::<String>(&format!("\"{span}\""))
    {
        forms.push(s);
    }
    if span.contains("''") {
        forms.push(span.replace("''", "'"));
    }
    forms
}

/// A stand-in for `value`, the same length, every character another of its
/// kind; `seed` picks which. A value that is base64 of text gets base64 of
/// a stand-in text, so `b64decode` works on it as on the real one.
pub(super) fn stand_in(value: &str, seed: u64) -> String {
    let mut rng = Rng::new(seed);
    let b64 = base64::engine::general_purpose::STANDARD;
    if value.len() >= 4
        && value.len().is_multiple_of(4)
        && let Ok(bytes) = b64.decode(value)
        && let Ok(text) = String::from_utf8(bytes)
    {
        let other = b64.encode(replace_chars(&text, &mut rng));
        if other.len() == value.len() {
            return other;
        }
    }
    replace_chars(value, &mut rng)
}

const PUNCTUATION: &[u8] = b"!#$%&()*+,-./:;<=>?@[]^_{|}~";

fn replace_chars(value: &str, rng: &mut Rng) -> String {
    let pick = |rng: &mut Rng, set: &[u8], not: char| loop {
        let c = char::from(set[rng.below(set.len())]);
        if c != not {
            return c;
        }
    };
    let lower: Vec<u8> = (b'a'..=b'z').collect();
    let upper: Vec<u8> = (b'A'..=b'Z').collect();
    let digits: Vec<u8> = (b'0'..=b'9').collect();
    value
        .chars()
        .map(|c| match c {
            'a'..='z' => pick(rng, &lower, c),
            'A'..='Z' => pick(rng, &upper, c),
            '0'..='9' => pick(rng, &digits, c),
            c if c.is_whitespace() => c,
            c if c.is_ascii() => pick(rng, PUNCTUATION, c),
            // Another letter of Latin-1 (two bytes in UTF-8, as most are).
            c => loop {
                let other = char::from_u32(0xC0 + rng.below(0x3F) as u32).unwrap_or('é');
                if other != c && other != '×' {
                    break other;
                }
            },
        })
        .collect()
}

/// A small generator (xorshift64*): stand-ins need to differ from the
/// value and from each other, not to be unpredictable.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stand_ins_keep_length_kinds_and_whitespace_and_differ_everywhere() {
        let value = "Ab9/~&<'\" x\ny-Zé";
        for seed in [1, 2, 99] {
            let s = stand_in(value, seed);
            assert_eq!(s.chars().count(), value.chars().count(), "{s}");
            for (a, b) in value.chars().zip(s.chars()) {
                if a.is_whitespace() {
                    assert_eq!(a, b);
                } else {
                    assert_ne!(a, b, "{s}");
                    assert_eq!(a.is_ascii_lowercase(), b.is_ascii_lowercase(), "{s}");
                    assert_eq!(a.is_ascii_digit(), b.is_ascii_digit(), "{s}");
                }
            }
        }
        assert_ne!(stand_in(value, 1), stand_in(value, 2));
    }

    #[test]
    fn a_stand_in_holding_the_secrets_character_elsewhere_does_not_unmask_it() {
        // An alignment pairs the real `/` with the shadow's `/` one place
        // on; position by position every character differs.
        let spans = derived(
            "slice: /9~q&<\n",
            &["slice: #/3!kl\n".to_owned(), "slice: ,x/4@m\n".to_owned()],
        )
        .unwrap();
        assert_eq!(spans, ["/9~q&<"]);
    }

    #[test]
    fn a_base64_text_gets_a_base64_text_stand_in() {
        let b64 = base64::engine::general_purpose::STANDARD;
        let value = b64.encode("user:pass/word");
        let s = stand_in(&value, 7);
        assert_eq!(s.len(), value.len());
        let text = String::from_utf8(b64.decode(&s).unwrap()).unwrap();
        assert_eq!(text.len(), "user:pass/word".len());
        assert_ne!(text, "user:pass/word");
    }

    #[test]
    fn the_differing_span_of_each_line_is_derived() {
        let real = "a: 1\nurl: postgres://app:p%2Fw~rd@db/app\nb: 2\n";
        let s1 = "a: 1\nurl: postgres://app:xqzkv@db/app\nb: 2\n".to_owned();
        let s2 = "a: 1\nurl: postgres://app:mm%21oo%3Ct@db/app\nb: 2\n".to_owned();
        assert_eq!(derived(real, &[s1, s2]).unwrap(), ["p%2Fw~rd"]);
    }

    #[test]
    fn an_edge_a_shadow_shares_by_chance_is_still_covered() {
        // Both shadows end in `d`, as the real value does.
        let real = "k: secrEd\n";
        let shadows = ["k: xyzwQd\n".to_owned(), "k: abcdLd\n".to_owned()];
        assert_eq!(derived(real, &shadows).unwrap(), ["secrEd"]);
    }

    #[test]
    fn two_secrets_on_one_line_are_two_spans_and_pieces_of_one_are_one() {
        let real = r#"{"a": "Secret-One", "b": "p%2F%2Fw"}"#;
        let shadows = [
            r#"{"a": "Xqzkvu-Abc", "b": "k%21%23z"}"#.to_owned(),
            r#"{"a": "Mmoope-Qrs", "b": "y%40%3Dq"}"#.to_owned(),
        ];
        let spans = derived(real, &shadows).unwrap();
        for whole in ["Secret-One", "p%2F%2Fw"] {
            assert!(spans.iter().any(|s| s == whole), "{spans:?}");
        }
        // Pieces too, each inside one value: never text across the two.
        assert!(
            spans
                .iter()
                .all(|s| "Secret-One".contains(s.as_str()) || "p%2F%2Fw".contains(s.as_str())),
            "{spans:?}"
        );
    }

    #[test]
    fn other_line_counts_and_short_spans_are_untraceable() {
        assert_eq!(
            derived("a\nb\n", &["a\n".to_owned()]),
            Err(Untraceable::Lines { real: 3, shadow: 2 })
        );
        assert_eq!(
            derived("pin: ab\n", &["pin: xy\n".to_owned()]),
            Err(Untraceable::TooShort { line: 1, chars: 2 })
        );
    }

    #[test]
    fn read_forms_undo_json_and_single_quote_escapes() {
        assert_eq!(read_forms(r#"a\"b\u0026c"#), [r#"a\"b\u0026c"#, "a\"b&c"]);
        assert_eq!(read_forms("it''s"), ["it''s", "it's"]);
    }
}
