//! A SHA-256 / SHA-512 hasher whose state can be saved and restored: an upload whose
//! chunks land on different gateway nodes keeps one running digest (the state travels
//! with the session, e.g. in Redis), so nothing re-reads the blob at commit.
//!
//! The compression functions are `sha2`'s own (`compress256`/`compress512`, with the
//! CPU's SHA extensions when present); only the buffering and padding live here.

use sha2::digest::generic_array::GenericArray;

use crate::digest::{Algorithm, Digest};

const MAGIC: &[u8; 4] = b"PRH1";
const H256: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];
const H512: [u64; 8] = [
    0x6a09e667f3bcc908,
    0xbb67ae8584caa73b,
    0x3c6ef372fe94f82b,
    0xa54ff53a5f1d36f1,
    0x510e527fade682d1,
    0x9b05688c2b3e6c1f,
    0x1f83d9abfb41bd6b,
    0x5be0cd19137e2179,
];

#[derive(Clone, PartialEq, Eq, Debug)]
enum State {
    Sha256([u32; 8]),
    Sha512([u64; 8]),
}

/// A hasher that can be saved with [`ResumableHasher::to_bytes`] and restored.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ResumableHasher {
    state: State,
    /// Bytes hashed so far.
    len: u128,
    /// The partial block not yet compressed.
    buf: Vec<u8>,
}

