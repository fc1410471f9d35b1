//! The boundary itself: caller pointers turned into checked slices, the status of a call, the
//! thread-local last-error message, and the guard that keeps panics on the Rust side.
//!
//! Every `unsafe` operation of the C ABI is in this file.

use std::cell::RefCell;
use std::ffi::{CString, c_char};
use std::marker::PhantomData;
use std::panic::{AssertUnwindSafe, catch_unwind};

use super::{FrnnStatus, FrnnTensor, FrnnTensorMut};
use crate::error::Error;

/// A failed call: the status returned to C and the message kept for
/// [`super::frnn_last_error_message`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CallError {
    pub status: FrnnStatus,
    pub message: String,
}

impl CallError {
    pub fn new(status: FrnnStatus, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
    pub fn null(arg: &str) -> Self {
        Self::new(
            FrnnStatus::NullPointer,
            format!("`{arg}` is a null pointer"),
        )
    }
    pub fn bad_value(arg: &str, reason: impl std::fmt::Display) -> Self {
        Self::new(FrnnStatus::BadValue, format!("`{arg}`: {reason}"))
    }
}

impl From<Error> for CallError {
    fn from(e: Error) -> Self {
        let status = match &e {
            Error::Length { .. } | Error::Mismatch { .. } | Error::Zero { .. } => {
                FrnnStatus::BadSize
            }
            Error::Overflow { .. } => FrnnStatus::Overflow,
            Error::Allocation { .. } => FrnnStatus::OutOfMemory,
            _ => FrnnStatus::BadValue,
        };
        Self::new(status, e.to_string())
    }
}

/// The result type of the safe layer behind the C functions.
pub(crate) type CallResult<T> = std::result::Result<T, CallError>;

thread_local! {
    /// The message of the last call on this thread that did not return `FRNN_STATUS_OK`.
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(message: &str) {
    // A message is built by the library and holds no NUL; replace one defensively rather than
    // lose the message.
    let c = CString::new(message.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|slot| *slot.borrow_mut() = c);
}

/// The thread's last-error message; valid until the next failing call on this thread.
pub(crate) fn last_error_ptr() -> *const c_char {
    LAST_ERROR.with(|slot| slot.borrow().as_ptr())
}

/// Runs the body of a C function: records the message of a failure, and turns a panic (a bug:
/// every input is validated before use) into `FRNN_STATUS_INTERNAL` instead of unwinding into C.
pub(crate) fn guard(body: impl FnOnce() -> CallResult<()>) -> FrnnStatus {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => FrnnStatus::Ok,
        Ok(Err(e)) => {
            set_last_error(&e.message);
            e.status
        }
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_string());
            set_last_error(&format!("internal error: {what}"));
            FrnnStatus::Internal
        }
    }
}

/// The byte range a buffer occupies, to detect outputs that overlap another buffer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Span {
    pub arg: &'static str,
    start: usize,
    end: usize,
}

/// Checks a buffer's pointer and length for element type `T`: `None` when it is absent (null
/// pointer and length 0), an error when the pointer is null with a non-zero length, misaligned,
/// or the range does not fit in the address space.
fn check_buffer<T>(arg: &'static str, ptr: usize, len: usize) -> CallResult<Option<Span>> {
    if ptr == 0 {
        return if len == 0 {
            Ok(None)
        } else {
            Err(CallError::new(
                FrnnStatus::NullPointer,
                format!("`{arg}` is a null pointer with length {len}"),
            ))
        };
    }
    if !ptr.is_multiple_of(std::mem::align_of::<T>()) {
        return Err(CallError::bad_value(
            arg,
            format!(
                "pointer {ptr:#x} is not aligned to {} bytes",
                std::mem::align_of::<T>()
            ),
        ));
    }
    let bytes = len
        .checked_mul(std::mem::size_of::<T>())
        .filter(|&b| b <= isize::MAX as usize)
        .ok_or_else(|| CallError::from(Error::Overflow { arg }))?;
    let end = ptr
        .checked_add(bytes)
        .ok_or_else(|| CallError::from(Error::Overflow { arg }))?;
    Ok(Some(Span {
        arg,
        start: ptr,
        end,
    }))
}

/// Fails when any output span overlaps any other span (outputs are written while the other
/// buffers are read, and Rust's aliasing rules forbid the overlap). The [`Disjoint`] it returns
/// is what the call's buffers ask for before they become slices, so no slice exists before
/// the check.
pub(crate) fn check_disjoint(outputs: &[Span], inputs: &[Span]) -> CallResult<Disjoint> {
    for (k, o) in outputs.iter().enumerate() {
        let others = outputs.iter().skip(k + 1).chain(inputs);
        for other in others {
            if o.start < other.end && other.start < o.end && o.start < o.end {
                return Err(CallError::bad_value(
                    o.arg,
                    format!("the buffer overlaps `{}`", other.arg),
                ));
            }
        }
    }
    Ok(Disjoint(()))
}

/// Proof that [`check_disjoint`] found a call's outputs apart from each other and from its
/// inputs.
pub(crate) struct Disjoint(());

