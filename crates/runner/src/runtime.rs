//! Loading a Spin app: manifest, variables, and one pre-instantiated component per `[component]`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use runner_manifest::App;
use runner_outbound_hosts::AllowedHosts;
use runner_routes::Router;
use runner_variables::{EnvProvider, Provider, Resolved, StaticProvider};
use tokio::sync::oneshot;
use wasmtime::component::{Component, Linker};
use wasmtime::{Engine, Store};
use wasmtime_wasi::WasiCtx;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::WasiHttpView;

use crate::engine::{new_engine, EngineOptions};
use crate::host;
use crate::host::key_value::KeyValueStores;
use crate::runtime_config::RuntimeConfig;
use crate::state::RequestState;

/// Index of a component in [`Runtime`]; cheaper to carry per request than its id.
pub type ComponentIndex = usize;

/// How to load an app.
#[derive(Clone, Debug, Default)]
pub struct RuntimeOptions {
    /// Path to `spin.toml`.
    pub manifest: PathBuf,
    /// `--variable` arguments (`name=value`, `name=@file`, `@file.json`); they take precedence
    /// over the environment, as in Spin.
    pub variables: Vec<String>,
    /// Most bytes of linear memory an instance may have (Spin's `--max-instance-memory`).
    pub max_instance_memory: Option<usize>,
    /// `--runtime-config-file`.
    pub runtime_config: Option<PathBuf>,
    /// `--state-dir`: where the default key-value store lives. `None` is Spin's default for a
    /// local app, `.spin/` beside the manifest; `Some("")` unsets it (the store is in memory).
    pub state_dir: Option<PathBuf>,
    pub engine: EngineOptions,
}

/// A loaded app: everything requests share. Built once; each request only creates a `Store`.
pub struct Runtime {
    app_name: String,
    app_version: String,
    components: Vec<LoadedComponent>,
    by_id: HashMap<String, ComponentIndex>,
    router: Router<ComponentIndex>,
    variables: Resolved,
    engine: Engine,
    max_instance_memory: Option<usize>,
    key_value: KeyValueStores,
    /// The address the app listens on, where self requests go (set once it is bound).
    self_origin: OnceLock<SocketAddr>,
}

/// One `[component.<id>]`, compiled, linked and ready to instantiate.
pub struct LoadedComponent {
    pub id: String,
    pre: ProxyPre<RequestState>,
    pub(crate) allowed_hosts: Arc<AllowedHosts>,
    environment: Vec<(String, String)>,
    /// The key-value store labels it may open.
    pub(crate) key_value_stores: Vec<String>,
}

impl Runtime {
    /// Loads the manifest, resolves variables, compiles and links every component. Every
    /// problem Spin would refuse to start with is reported here, naming the component.
    pub async fn load(options: RuntimeOptions) -> Result<Arc<Self>> {
        let app = runner_manifest::load(&options.manifest)
            .with_context(|| format!("loading {}", options.manifest.display()))?;

        let providers: Vec<Box<dyn Provider>> = vec![
            Box::new(StaticProvider::from_cli_args(&options.variables)?),
            Box::new(EnvProvider::from_process()),
        ];
        let variables = Resolved::resolve(&app, &providers)?;

        let runtime_config = match &options.runtime_config {
            Some(path) => RuntimeConfig::load(path)?,
            None => RuntimeConfig::default(),
        };
        let state_dir = match &options.state_dir {
            None => Some(app.dir.join(".spin")),
            Some(dir) if dir.as_os_str().is_empty() => None,
            Some(dir) => Some(dir.clone()),
        };
        let key_value = KeyValueStores::new(
            state_dir.as_deref(),
            runtime_config.key_value_stores,
            runtime_config.dir.as_deref(),
        );
        for component in app.components.values() {
            key_value.check_component(&component.id, &component.key_value_stores)?;
        }

        let engine = new_engine(&options.engine)?;
        let mut linker = Linker::<RequestState>::new(&engine);
        host::add_to_linker(&mut linker)?;

        let components = load_components(&app, &engine, &linker, &variables).await?;
        let by_id = components
            .iter()
            .enumerate()
            .map(|(i, c)| (c.id.clone(), i))
            .collect::<HashMap<_, _>>();

        // Private routes are reachable only through service chaining, never from the router.
        let routes: Vec<(String, ComponentIndex)> = app
            .http_triggers
            .iter()
            .filter_map(|trigger| match &trigger.route {
                runner_manifest::Route::Path(route) => {
                    Some((route.clone(), by_id[&trigger.component]))
                }
                runner_manifest::Route::Private => None,
            })
            .collect();
        let router = Router::build(routes.iter().cloned()).context("building the HTTP router")?;
        log_route_problems(&router, &routes, &components);
        for unused in app.unused_components() {
            tracing::warn!("component `{unused}` is not used by any trigger");
        }

        Ok(Arc::new(Self {
            app_version: app.version.clone(),
            app_name: app.name.clone(),
            components,
            by_id,
            router,
            variables,
            engine,
            max_instance_memory: options.max_instance_memory,
            key_value,
            self_origin: OnceLock::new(),
        }))
    }

