//! Index bounds the verifier can see.
//!
//! Our indexes are already in range (`x % len`, a log2 bucket), but the verifier does not
//! track `%` or function-level reasoning, and LLVM, which does, deletes a plain mask as
//! redundant. A volatile round trip through the stack hides the value from LLVM so the mask
//! survives into the bytecode and proves the bound to the verifier.

/// `index & (size - 1)`, kept in the bytecode. `size` must be a power of two.
#[inline(always)]
pub fn masked(index: usize, size: usize) -> usize {
    let hidden = index;
    // SAFETY: reading a local we own.
    let laundered = unsafe { core::ptr::read_volatile(&hidden) };
    laundered & (size - 1)
}
