//! How deeply a JSON text nests, found before any reader recurses into it.
//!
//! sonic-rs skips the fields nobody reads with a recursive, checked skip that has no depth
//! limit of its own, so a body of a few thousand nested arrays would overflow the stack.
//! [`nests_at_most`] reads every body first, which makes it a cost of every review: it works on
//! 64 bytes at a time with 16-byte vector compares (SSE2 on x86-64, NEON on aarch64, through
//! the `wide` crate, whose types are safe to use), turning each block into one bit per byte for
//! quotes, backslashes and brackets. A byte-at-a-time scan of the typical 7 KB review took
//! longer than the rest of the review together; eight bytes at a time in a `u64` it took 1.8
//! us of a 6.3 us read, and this way 0.8 us (benches/RESULTS.md).

use wide::u8x16;

/// Whether the JSON text nests no deeper than `limit` arrays and objects.
///
/// Brackets inside strings do not count. A backslash makes the next byte plain text, inside a
/// string or not: in valid JSON a backslash only occurs inside strings, and any reader fails
/// at one outside a string before it recurses any further, so what the scan makes of the
/// text after it does not matter. For text that is not valid JSON the answer covers the valid
/// prefix that any JSON reader would get through before failing, which is all that matters for
/// the reader's stack.
pub fn nests_at_most(body: &[u8], limit: usize) -> bool {
    let mut scan = NestingScan::new(limit);
    let mut blocks = body.chunks_exact(BLOCK);
    for block in &mut blocks {
        if !scan.block(&ByteClasses::of(block)) {
            return false;
        }
    }
    scan.bytes(blocks.remainder())
}

/// Bytes per step of the vector scan: one bit per byte in a `u64`.
const BLOCK: usize = 64;

/// Where [`nests_at_most`] is in the text.
struct NestingScan {
    limit: usize,
    depth: usize,
    in_string: bool,
    /// The previous byte was a backslash that was not itself escaped.
    escaped: bool,
}

impl NestingScan {
    fn new(limit: usize) -> Self {
        NestingScan { limit, depth: 0, in_string: false, escaped: false }
    }

    /// One byte at a time; false once the nesting is deeper than the limit. The reference the
    /// block scan is tested against, and the scan of the last, partial block.
    fn bytes(&mut self, bytes: &[u8]) -> bool {
        for &byte in bytes {
            if self.escaped {
                self.escaped = false;
                continue;
            }
            match byte {
                b'\\' => self.escaped = true,
                b'"' => self.in_string = !self.in_string,
                _ if self.in_string => {}
                b'{' | b'[' if !self.open() => return false,
                b'}' | b']' => self.close(),
                _ => {}
            }
        }
        true
    }

    /// One 64-byte block, from its byte classes.
    fn block(&mut self, classes: &ByteClasses) -> bool {
        let escaped = self.escaped_bytes(classes.backslashes);
        // The bit of each byte that is inside a string (or is its opening quote): the running
        // parity of the quotes up to it, flipped when the block starts in a string.
        let mut inside = prefix_parity(classes.quotes & !escaped);
        if self.in_string {
            inside = !inside;
        }
        self.in_string = inside >> 63 == 1;
        let text = inside | escaped;
        let (open, close) = (classes.opening & !text, classes.closing & !text);
        let (opened, closed) = (open.count_ones() as usize, close.count_ones() as usize);
        // Almost every block: however its brackets are ordered, the depth never passes the
        // limit and never drops below zero inside it.
        if self.depth + opened <= self.limit && closed <= self.depth {
            self.depth = self.depth + opened - closed;
            return true;
        }
        let mut brackets = open | close;
        while brackets != 0 {
            let at = brackets.trailing_zeros();
            brackets &= brackets - 1;
            if open >> at & 1 == 1 {
                if !self.open() {
                    return false;
                }
            } else {
                self.close();
            }
        }
        true
    }

    /// One `{` or `[` (counted whatever the answer); false once the nesting is deeper than the
    /// limit.
    fn open(&mut self) -> bool {
        self.depth += 1;
        self.depth <= self.limit
    }

    /// One `}` or `]`; below zero only in text that is not JSON, where it stays at zero.
    fn close(&mut self) {
        self.depth = self.depth.saturating_sub(1);
    }