    pub fn app_name(&self) -> &str {
        &self.app_name
    }

    pub fn app_version(&self) -> &str {
        &self.app_version
    }

    pub fn router(&self) -> &Router<ComponentIndex> {
        &self.router
    }

    pub fn component(&self, index: ComponentIndex) -> &LoadedComponent {
        &self.components[index]
    }

    pub fn component_index(&self, id: &str) -> Option<ComponentIndex> {
        self.by_id.get(id).copied()
    }

    /// Records the address the app serves on: self requests go there, as in Spin.
    pub fn set_self_origin(&self, address: SocketAddr) {
        let _ = self.self_origin.set(address);
    }

    pub(crate) fn self_origin(&self) -> Option<SocketAddr> {
        self.self_origin.get().copied()
    }

    pub(crate) fn key_value(&self) -> &KeyValueStores {
        &self.key_value
    }

    pub(crate) fn variables(&self) -> &Resolved {
        &self.variables
    }

    /// A store for one request to `component`, its memory capped as Spin caps it: growing past
    /// the limit fails (memory.grow returns -1), it does not trap.
    fn new_store(self: &Arc<Self>, component: ComponentIndex) -> Store<RequestState> {
        let mut state = RequestState::new(self.clone(), component);
        if let Some(limit) = self.max_instance_memory {
            state.limits = wasmtime::StoreLimitsBuilder::new()
                .memory_size(limit)
                .build();
        }
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limits);
        store
    }

    /// Creates a store and an instance of `component` and drops them: the fixed cost each request
    /// pays before the guest runs. Public for the benchmark that reports it.
    pub async fn instantiate_once(self: &Arc<Self>, component: ComponentIndex) -> Result<()> {
        let mut store = self.new_store(component);
        self.components[component]
            .pre
            .instantiate_async(&mut store)
            .await?;
        Ok(())
    }

    /// Runs one request through a fresh instance of `component` and returns its response as
    /// soon as the guest sets it; the body keeps streaming from the instance's own task, which
    /// owns the store until the guest returns.
    pub async fn handle<B>(
        self: &Arc<Self>,
        component: ComponentIndex,
        request: http::Request<B>,
    ) -> Result<hyper::Response<HyperOutgoingBody>>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let mut store = self.new_store(component);
        let (sender, receiver) = oneshot::channel();
        let request = store
            .data_mut()
            .http()
            .new_incoming_request(Scheme::Http, request)?;
        let outparam = store.data_mut().http().new_response_outparam(sender)?;
        let pre = self.components[component].pre.clone();
        let (done_sender, done) = oneshot::channel::<()>();
        let id = self.components[component].id.clone();

        let task = tokio::task::spawn(async move {
            let proxy = pre.instantiate_async(&mut store).await?;
            let result = proxy
                .wasi_http_incoming_handler()
                .call_handle(&mut store, request, outparam)
                .await;
            // A failure after the response went out has nobody left to answer: Spin logs it,
            // and so does this.
            if let (Err(error), Err(_)) = (&result, done_sender.send(())) {
                tracing::error!(component = %id, error = format!("{error:#}"), "Component error after response started: the response may not be fully sent");
            }
            result
        });

        match receiver.await {
            Ok(Ok(response)) => {
                // The guest's task reports a later failure itself once nobody waits for it.
                drop(done);
                Ok(response)
            }
            Ok(Err(code)) => Err(anyhow!(
                "component `{}` answered with an error: {code:?}",
                self.components[component].id
            )),
            // The outparam was dropped unset: the guest trapped or returned without a response.
            Err(_) => {
                let error = match task.await {
                    Ok(Ok(())) => anyhow!("guest never set a response"),
                    Ok(Err(error)) => anyhow::Error::from(error),
                    Err(join) => join.into(),
                };
                Err(error.context(format!(
                    "component `{}` failed",
                    self.components[component].id
                )))
            }
        }
    }
}

