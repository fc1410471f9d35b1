//! Buffers whose first element starts a cache line.

use std::ops::{Deref, DerefMut};

/// Bytes in a cache line, and the width of an AVX-512 register.
const LINE: usize = 64;

/// A fixed-length buffer whose first element sits on a 64-byte boundary, for the packed
/// panels: their kernels load whole 64-byte rows at multiples of 64 bytes from the start, so
/// from an aligned start no load straddles two cache lines (the allocator only promises 16
/// bytes, at which three loads in four would).
#[derive(Debug)]
pub(crate) struct CacheAligned<T> {
    /// `len` elements from `start`, after the slack that aligned them.
    buf: Vec<T>,
    start: usize,
    len: usize,
}

impl<T: Copy> CacheAligned<T> {
    /// Elements of slack a buffer needs beyond its length to align its start (a zero-sized
    /// `T` fails to compile here).
    pub(crate) const SLACK: usize = LINE / size_of::<T>();

    /// `len` copies of `value`.
    pub(crate) fn filled(len: usize, value: T) -> Self {
        Self::within(Vec::with_capacity(len + Self::SLACK), len, value)
    }

    /// `len` elements placed in `buf`'s allocation, which should have room for
    /// `len + SLACK`: the elements `buf` held keep their places (a reused allocation keeps its
    /// address, hence its aligned start), `value` beyond. Without that room, or where
    /// `align_offset` declines (`usize::MAX`), the buffer is only unaligned.
    ///
    /// Elements `buf` held beyond the `len` in use stay initialised in the allocation: an
    /// allocation reused for a shorter buffer and then a longer one is not written again up
    /// to its old length (BPTT hands its megabyte projection buffer to a short one in turn).
    pub(crate) fn within(mut buf: Vec<T>, len: usize, value: T) -> Self {
        let start = buf.as_ptr().align_offset(LINE).min(Self::SLACK);
        if buf.len() < start + len {
            buf.resize(start + len, value);
        }
        Self { buf, start, len }
    }

    /// No elements, no allocation.
    pub(crate) const fn empty() -> Self {
        Self {
            buf: Vec::new(),
            start: 0,
            len: 0,
        }
    }

    /// The allocation, for reuse by [`CacheAligned::within`].
    pub(crate) fn into_vec(self) -> Vec<T> {
        self.buf
    }
}

impl<T: Copy + Default> Clone for CacheAligned<T> {
    /// A fresh allocation, aligned on its own: a cloned `Vec` may start anywhere.
    fn clone(&self) -> Self {
        let mut out = Self::filled(self.len, T::default());
        out.copy_from_slice(self);
        out
    }
}

impl<T> Deref for CacheAligned<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.buf[self.start..self.start + self.len]
    }
}

impl<T> DerefMut for CacheAligned<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.buf[self.start..self.start + self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_on_a_line_and_clones_keep_it() {
        for len in [0, 1, 15, 16, 1000] {
            let mut a = CacheAligned::filled(len, 0.0f32);
            assert_eq!(a.len(), len);
            assert_eq!(a.as_ptr() as usize % LINE, 0);
            a.iter_mut().enumerate().for_each(|(i, v)| *v = i as f32);
            let b = a.clone();
            assert_eq!(b.as_ptr() as usize % LINE, 0);
            assert_eq!(&*a, &*b);
            let c = CacheAligned::filled(len, 7u16);
            assert_eq!(c.as_ptr() as usize % LINE, 0);
            assert!(c.iter().all(|&v| v == 7));
        }
    }
}