    /// The bytes of a block that a backslash makes plain text, and whether the block's last
    /// byte is such a backslash (escaping the next block's first byte).
    fn escaped_bytes(&mut self, backslashes: u64) -> u64 {
        let mut escaped = u64::from(self.escaped);
        self.escaped = false;
        // A backslash that is itself escaped escapes nothing. Backslashes are rare in review
        // bodies (escaped quotes in annotations), so they are walked one at a time.
        let mut escaping = backslashes & !escaped;
        while escaping != 0 {
            let at = escaping.trailing_zeros();
            if at == 63 {
                self.escaped = true;
                break;
            }
            escaped |= 2 << at;
            escaping &= !(3 << at);
        }
        escaped
    }
}

/// One bit per byte of a 64-byte block (bit 0 for its first byte) for each kind of byte the
/// nesting scan looks at.
struct ByteClasses {
    quotes: u64,
    backslashes: u64,
    /// `{` and `[`.
    opening: u64,
    /// `}` and `]`.
    closing: u64,
}

impl ByteClasses {
    fn of(block: &[u8]) -> Self {
        let mut classes = ByteClasses { quotes: 0, backslashes: 0, opening: 0, closing: 0 };
        for (lane, bytes) in block.chunks_exact(16).enumerate() {
            let bytes = u8x16::from(<[u8; 16]>::try_from(bytes).unwrap_or_default());
            // `{` and `[` differ only in bit 0x20, as do `}` and `]`, and no other byte
            // becomes one of them with that bit set.
            let folded = bytes | u8x16::splat(0x20);
            let bits = |mask: u8x16| u64::from(mask.to_bitmask()) << (16 * lane);
            classes.quotes |= bits(bytes.simd_eq(u8x16::splat(b'"')));
            classes.backslashes |= bits(bytes.simd_eq(u8x16::splat(b'\\')));
            classes.opening |= bits(folded.simd_eq(u8x16::splat(b'{')));
            classes.closing |= bits(folded.simd_eq(u8x16::splat(b'}')));
        }
        classes
    }
}

/// Bit `i` of the result is the parity of bits `0..=i` of `bits`.
fn prefix_parity(mut bits: u64) -> u64 {
    for shift in [1, 2, 4, 8, 16, 32] {
        bits ^= bits << shift;
    }
    bits
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brackets_in_strings_are_text() {
        assert!(nests_at_most(br#"[[["]]]]]]]]"]]]"#, 3));
        assert!(!nests_at_most(br#"[[["\"[[["[]]]]"#, 3));
        assert!(nests_at_most(br#"["\\", [[]]]"#, 3));
        assert!(!nests_at_most(br#"["\\", [[[]]]]"#, 3));
    }

    #[test]
    fn escapes_and_strings_carry_across_blocks() {
        // A string opened in one block and closed in the next; a backslash as a block's last
        // byte escaping the next block's first.
        for (padding, inner) in [(0, 70), (61, 1), (62, 1), (63, 1), (125, 3)] {
            let brackets = "[".repeat(inner);
            let quoted = format!("[\"{}{}\\\"{brackets}\"]", " ".repeat(padding), brackets);
            assert!(nests_at_most(quoted.as_bytes(), 1), "{padding}");
            let escaped = format!("[\"{}\\\\\"{brackets}", " ".repeat(padding));
            assert!(!nests_at_most(escaped.as_bytes(), inner), "{padding}");
            assert!(nests_at_most(escaped.as_bytes(), inner + 1), "{padding}");
        }
    }

    #[test]
    fn parity_of_each_prefix() {
        assert_eq!(prefix_parity(0), 0);
        assert_eq!(prefix_parity(1), u64::MAX);
        assert_eq!(prefix_parity(0b1001_0000), 0b0111_0000);
        assert_eq!(prefix_parity(1 << 63), 1 << 63);
    }

    proptest::proptest! {
        /// The block scan answers as the byte loop does, on text dense in the bytes that
        /// matter (quotes, backslashes, brackets), valid JSON or not, with limits that both
        /// paths of a block reach.
        #[test]
        fn the_block_scan_agrees_with_the_byte_loop(
            text in proptest::collection::vec(proptest::sample::select(&b"{}[]\\\"a:"[..]), 0..700),
            limit in 0usize..80,
        ) {
            proptest::prop_assert_eq!(nests_at_most(&text, limit), NestingScan::new(limit).bytes(&text));
        }

        /// The same on text with few special bytes, where blocks without a bracket or a
        /// backslash are common.
        #[test]
        fn the_block_scan_agrees_on_sparse_text(
            text in proptest::collection::vec(
                proptest::sample::select(&b"{}[]\\\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaa"[..]), 0..2000),
            limit in 0usize..80,
        ) {
            proptest::prop_assert_eq!(nests_at_most(&text, limit), NestingScan::new(limit).bytes(&text));
        }
    }
}
