//! Host bindings generated from `wit/sandbox.wit`, and the host side of the
//! world's imports.

use wasmtime::component::{Accessor, HasSelf, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

wasmtime::component::bindgen!({
    path: "../wit/sandbox.wit",
    world: "sandbox",
    exports: { default: async },
});

/// Per-instance host state: the instance's WASI context and resource table.
pub(crate) struct HostState {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl SandboxImports for HostState {
    // No callbacks can be registered yet, so the list is empty and `invoke`
    // answers every name with "no such callback".
    fn list_callbacks(&mut self) -> Vec<CallbackInfo> {
        Vec::new()
    }

    // Line tracing is not offered yet; the guest never enables it.
    fn report_trace(&mut self, _event: TraceEvent) {}
}

impl SandboxImportsWithStore<HostState> for HasSelf<HostState> {
    async fn invoke(
        _accessor: &Accessor<HostState, Self>,
        name: String,
        _arguments_json: String,
    ) -> Result<String, String> {
        Err(format!("no host callback named {name:?} is registered"))
    }
}
