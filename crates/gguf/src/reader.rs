//! A bounds-checked little-endian cursor over the bytes of a GGUF file.
//!
//! Invariant: `pos <= bytes.len()`; every read checks the bytes it needs are there first, so a short or corrupt
//! file yields `FormatError::Truncated` (never a panic), and no length read from the file is trusted before it is
//! compared with the bytes left. Each read is O(its size).

use crate::error::FormatError;

pub(crate) struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, pos: 0 }
    }

    /// Current offset from the start of the file.
    pub(crate) fn offset(&self) -> u64 {
        self.pos as u64
    }

    pub(crate) fn remaining(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64
    }

    pub(crate) fn file_size(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// Takes the next `n` bytes.
    pub(crate) fn take(&mut self, n: u64) -> Result<&'a [u8], FormatError> {
        if n > self.remaining() {
            return Err(FormatError::Truncated {
                offset: self.offset(),
                need: n,
                size: self.file_size(),
            });
        }
        // `n <= remaining`, which is a usize, so the cast is exact.
        let start = self.pos;
        self.pos += n as usize;
        Ok(&self.bytes[start..self.pos])
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], FormatError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N as u64)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, FormatError> {
        Ok(self.array::<1>()?[0])
    }

    pub(crate) fn i8(&mut self) -> Result<i8, FormatError> {
        Ok(i8::from_le_bytes(self.array()?))
    }

    pub(crate) fn u16(&mut self) -> Result<u16, FormatError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    pub(crate) fn i16(&mut self) -> Result<i16, FormatError> {
        Ok(i16::from_le_bytes(self.array()?))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, FormatError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    pub(crate) fn i32(&mut self) -> Result<i32, FormatError> {
        Ok(i32::from_le_bytes(self.array()?))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, FormatError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    pub(crate) fn i64(&mut self) -> Result<i64, FormatError> {
        Ok(i64::from_le_bytes(self.array()?))
    }

    pub(crate) fn f32(&mut self) -> Result<f32, FormatError> {
        Ok(f32::from_le_bytes(self.array()?))
    }

    pub(crate) fn f64(&mut self) -> Result<f64, FormatError> {
        Ok(f64::from_le_bytes(self.array()?))
    }

    pub(crate) fn bool(&mut self) -> Result<bool, FormatError> {
        let offset = self.offset();
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            byte => Err(FormatError::InvalidBool { byte, offset }),
        }
    }

    /// A GGUF string: a u64 byte length, then that many bytes of UTF-8.
    pub(crate) fn string(&mut self) -> Result<String, FormatError> {
        let len = self.u64()?;
        let offset = self.offset();
        let bytes = self.take(len)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => Err(FormatError::InvalidUtf8 { offset }),
        }
    }

    /// Reads a count of items at least `min_item_len` bytes each, refusing counts the rest of the file cannot hold,
    /// so the caller may allocate `count` items.
    pub(crate) fn count(&mut self, what: &'static str, min_item_len: u64) -> Result<usize, FormatError> {
        let count = self.u64()?;
        let offset = self.offset();
        let remaining = self.remaining();
        let fits = count.checked_mul(min_item_len).is_some_and(|bytes| bytes <= remaining);
        match (fits, usize::try_from(count)) {
            (true, Ok(count)) => Ok(count),
            _ => Err(FormatError::CountTooLarge {
                what,
                count,
                offset,
                remaining,
            }),
        }
    }
}

#[cfg(test)]
mod tests;
