//! The module's interface to `www/bkv.js` (wasm only): plain exported functions over linear
//! memory, and two imports from the page (`bkv.random`, `bkv.now_ms`). Bytes cross as
//! (pointer, length) pairs; what Rust returns waits in one buffer (`bkv_ret_ptr`) until the
//! next call that returns bytes.
#![allow(unsafe_code)]
// Exported by symbol name to the page, not by path to Rust.
#![allow(unreachable_pub)]

use crate::host::{self, Reply};
use crate::tasks;
use std::cell::RefCell;
use zeroize::{Zeroize, Zeroizing};

#[link(wasm_import_module = "bkv")]
extern "C" {
    /// `crypto.getRandomValues` over `len` bytes at `ptr`.
    fn random(ptr: *mut u8, len: usize);
    /// `Date.now()`.
    fn now_ms() -> f64;
}

thread_local! {
    static RET: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

fn ret(bytes: Vec<u8>) -> usize {
    let n = bytes.len();
    // The previous answer may have held a new recovery key: zeroed, not just dropped.
    RET.with(|r| std::mem::replace(&mut *r.borrow_mut(), bytes).zeroize());
    n
}

/// Copies `len` bytes at `ptr`, which JavaScript filled after `bkv_alloc(len)`, and frees them.
///
/// # Safety
/// `ptr` must come from `bkv_alloc(len)` and not be used again.
unsafe fn take(ptr: *mut u8, len: usize) -> Zeroizing<Vec<u8>> {
    if ptr.is_null() || len == 0 {
        return Zeroizing::new(Vec::new());
    }
    // SAFETY: allocated by `bkv_alloc` as a Vec of exactly this length and capacity.
    Zeroizing::new(unsafe { Vec::from_raw_parts(ptr, len, len) })
}

fn clock() -> u64 {
    // SAFETY: an import without arguments.
    let ms = unsafe { now_ms() };
    if ms.is_finite() && ms > 0.0 {
        ms as u64
    } else {
        0
    }
}

fn fill(dest: &mut [u8]) {
    // SAFETY: `dest` is valid for writes of its length; the page writes exactly that many.
    unsafe { random(dest.as_mut_ptr(), dest.len()) }
}

fn getrandom02(dest: &mut [u8]) -> Result<(), getrandom02::Error> {
    fill(dest);
    Ok(())
}
getrandom02::register_custom_getrandom!(getrandom02);

/// getrandom 0.3's custom backend (`--cfg getrandom_backend="custom"`, which
/// scripts/build-web.sh sets).
///
/// # Safety
/// `dest` must be valid for writes of `len` bytes.
#[no_mangle]
unsafe extern "Rust" fn __getrandom_v03_custom(
    dest: *mut u8,
    len: usize,
) -> Result<(), getrandom03::Error> {
    // SAFETY: the caller hands a buffer valid for `len` bytes.
    fill(unsafe { std::slice::from_raw_parts_mut(dest, len) });
    Ok(())
}

/// Sets the clock; the page calls it once after instantiating the module.
#[no_mangle]
pub extern "C" fn bkv_init() {
    bkv_client::set_clock(clock);
    bkv_client::set_random(fill);
}

/// Room for `len` bytes the page is about to hand over.
#[no_mangle]
pub extern "C" fn bkv_alloc(len: usize) -> *mut u8 {
    let mut v = vec![0u8; len];
    let p = v.as_mut_ptr();
    std::mem::forget(v);
    p
}

/// Where the last returned bytes are.
#[no_mangle]
pub extern "C" fn bkv_ret_ptr() -> *const u8 {
    RET.with(|r| r.borrow().as_ptr())
}

/// Starts the request (JSON, `len` bytes at `ptr`, handed over); the task id (0: too many).
///
/// # Safety
/// `ptr` must come from `bkv_alloc(len)`.
#[no_mangle]
pub unsafe extern "C" fn bkv_start(ptr: *mut u8, len: usize) -> u32 {
    // SAFETY: the caller's contract.
    let request = Zeroizing::new(String::from_utf8_lossy(&unsafe { take(ptr, len) }).into_owned());
    tasks::start(async move { crate::ops::run(&request).await })
}

/// Drops task `id` (the page gave up on it).
#[no_mangle]
pub extern "C" fn bkv_drop(id: u32) {
    tasks::drop_task(id);
}

/// Runs task `id` until it waits: 0 pending, 1 done, 3 unknown.
#[no_mangle]
pub extern "C" fn bkv_poll(id: u32) -> u32 {
    tasks::poll(id) as u32
}

/// The finished task's result (JSON in the return buffer); its length, 0 if not finished.
#[no_mangle]
pub extern "C" fn bkv_result(id: u32) -> usize {
    match tasks::take(id) {
        Some(v) => ret(v.to_string().into_bytes()),
        None => 0,
    }
}

/// The next host call's JSON in the return buffer (its length; 0: none). Its bytes follow
/// with `bkv_call_body`.
#[no_mangle]
pub extern "C" fn bkv_next_call() -> usize {
    match host::next_call() {
        Some((meta, body)) => {
            PENDING_BODY.with(|b| *b.borrow_mut() = body);
            ret(meta.into_bytes())
        }
        None => 0,
    }
}

thread_local! {
    static PENDING_BODY: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The bytes of the call `bkv_next_call` described, in the return buffer; their length.
#[no_mangle]
pub extern "C" fn bkv_call_body() -> usize {
    ret(PENDING_BODY.with(|b| std::mem::take(&mut *b.borrow_mut())))
}

/// Answers call `id`: `ok` 1 with JSON and bytes, 0 with an error message as the JSON bytes.
/// Returns the task to poll next (0: nobody waits).
///
/// # Safety
/// Both pointers must come from `bkv_alloc` with the lengths given (or be null with 0).
#[no_mangle]
pub unsafe extern "C" fn bkv_answer(
    id: u32,
    ok: u32,
    meta_ptr: *mut u8,
    meta_len: usize,
    body_ptr: *mut u8,
    body_len: usize,
) -> u32 {
    // SAFETY: the caller's contract.
    let (meta, body) = unsafe { (take(meta_ptr, meta_len), take(body_ptr, body_len)) };
    let reply = if ok == 1 {
        match serde_json::from_slice(&meta) {
            Ok(v) => Reply::Done(v, body.to_vec()),
            Err(e) => Reply::Failed(format!("the page's answer: {e}")),
        }
    } else {
        Reply::Failed(String::from_utf8_lossy(&meta).into_owned())
    };
    host::answer(id, reply).unwrap_or(0)
}
