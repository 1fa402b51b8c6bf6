//! What one request's store holds: WASI, wasi:http, and the Spin host interfaces' state.

use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::host::key_value::KeyValueAccess;
use crate::host::outbound_http::OutboundHttp;
use crate::runtime::{ComponentIndex, Runtime};

/// Store data for one request to one component. It lives exactly as long as the instance.
pub struct RequestState {
    pub(crate) runtime: Arc<Runtime>,
    pub(crate) component: ComponentIndex,
    pub(crate) table: ResourceTable,
    pub(crate) wasi: WasiCtx,
    pub(crate) http: WasiHttpCtx,
    pub(crate) outbound_http: OutboundHttp,
    /// The store's memory limit (none unless `--max-instance-memory` is set).
    pub(crate) limits: wasmtime::StoreLimits,
    /// The key-value stores the component may open, and how many it holds open.
    pub(crate) key_value: KeyValueAccess,
}

impl RequestState {
    pub(crate) fn new(runtime: Arc<Runtime>, component: ComponentIndex) -> Self {
        let wasi = runtime.component(component).wasi_ctx();
        let outbound_http = OutboundHttp::new(runtime.clone(), component);
        let key_value = KeyValueAccess::new(&runtime.component(component).key_value_stores);
        Self {
            runtime,
            component,
            table: ResourceTable::new(),
            wasi,
            http: WasiHttpCtx::new(),
            outbound_http,
            limits: wasmtime::StoreLimits::default(),
            key_value,
        }
    }

    /// The component's id, for log lines and error messages.
    pub(crate) fn component_id(&self) -> &str {
        &self.runtime.component(self.component).id
    }
}

impl WasiView for RequestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for RequestState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.outbound_http,
        }
    }
}
