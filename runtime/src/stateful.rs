//! Sessions without a live instance: a pickled state restored into a fresh
//! instance of any snapshot, one call run, and the state it leaves returned
//! ([`Sandbox::execute_with_state`], [`Sandbox::call_handler_with_state`]).
//! The state can live anywhere between calls (the gateway keeps it in its
//! store), so no process holds a session.

use std::time::{Duration, Instant};

use crate::{
    ExecuteResult, HandlerContext, HandlerOutput, Result, Sandbox, Session, StateSnapshot,
};

/// What a call run with a state returned, the state it left, and what the
/// state cost.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct WithState<T> {
    /// The call's own output ([`ExecuteResult`] or [`HandlerOutput`]).
    pub output: T,
    /// The globals after the call, pickled; with the names of the values
    /// that could not be pickled and were left out.
    pub state: StateSnapshot,
    /// Time to create the fresh instance.
    pub instantiate_time: Duration,
    /// Time to unpickle the given state (zero without one).
    pub restore_time: Duration,
    /// Time to pickle the state after the call.
    pub snapshot_time: Duration,
}

impl Sandbox {
    /// Runs `code` in a fresh instance after restoring `state` (the
    /// [`StateSnapshot::data`] of an earlier call; `None` starts from the
    /// snapshot's own globals), then pickles the globals it leaves. In a
    /// function's snapshot the globals are those of the function's module.
    ///
    /// A call that fails returns no state: whoever keeps the state keeps the
    /// one it passed in.
    ///
    /// # Errors
    /// As [`execute`](Sandbox::execute); [`Error::State`](crate::Error::State)
    /// when `state` does not unpickle or the new state cannot be pickled;
    /// [`Error::StateTooLarge`](crate::Error::StateTooLarge) over the state
    /// limit.
    pub async fn execute_with_state(
        &self,
        state: Option<&[u8]>,
        code: &str,
    ) -> Result<WithState<ExecuteResult>> {
        let (mut session, restore_time) = self.restored(state).await?;
        let output = session.execute(code).await?;
        finish(session, output, restore_time).await
    }

    /// Calls the handler of the function the runtime was snapshotted with
    /// (see [`call_handler`](Sandbox::call_handler)) in a fresh instance whose
    /// module globals are first restored from `state` (`None`: as imported),
    /// then pickles the module globals it leaves: a module-level counter
    /// counts across calls that pass the state along.
    ///
    /// # Errors
    /// As [`call_handler`](Sandbox::call_handler) and
    /// [`execute_with_state`](Sandbox::execute_with_state).
    pub async fn call_handler_with_state(
        &self,
        state: Option<&[u8]>,
        event_json: &str,
        context: &HandlerContext,
    ) -> Result<WithState<HandlerOutput>> {
        let (mut session, restore_time) = self.restored(state).await?;
        let output = session.call_handler(event_json, context).await?;
        finish(session, output, restore_time).await
    }

    /// A fresh instance with `state` restored, and the time restoring took.
    async fn restored(&self, state: Option<&[u8]>) -> Result<(Session, Duration)> {
        let mut session = self.session().await?;
        let Some(data) = state else {
            return Ok((session, Duration::ZERO));
        };
        let start = Instant::now();
        session.restore_bytes(data).await?;
        Ok((session, start.elapsed()))
    }
}

/// Pickles what `session` left after its call returned `output`.
async fn finish<T>(
    mut session: Session,
    output: T,
    restore_time: Duration,
) -> Result<WithState<T>> {
    let start = Instant::now();
    let state = session.snapshot_state().await?;
    Ok(WithState {
        output,
        state,
        instantiate_time: session.instantiate_time(),
        restore_time,
        snapshot_time: start.elapsed(),
    })
}
