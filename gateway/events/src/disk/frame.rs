//! Record framing shared by the journal segments and the outbox log:
//! `len: u32 LE | crc32(payload): u32 LE | payload (len bytes)`.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::path::Path;

/// Largest record accepted when reading (a larger length is a torn or corrupt header).
pub(crate) const MAX_RECORD: usize = 64 * 1024 * 1024;
const HEADER: usize = 8;

/// CRC-32 (IEEE, as zlib).
pub(crate) fn crc32(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

pub(crate) fn frame(payload: &[u8], out: &mut Vec<u8>) {
    let len = u32::try_from(payload.len()).expect("record larger than 4 GiB");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc32(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// The records of a file, up to the first torn or corrupt one.
pub(crate) struct Scan {
    pub records: Vec<Vec<u8>>,
    /// Bytes of whole, valid records.
    pub valid_len: u64,
    /// Bytes after them (a torn tail).
    pub torn_bytes: u64,
}

pub(crate) fn scan(path: &Path) -> io::Result<Scan> {
    let mut data = Vec::new();
    File::open(path)?.read_to_end(&mut data)?;
    let mut records = Vec::new();
    let mut pos = 0usize;
    while data.len() - pos >= HEADER {
        let len = u32::from_le_bytes(data[pos..pos + 4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(data[pos + 4..pos + 8].try_into().expect("4 bytes"));
        if len > MAX_RECORD || data.len() - pos - HEADER < len {
            break;
        }
        let payload = &data[pos + HEADER..pos + HEADER + len];
        if crc32(payload) != crc {
            break;
        }
        records.push(payload.to_vec());
        pos += HEADER + len;
    }
    Ok(Scan {
        records,
        valid_len: pos as u64,
        torn_bytes: (data.len() - pos) as u64,
    })
}

/// Cuts a file to `len` bytes and makes that durable.
pub(crate) fn truncate(path: &Path, len: u64) -> io::Result<()> {
    let file = OpenOptions::new().write(true).open(path)?;
    file.set_len(len)?;
    file.sync_all()
}

/// Makes a directory's entries (created, renamed, removed files) durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn crc_matches_zlib() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn scan_stops_at_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut buf = Vec::new();
        frame(b"one", &mut buf);
        frame(b"two", &mut buf);
        let whole = buf.len();
        frame(b"three", &mut buf);
        buf.truncate(buf.len() - 2);
        File::create(&path).unwrap().write_all(&buf).unwrap();
        let s = scan(&path).unwrap();
        assert_eq!(s.records, vec![b"one".to_vec(), b"two".to_vec()]);
        assert_eq!(s.valid_len, whole as u64);
        assert_eq!(s.torn_bytes, (buf.len() - whole) as u64);

        // A flipped byte in the last record also ends the scan there.
        let mut bad = Vec::new();
        frame(b"one", &mut bad);
        frame(b"two", &mut bad);
        let n = bad.len();
        bad[n - 1] ^= 1;
        File::create(&path).unwrap().write_all(&bad).unwrap();
        assert_eq!(scan(&path).unwrap().records.len(), 1);
    }
}
