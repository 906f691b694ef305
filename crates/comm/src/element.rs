//! The element types a communicator moves and sums (f32, bf16, u32), and the borrowed host buffers that carry
//! one of them through the object-safe [`Communicator`](crate::Communicator) trait.
//!
//! Invariant: [`Element`] is sealed — every implementor is plain old data with a fixed wire size and a sum that
//! is a pure function of its two operands, so the same inputs summed in the same order give the same bits on
//! every rank. bf16 sums round once per addition (computed in f32, rounded to nearest even), as NCCL's do.
//! Cost: wrapping a slice in [`HostSlice`]/[`HostSliceMut`] is free; sums are one pass over the data.

use std::fmt::Debug;

use half::bf16;

/// The element type of a buffer, as carried on the wire and checked on receipt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    Bf16,
    U32,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Self::F32 | Self::U32 => 4,
            Self::Bf16 => 2,
        }
    }

    /// The code sent in frame headers.
    pub(crate) fn code(self) -> u8 {
        match self {
            Self::F32 => 1,
            Self::Bf16 => 2,
            Self::U32 => 3,
        }
    }

    pub(crate) fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Self::F32),
            2 => Some(Self::Bf16),
            3 => Some(Self::U32),
            _ => None,
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
            Self::U32 => "u32",
        })
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for half::bf16 {}
    impl Sealed for u32 {}
}

/// A type a communicator can move and sum. Sealed: f32, bf16 and u32 (counts, token ids; sums wrap).
pub trait Element: bytemuck::Pod + Send + Sync + Debug + PartialEq + sealed::Sealed {
    const DTYPE: DType;

    /// `partial + own`, the one addition every reduction is built from.
    fn sum(partial: Self, own: Self) -> Self;

    fn wrap(slice: &[Self]) -> HostSlice<'_>;
    fn wrap_mut(slice: &mut [Self]) -> HostSliceMut<'_>;
}

impl Element for f32 {
    const DTYPE: DType = DType::F32;
    fn sum(partial: Self, own: Self) -> Self {
        partial + own
    }
    fn wrap(slice: &[Self]) -> HostSlice<'_> {
        HostSlice::F32(slice)
    }
    fn wrap_mut(slice: &mut [Self]) -> HostSliceMut<'_> {
        HostSliceMut::F32(slice)
    }
}

impl Element for bf16 {
    const DTYPE: DType = DType::Bf16;
    fn sum(partial: Self, own: Self) -> Self {
        bf16::from_f32(partial.to_f32() + own.to_f32())
    }
    fn wrap(slice: &[Self]) -> HostSlice<'_> {
        HostSlice::Bf16(slice)
    }
    fn wrap_mut(slice: &mut [Self]) -> HostSliceMut<'_> {
        HostSliceMut::Bf16(slice)
    }
}

impl Element for u32 {
    const DTYPE: DType = DType::U32;
    fn sum(partial: Self, own: Self) -> Self {
        partial.wrapping_add(own)
    }
    fn wrap(slice: &[Self]) -> HostSlice<'_> {
        HostSlice::U32(slice)
    }
    fn wrap_mut(slice: &mut [Self]) -> HostSliceMut<'_> {
        HostSliceMut::U32(slice)
    }
}

/// `acc[i] = acc[i] + own[i]` (the accumulated partial on the left, always).
pub(crate) fn accumulate<T: Element>(acc: &mut [T], own: &[T]) {
    for (a, &b) in acc.iter_mut().zip(own) {
        *a = T::sum(*a, b);
    }
}

/// A borrowed host buffer of one element type.
#[derive(Debug, Clone, Copy)]
pub enum HostSlice<'a> {
    F32(&'a [f32]),
    Bf16(&'a [bf16]),
    U32(&'a [u32]),
}

/// A mutably borrowed host buffer of one element type.
#[derive(Debug)]
pub enum HostSliceMut<'a> {
    F32(&'a mut [f32]),
    Bf16(&'a mut [bf16]),
    U32(&'a mut [u32]),
}

impl HostSlice<'_> {
    pub fn dtype(&self) -> DType {
        match self {
            Self::F32(_) => DType::F32,
            Self::Bf16(_) => DType::Bf16,
            Self::U32(_) => DType::U32,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Self::F32(s) => s.len(),
            Self::Bf16(s) => s.len(),
            Self::U32(s) => s.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl HostSliceMut<'_> {
    pub fn dtype(&self) -> DType {
        match self {
            Self::F32(_) => DType::F32,
            Self::Bf16(_) => DType::Bf16,
            Self::U32(_) => DType::U32,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Self::F32(s) => s.len(),
            Self::Bf16(s) => s.len(),
            Self::U32(s) => s.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<'a> From<&'a [f32]> for HostSlice<'a> {
    fn from(s: &'a [f32]) -> Self {
        Self::F32(s)
    }
}
impl<'a> From<&'a [bf16]> for HostSlice<'a> {
    fn from(s: &'a [bf16]) -> Self {
        Self::Bf16(s)
    }
}
impl<'a> From<&'a [u32]> for HostSlice<'a> {
    fn from(s: &'a [u32]) -> Self {
        Self::U32(s)
    }
}
impl<'a> From<&'a mut [f32]> for HostSliceMut<'a> {
    fn from(s: &'a mut [f32]) -> Self {
        Self::F32(s)
    }
}
impl<'a> From<&'a mut [bf16]> for HostSliceMut<'a> {
    fn from(s: &'a mut [bf16]) -> Self {
        Self::Bf16(s)
    }
}
impl<'a> From<&'a mut [u32]> for HostSliceMut<'a> {
    fn from(s: &'a mut [u32]) -> Self {
        Self::U32(s)
    }
}

/// Matches one immutable and one mutable buffer of the same element type, or fails naming both types.
macro_rules! same_dtype {
    ($self:ident, $op:expr, $a:expr, $b:expr, |$x:ident, $y:ident| $body:expr) => {
        match ($a, $b) {
            ($crate::HostSlice::F32($x), $crate::HostSliceMut::F32($y)) => $body,
            ($crate::HostSlice::Bf16($x), $crate::HostSliceMut::Bf16($y)) => $body,
            ($crate::HostSlice::U32($x), $crate::HostSliceMut::U32($y)) => $body,
            (a, b) => Err($self.invalid($op, format!("input is {} but output is {}", a.dtype(), b.dtype()))),
        }
    };
}
pub(crate) use same_dtype;