impl LoadedComponent {
    /// A fresh WASI context for one request: the component's `environment`, the runner's stdio
    /// (Spin shows component output in its own log), and TCP gated by `allowed_outbound_hosts`.
    pub(crate) fn wasi_ctx(&self) -> WasiCtx {
        let mut builder = WasiCtx::builder();
        builder
            .envs(&self.environment)
            .inherit_stdout()
            .inherit_stderr();
        host::sockets::configure(&mut builder, &self.id, &self.allowed_hosts);
        builder.build()
    }
}

async fn load_components(
    app: &App,
    engine: &Engine,
    linker: &Linker<RequestState>,
    variables: &Resolved,
) -> Result<Vec<LoadedComponent>> {
    // Compile in parallel: Cranelift dominates start-up and the components are independent.
    let compiles = app.components.values().map(|component| {
        let engine = engine.clone();
        let id = component.id.clone();
        let source = component.source.clone();
        tokio::task::spawn_blocking(move || -> Result<(String, Component)> {
            let bytes = std::fs::read(&source)
                .with_context(|| format!("component `{id}`: reading {} (run the build first?)", source.display()))?;
            if is_core_module(&bytes) {
                bail!("component `{id}`: {} is a core wasm module; build it for wasm32-wasip2 so it is a component", source.display());
            }
            let component = Component::new(&engine, &bytes)
                .map_err(anyhow::Error::from)
                .with_context(|| format!("component `{id}`: compiling {}", source.display()))?;
            Ok((id, component))
        })
    });
    let compiled = join_in_order(compiles).await?;

    let mut loaded = Vec::with_capacity(compiled.len());
    for (id, component) in compiled {
        let spec = &app.components[&id];
        let instance_pre = linker
            .instantiate_pre(&component)
            .map_err(anyhow::Error::from)
            .with_context(|| {
                format!("component `{id}` imports something this runner does not provide")
            })?;
        let pre = ProxyPre::new(instance_pre)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("component `{id}` does not export wasi:http/incoming-handler; is it a Spin HTTP component?"))?;

        let entries = spec
            .allowed_outbound_hosts
            .iter()
            .map(|entry| variables.render(&id, entry))
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("component `{id}`: rendering allowed_outbound_hosts"))?;
        let allowed_hosts = AllowedHosts::parse(&entries)
            .with_context(|| format!("component `{id}`: invalid allowed_outbound_hosts"))?;

        loaded.push(LoadedComponent {
            id,
            pre,
            allowed_hosts: Arc::new(allowed_hosts),
            environment: spec
                .environment
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            key_value_stores: spec.key_value_stores.clone(),
        });
    }
    Ok(loaded)
}

/// Spin starts with duplicate or reserved routes but logs them at error level; so does the runner.
fn log_route_problems(
    router: &Router<ComponentIndex>,
    routes: &[(String, ComponentIndex)],
    components: &[LoadedComponent],
) {
    if !router.duplicates().is_empty() {
        tracing::error!("{}", runner_routes::DuplicateRoute::HEADING);
        for duplicate in router.duplicates() {
            let id = |position: usize| components[routes[position].1].id.as_str();
            tracing::error!(
                "{}",
                duplicate.log_line(id(duplicate.replaced_index), id(duplicate.effective_index))
            );
        }
    }
    if router.contains_reserved_route() {
        tracing::error!("Routes under /.well-known/spin/ are handled by the Spin runtime and will never be reached");
    }
}

/// The preamble's layer field tells components (1) from core modules (0).
fn is_core_module(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && &bytes[0..4] == b"\0asm" && bytes[6..8] == [0, 0]
}

async fn join_in_order<T>(
    handles: impl Iterator<Item = tokio::task::JoinHandle<Result<T>>>,
) -> Result<Vec<T>> {
    let handles: Vec<_> = handles.collect();
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        out.push(handle.await.context("compile task panicked")??);
    }
    Ok(out)
}
