// SPDX-License-Identifier: MPL-2.0
//! Pure logic shared by the elements: alignment checks, chunk plans, byte patterns.
//! No GStreamer types, so everything here is unit-tested directly.

/// The largest alignment an element accepts: 2 MiB (a huge page).
pub const MAX_ELEMENT_ALIGN: u32 = 2 * 1024 * 1024;

/// Why an `alignment` property value was refused.
pub fn check_alignment(value: u32) -> Result<u32, String> {
    if value == 0 || !value.is_power_of_two() {
        Err(format!("alignment {value} is not a power of two"))
    } else if value > MAX_ELEMENT_ALIGN {
        Err(format!(
            "alignment {value} is larger than {MAX_ELEMENT_ALIGN}"
        ))
    } else {
        Ok(value)
    }
}

/// Splits `size` bytes into consecutive `(offset, len)` pieces of `chunk` bytes, the last one
/// possibly shorter. An empty input gives one empty piece, so it is forwarded, not dropped.
pub fn chunks(size: usize, chunk: usize) -> Chunks {
    let chunk = chunk.max(1);
    Chunks {
        size,
        chunk,
        next: 0,
        count: if size == 0 { 1 } else { size.div_ceil(chunk) },
    }
}

/// The pieces [`chunks`] plans, computed one at a time (a plan can be kept while its pieces
/// are pushed, whatever their number).
#[derive(Debug, Clone)]
pub struct Chunks {
    size: usize,
    chunk: usize,
    next: usize,
    count: usize,
}

impl Iterator for Chunks {
    type Item = (usize, usize);

    fn next(&mut self) -> Option<(usize, usize)> {
        if self.next >= self.count {
            return None;
        }
        let offset = self.next * self.chunk;
        self.next += 1;
        Some((offset, self.chunk.min(self.size - offset)))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.count - self.next;
        (left, Some(left))
    }
}

/// The byte patterns `memsrc` can produce, reproducibly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    /// All zeros.
    Zero,
    /// Each byte is its offset in the stream, modulo 256.
    Counter,
    /// A xorshift64* stream seeded with `seed`, the same for every run.
    Random,
    /// Not written at all.
    None,
}

/// Fills `dest` with `pattern`, for the bytes starting at stream offset `stream_offset`.
/// `rng` carries the random stream's state between calls.
pub fn fill_pattern(dest: &mut [u8], pattern: Pattern, stream_offset: u64, rng: &mut XorShift) {
    match pattern {
        Pattern::None => {}
        Pattern::Zero => dest.fill(0),
        Pattern::Counter => {
            for (i, b) in dest.iter_mut().enumerate() {
                *b = stream_offset.wrapping_add(i as u64) as u8;
            }
        }
        Pattern::Random => {
            let mut words = dest.chunks_exact_mut(8);
            for w in &mut words {
                w.copy_from_slice(&rng.next_u64().to_le_bytes());
            }
            let rest = words.into_remainder();
            if !rest.is_empty() {
                let last = rng.next_u64().to_le_bytes();
                rest.copy_from_slice(&last[..rest.len()]);
            }
        }
    }
}

/// xorshift64*: a small, fast, deterministic generator (not for cryptography).
#[derive(Debug, Clone)]
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> Self {
        // Any seed, including 0, gives a non-zero state.
        XorShift(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x2545_f491_4f6c_dd1d | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alignment_must_be_a_power_of_two_in_range() {
        assert_eq!(check_alignment(1), Ok(1));
        assert_eq!(check_alignment(4096), Ok(4096));
        assert_eq!(check_alignment(MAX_ELEMENT_ALIGN), Ok(MAX_ELEMENT_ALIGN));
        assert!(check_alignment(0).is_err());
        assert!(check_alignment(100).unwrap_err().contains("power of two"));
        assert!(
            check_alignment(MAX_ELEMENT_ALIGN * 2)
                .unwrap_err()
                .contains("larger")
        );
    }

    #[test]
    fn chunks_cover_the_input_exactly() {
        for size in [0usize, 1, 7, 4096, 4097, 10000] {
            for chunk in [1usize, 3, 4096, 5000, 20000] {
                let pieces: Vec<_> = chunks(size, chunk).collect();
                let mut next = 0;
                for (i, &(off, len)) in pieces.iter().enumerate() {
                    assert_eq!(off, next);
                    if i + 1 < pieces.len() {
                        assert_eq!(len, chunk);
                    } else {
                        assert!(len <= chunk);
                    }
                    next += len;
                }
                assert_eq!(next, size, "size {size} chunk {chunk}");
                assert!(pieces.iter().all(|&(_, l)| l > 0) || size == 0);
            }
        }
        assert_eq!(chunks(0, 10).collect::<Vec<_>>(), vec![(0, 0)]);
        assert_eq!(
            chunks(10, 4).collect::<Vec<_>>(),
            vec![(0, 4), (4, 4), (8, 2)]
        );
    }

    #[test]
    fn counter_pattern_follows_the_stream_offset() {
        let mut rng = XorShift::new(0);
        let mut a = [0u8; 300];
        fill_pattern(&mut a, Pattern::Counter, 250, &mut rng);
        assert_eq!(a[0], 250);
        assert_eq!(a[6], 0);
        assert_eq!(a[299], ((250 + 299) % 256) as u8);
    }

    #[test]
    fn random_pattern_is_reproducible_and_seed_dependent() {
        let generate = |seed, sizes: &[usize]| {
            let mut rng = XorShift::new(seed);
            let mut out = Vec::new();
            for &n in sizes {
                let mut b = vec![0u8; n];
                fill_pattern(&mut b, Pattern::Random, 0, &mut rng);
                out.extend(b);
            }
            out
        };
        assert_eq!(generate(1, &[13, 64]), generate(1, &[13, 64]));
        assert_ne!(generate(1, &[64]), generate(2, &[64]));
        let bytes = generate(7, &[4096]);
        assert!(
            bytes.iter().filter(|&&b| b == 0).count() < 64,
            "looks random"
        );
    }
}
