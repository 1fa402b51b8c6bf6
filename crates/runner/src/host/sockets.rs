//! wasi:sockets, gated by `allowed_outbound_hosts` (`tcp://ip:port` entries), as in Spin.

use std::sync::Arc;

use runner_outbound_hosts::AllowedHosts;
use wasmtime_wasi::sockets::SocketAddrUse;
use wasmtime_wasi::WasiCtxBuilder;

/// Allows TCP and checks every connect against the allow-list, by IP address as Spin does (a
/// `tcp://localhost:…` entry never matches). Name lookups (`wasi:sockets/ip-name-lookup`) are
/// refused, as in Spin 3, whose wasi context never enables them: a guest connecting to a host
/// name gets a resolver error, so addresses in URLs and allow-lists must be IP addresses. UDP
/// stays off: nothing here needs it, and a guest that tries gets a permission error.
pub(crate) fn configure(
    builder: &mut WasiCtxBuilder,
    component: &str,
    allowed: &Arc<AllowedHosts>,
) {
    let component: Arc<str> = component.into();
    let allowed = allowed.clone();
    builder.allow_tcp(true).allow_ip_name_lookup(false).allow_udp(false).socket_addr_check(move |addr, used_for| {
        let permitted = match used_for {
            SocketAddrUse::TcpConnect => match allowed.check_tcp(addr) {
                Ok(()) => true,
                Err(denial) => {
                    tracing::error!(component = %component, "{} {}", denial.warning(), denial.suggestion().unwrap_or_default());
                    false
                }
            },
            // Spin denies binds. wasmtime 48 also asks about the implicit bind a connect performs,
            // with the wildcard address and port 0; that one must pass or no connect could.
            SocketAddrUse::TcpBind => addr.ip().is_unspecified() && addr.port() == 0,
            other => {
                tracing::error!(component = %component, address = %addr, "socket use {other:?} is not permitted");
                false
            }
        };
        Box::pin(std::future::ready(permitted))
    });
}