/// A saved state that can't be restored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid saved hash state: {0}")]
pub struct StateError(&'static str);

impl ResumableHasher {
    pub fn new(algorithm: Algorithm) -> ResumableHasher {
        ResumableHasher {
            state: match algorithm {
                Algorithm::Sha256 => State::Sha256(H256),
                Algorithm::Sha512 => State::Sha512(H512),
            },
            len: 0,
            buf: Vec::new(),
        }
    }

    pub fn algorithm(&self) -> Algorithm {
        match self.state {
            State::Sha256(_) => Algorithm::Sha256,
            State::Sha512(_) => Algorithm::Sha512,
        }
    }

    /// Bytes hashed so far.
    pub fn len(&self) -> u64 {
        self.len as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn block_len(&self) -> usize {
        match self.state {
            State::Sha256(_) => 64,
            State::Sha512(_) => 128,
        }
    }

    fn compress(&mut self, blocks: &[u8]) {
        match &mut self.state {
            State::Sha256(h) => {
                let b: Vec<GenericArray<u8, _>> = blocks
                    .chunks_exact(64)
                    .map(GenericArray::clone_from_slice)
                    .collect();
                sha2::compress256(h, &b);
            }
            State::Sha512(h) => {
                let b: Vec<GenericArray<u8, _>> = blocks
                    .chunks_exact(128)
                    .map(GenericArray::clone_from_slice)
                    .collect();
                sha2::compress512(h, &b);
            }
        }
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u128;
        let bl = self.block_len();
        if !self.buf.is_empty() {
            let take = (bl - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() < bl {
                return;
            }
            let block = std::mem::take(&mut self.buf);
            self.compress(&block);
        }
        let whole = data.len() / bl * bl;
        // In pieces, so the temporary block list stays small.
        for piece in data[..whole].chunks(bl * 1024) {
            self.compress(piece);
        }
        self.buf.extend_from_slice(&data[whole..]);
    }

    pub fn finish(mut self) -> Digest {
        let bl = self.block_len();
        let len_bytes = if bl == 64 { 8 } else { 16 };
        let bits = self.len.wrapping_mul(8);
        let mut tail = std::mem::take(&mut self.buf);
        tail.push(0x80);
        while tail.len() % bl != bl - len_bytes {
            tail.push(0);
        }
        if bl == 64 {
            tail.extend_from_slice(&(bits as u64).to_be_bytes());
        } else {
            tail.extend_from_slice(&bits.to_be_bytes());
        }
        self.compress(&tail);
        let hex = match &self.state {
            State::Sha256(h) => h.iter().map(|w| format!("{w:08x}")).collect::<String>(),
            State::Sha512(h) => h.iter().map(|w| format!("{w:016x}")).collect::<String>(),
        };
        Digest::from_parts(self.algorithm(), &hex).expect("a digest of the right length")
    }

    /// The state as bytes: `PRH1`, algorithm, length, chaining words, partial block.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        match &self.state {
            State::Sha256(h) => {
                out.push(1);
                out.extend_from_slice(&self.len.to_le_bytes());
                h.iter()
                    .for_each(|w| out.extend_from_slice(&w.to_le_bytes()));
            }
            State::Sha512(h) => {
                out.push(2);
                out.extend_from_slice(&self.len.to_le_bytes());
                h.iter()
                    .for_each(|w| out.extend_from_slice(&w.to_le_bytes()));
            }
        }
        out.extend_from_slice(&self.buf);
        out
    }

    pub fn from_bytes(b: &[u8]) -> Result<ResumableHasher, StateError> {
        let rest = b.strip_prefix(MAGIC).ok_or(StateError("bad magic"))?;
        let (&alg, rest) = rest.split_first().ok_or(StateError("truncated"))?;
        let len_b: [u8; 16] = rest
            .get(..16)
            .ok_or(StateError("truncated"))?
            .try_into()
            .map_err(|_| StateError("truncated"))?;
        let len = u128::from_le_bytes(len_b);
        let rest = &rest[16..];
        let (state, words, bl) = match alg {
            1 => {
                let w = rest.get(..32).ok_or(StateError("truncated"))?;
                let mut h = [0u32; 8];
                for (i, c) in w.chunks_exact(4).enumerate() {
                    h[i] = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
                (State::Sha256(h), 32, 64)
            }
            2 => {
                let w = rest.get(..64).ok_or(StateError("truncated"))?;
                let mut h = [0u64; 8];
                for (i, c) in w.chunks_exact(8).enumerate() {
                    let mut a = [0u8; 8];
                    a.copy_from_slice(c);
                    h[i] = u64::from_le_bytes(a);
                }
                (State::Sha512(h), 64, 128)
            }
            _ => return Err(StateError("unknown algorithm")),
        };
        let buf = rest[words..].to_vec();
        if buf.len() >= bl || (len % bl as u128) as usize != buf.len() {
            return Err(StateError("partial block does not match the length"));
        }
        Ok(ResumableHasher { state, len, buf })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 + i / 7) as u8).collect()
    }

    #[test]
    fn matches_sha2_for_every_split_and_round_trip() {
        for alg in Algorithm::ALL {
            for n in [
                0usize, 1, 55, 56, 63, 64, 65, 111, 112, 127, 128, 129, 1000, 70_000,
            ] {
                let d = data(n);
                let want = Digest::of(alg, &d);
                for split in [0, n / 3, n / 2, n.saturating_sub(1), n] {
                    let mut h = ResumableHasher::new(alg);
                    h.update(&d[..split]);
                    // Save and restore in the middle, as a session moving between nodes.
                    let saved = h.to_bytes();
                    let mut h = ResumableHasher::from_bytes(&saved).unwrap();
                    assert_eq!(h.len(), split as u64);
                    for c in d[split..].chunks(97) {
                        h.update(c);
                    }
                    assert_eq!(h.finish(), want, "{alg:?} n={n} split={split}");
                }
            }
        }
    }

    #[test]
    fn refuses_broken_states() {
        let mut h = ResumableHasher::new(Algorithm::Sha256);
        h.update(b"hello");
        let good = h.to_bytes();
        assert!(ResumableHasher::from_bytes(&good).is_ok());
        assert!(ResumableHasher::from_bytes(&good[..10]).is_err());
        assert!(ResumableHasher::from_bytes(b"nope").is_err());
        let mut extra = good.clone();
        extra.push(0);
        assert!(
            ResumableHasher::from_bytes(&extra).is_err(),
            "buffer longer than the length says"
        );
        let mut alg = good;
        alg[4] = 9;
        assert!(ResumableHasher::from_bytes(&alg).is_err());
    }
}
