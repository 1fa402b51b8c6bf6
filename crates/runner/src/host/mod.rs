//! Host implementations of the interfaces Spin 3 gives components, beyond WASI and wasi:http.
//! One module per interface, as Spin's factors are organised.

pub mod key_value;
pub mod mysql;
pub mod outbound_http;
pub mod sockets;
pub mod variables;

use wasmtime::component::{HasSelf, Linker};

use crate::state::RequestState;

/// Bindings generated from the project's `wit/fermyon-spin` (Spin's own names and types).
pub(crate) mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit/fermyon-spin",
        world: "fermyon:spin/runner-host",
        imports: {
            "fermyon:spin/mysql.[static]connection.open": async | trappable,
            "fermyon:spin/mysql.[method]connection.query": async | trappable,
            "fermyon:spin/mysql.[method]connection.execute": async | trappable,
            default: trappable,
        },
        with: {
            "fermyon:spin/mysql.connection": super::mysql::Connection,
            "fermyon:spin/key-value.store": super::key_value::Store,
        },
        require_store_data_send: true,
    });
}

/// Adds WASI, wasi:http and the Spin interfaces to the linker.
pub fn add_to_linker(linker: &mut Linker<RequestState>) -> anyhow::Result<()> {
    wasmtime_wasi::p2::add_to_linker_async(linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(linker)?;
    bindings::fermyon::spin::variables::add_to_linker::<_, HasSelf<RequestState>>(linker, |s| s)?;
    bindings::fermyon::spin::rdbms_types::add_to_linker::<_, HasSelf<RequestState>>(linker, |s| s)?;
    bindings::fermyon::spin::mysql::add_to_linker::<_, HasSelf<RequestState>>(linker, |s| s)?;
    bindings::fermyon::spin::key_value::add_to_linker::<_, HasSelf<RequestState>>(linker, |s| s)?;
    Ok(())
}
