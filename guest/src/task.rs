//! The component model's task built-ins (`waitable-set.*`, `subtask.*`),
//! imported from `$root` as wit-component names them, and the table of
//! subtasks this instance has in flight.
//!
//! Python starts host calls with [`start`] (an async-lowered import returns a
//! subtask at once) and waits for the next one to finish with [`wait`]. All
//! subtasks join one waitable set per instance, created on first use (never
//! before a snapshot: handles are per instance).

use std::cell::RefCell;
use std::collections::HashMap;

use crate::abi::{self, AsyncCall, Val};

#[link(wasm_import_module = "$root")]
unsafe extern "C" {
    #[link_name = "[waitable-set-new]"]
    fn waitable_set_new() -> u32;
    #[link_name = "[waitable-set-wait]"]
    fn waitable_set_wait(set: u32, event: *mut [u32; 2]) -> u32;
    #[link_name = "[waitable-set-poll]"]
    fn waitable_set_poll(set: u32, event: *mut [u32; 2]) -> u32;
    #[link_name = "[waitable-join]"]
    fn waitable_join(waitable: u32, set: u32);
    #[link_name = "[subtask-drop]"]
    fn subtask_drop(subtask: u32);
    #[link_name = "[subtask-cancel]"]
    fn subtask_cancel(subtask: u32) -> u32;
}

/// Event code of a subtask's progress (canonical ABI `EventCode.SUBTASK`).
const EVENT_SUBTASK: u32 = 1;
/// Subtask state: it returned (canonical ABI `Subtask.State.RETURNED`).
const RETURNED: u32 = 2;
/// Subtask states at or past which it is over (returned or cancelled).
fn is_over(state: u32) -> bool {
    state >= RETURNED
}

/// What a finished subtask produced.
pub enum Finished {
    /// The subtask of `handle` returned `value` (`None` for no result).
    Returned(u32, Option<Val>),
    /// Nothing finished (a poll found no event).
    Nothing,
}

struct Tasks {
    /// The instance's waitable set (0: not created yet).
    set: u32,
    /// Subtasks in flight, by handle.
    pending: HashMap<u32, AsyncCall>,
}

thread_local! {
    static TASKS: RefCell<Tasks> = RefCell::new(Tasks { set: 0, pending: HashMap::new() });
}

fn set() -> u32 {
    TASKS.with_borrow_mut(|tasks| {
        if tasks.set == 0 {
            // SAFETY: a built-in without arguments; returns a fresh handle.
            tasks.set = unsafe { waitable_set_new() };
        }
        tasks.set
    })
}

/// Starts the async-lowered import `name` with `args`; returns its value at
/// once if it already returned, else the handle of its subtask.
pub fn start(name: &str, args: Vec<Val>) -> Result<Option<Val>, u32> {
    let (status, call) = abi::call_import_async(name, args);
    let (state, handle) = (status & 0xf, status >> 4);
    if state == RETURNED {
        return Ok(call.finish());
    }
    let set = set();
    // SAFETY: `handle` is the subtask the import just created; joining it to
    // our set is how its completion reaches `wait`.
    unsafe { waitable_join(handle, set) };
    TASKS.with_borrow_mut(|tasks| tasks.pending.insert(handle, call));
    Err(handle)
}

/// Waits (blocking the instance, which lets the host run its side of every
/// subtask) until a subtask finishes, or only polls if `block` is false.
pub fn wait(block: bool) -> Finished {
    let set = set();
    loop {
        let mut event = [0u32; 2];
        // SAFETY: `set` is our live waitable set and `event` has room for the
        // two words (waitable, payload) the built-in writes.
        let code = unsafe {
            if block {
                waitable_set_wait(set, &mut event)
            } else {
                waitable_set_poll(set, &mut event)
            }
        };
        let [handle, state] = event;
        if code != EVENT_SUBTASK {
            if block {
                continue;
            }
            return Finished::Nothing;
        }
        if !is_over(state) {
            continue;
        }
        let call = TASKS.with_borrow_mut(|tasks| tasks.pending.remove(&handle));
        // SAFETY: the subtask is over, so it may be dropped (which also takes
        // it out of the set); we drop each handle once, here or in `cancel`.
        unsafe { subtask_drop(handle) };
        let value = call.and_then(|call| (state == RETURNED).then(|| call.finish()).flatten());
        return Finished::Returned(handle, value);
    }
}

/// Cancels the subtask `handle` (the host drops its side) and forgets it.
pub fn cancel(handle: u32) {
    let Some(call) = TASKS.with_borrow_mut(|tasks| tasks.pending.remove(&handle)) else {
        return;
    };
    // SAFETY: `handle` is a subtask of ours that has not been dropped; a
    // synchronous cancel needs it out of every set first, and blocks until
    // the host side is gone, after which the handle may be dropped.
    let state = unsafe {
        waitable_join(handle, 0);
        let state = subtask_cancel(handle);
        subtask_drop(handle);
        state
    };
    if state == RETURNED {
        // It returned before the cancel: lift the result so what the host
        // allocated for it is freed with the context.
        drop(call.finish());
    } else {
        drop(call);
    }
}

/// Cancels every subtask in flight (at the end of a call: nothing the guest
/// started may outlive it).
pub fn cancel_all() {
    let handles: Vec<u32> = TASKS.with_borrow(|tasks| tasks.pending.keys().copied().collect());
    for handle in handles {
        cancel(handle);
    }
}

/// Forgets the waitable set before a snapshot (its handle is this
/// instance's alone); the instances made from the snapshot create their own.
pub fn reset_for_snapshot() {
    cancel_all();
    TASKS.with_borrow_mut(|tasks| tasks.set = 0);
}