/// A caller's read-only buffer, checked (pointer, alignment, extent); a slice only once the
/// call's buffers are known apart ([`In::data`]).
pub(crate) struct In<'a, T> {
    ptr: *const T,
    len: usize,
    /// Where it lies; `None` when absent.
    pub span: Option<Span>,
    life: PhantomData<&'a [T]>,
}

/// A caller's writable buffer, checked as [`In`].
pub(crate) struct Out<'a, T> {
    ptr: *mut T,
    len: usize,
    /// Where it lies; `None` when absent.
    pub span: Option<Span>,
    life: PhantomData<&'a mut [T]>,
}

impl<'a, T> In<'a, T> {
    /// The buffer; `None` when absent.
    pub fn data(&self, _apart: &Disjoint) -> Option<&'a [T]> {
        self.span.map(|_| {
            // SAFETY: non-null and aligned, the byte length fits in `isize` and in the address
            // space (`check_buffer`); valid for `'a` and not written by anyone else (the
            // contract of `input`); no output slice of the call overlaps it (`Disjoint`).
            unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
        })
    }
    /// The buffer, or [`FrnnStatus::NullPointer`] when it is required but absent.
    pub fn required(&self, arg: &str, apart: &Disjoint) -> CallResult<&'a [T]> {
        self.data(apart).ok_or_else(|| CallError::null(arg))
    }
}

impl<'a, T> Out<'a, T> {
    /// Elements the buffer holds (0 when absent).
    pub fn len(&self) -> usize {
        self.span.map_or(0, |_| self.len)
    }
    /// The buffer; `None` when absent. Consumes the handle, so that one slice at most exists.
    pub fn into_data(self, _apart: &Disjoint) -> Option<&'a mut [T]> {
        self.span.map(|_| {
            // SAFETY: as in `In::data`; exclusive for `'a` (the contract of `output`), and this
            // is the only slice made of it (`self` is consumed).
            unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
        })
    }
    /// The buffer, or [`FrnnStatus::NullPointer`] when it is required but absent.
    pub fn required(self, arg: &str, apart: &Disjoint) -> CallResult<&'a mut [T]> {
        self.into_data(apart).ok_or_else(|| CallError::null(arg))
    }
}

/// A read-only C buffer, checked; a slice of it comes from [`In::data`].
///
/// # Safety
/// When `t.data` is not null it must point to `t.len` initialised elements of `T` that stay
/// valid and are not written by anyone else for `'a`.
pub(crate) unsafe fn input<'a, T>(arg: &'static str, t: FrnnTensor) -> CallResult<In<'a, T>> {
    Ok(In {
        span: check_buffer::<T>(arg, t.data as usize, t.len)?,
        ptr: t.data.cast(),
        len: t.len,
        life: PhantomData,
    })
}

/// A writable C buffer, checked; a slice of it comes from [`Out::into_data`].
///
/// # Safety
/// When `t.data` is not null it must point to `t.len` initialised elements of `T`, writable,
/// valid for `'a` and not accessed through any other pointer meanwhile (overlap with the
/// call's other buffers is checked by [`check_disjoint`] before any slice is made).
pub(crate) unsafe fn output<'a, T>(arg: &'static str, t: FrnnTensorMut) -> CallResult<Out<'a, T>> {
    Ok(Out {
        span: check_buffer::<T>(arg, t.data as usize, t.len)?,
        ptr: t.data.cast(),
        len: t.len,
        life: PhantomData,
    })
}

/// Writes `value` through an out-pointer.
///
/// # Safety
/// `ptr` must be null (reported as an error) or valid for a write of one `T`.
pub(crate) unsafe fn write_out<T>(arg: &'static str, ptr: *mut T, value: T) -> CallResult<()> {
    if ptr.is_null() {
        return Err(CallError::null(arg));
    }
    if !(ptr as usize).is_multiple_of(std::mem::align_of::<T>()) {
        return Err(CallError::bad_value(arg, "pointer is misaligned"));
    }
    // SAFETY: non-null and aligned (checked); validity for a write is the caller's contract.
    unsafe { ptr.write(value) };
    Ok(())
}

/// Reads a struct through a pointer.
///
/// # Safety
/// `ptr` must be null (reported as an error) or valid for a read of one initialised `T`.
pub(crate) unsafe fn read_in<T: Copy>(arg: &'static str, ptr: *const T) -> CallResult<T> {
    if ptr.is_null() {
        return Err(CallError::null(arg));
    }
    if !(ptr as usize).is_multiple_of(std::mem::align_of::<T>()) {
        return Err(CallError::bad_value(arg, "pointer is misaligned"));
    }
    // SAFETY: non-null and aligned (checked); validity is the caller's contract. `T` is a
    // plain `repr(C)` struct of integers and pointers: every bit pattern is a valid value.
    Ok(unsafe { ptr.read() })
}

/// A descriptor handle as a reference.
///
/// # Safety
/// `ptr` must be null (reported as an error) or a handle returned by
/// [`super::frnn_rnn_desc_create`] and not yet destroyed.
pub(crate) unsafe fn handle<'a, D>(arg: &'static str, ptr: *const D) -> CallResult<&'a D> {
    if ptr.is_null() {
        return Err(CallError::null(arg));
    }
    // SAFETY: a live handle is a `Box<D>` leaked by `frnn_rnn_desc_create` (caller's contract).
    Ok(unsafe { &*ptr })
}
