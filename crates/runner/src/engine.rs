//! The wasmtime engine, shared by every component and every request.

use anyhow::{Context, Result};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// Knobs for the engine; the defaults suit a development machine.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// Keep compiled components in wasmtime's on-disk cache, so restarts skip Cranelift.
    pub cache: bool,
    /// Instances that may be alive at once (the pooling allocator reserves this many slots).
    pub max_instances: u32,
    /// Use the pooling allocator; off only to measure what it saves.
    pub pooling: bool,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            cache: true,
            max_instances: 1000,
            pooling: true,
        }
    }
}

/// Builds the engine with the pooling allocator, as `wasmtime serve` does: each request gets a
/// fresh instance, and pooling turns that instantiation into reusing a pre-mapped slot, which keeps
/// the per-request cost in microseconds.
pub fn new_engine(options: &EngineOptions) -> Result<Engine> {
    let mut config = Config::new();
    config.wasm_component_model(true);

    if options.pooling {
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling_config(
            options.max_instances,
        )));
    }

    if options.cache {
        // A missing or unreadable cache directory only costs compile time; don't fail for it.
        match wasmtime::Cache::from_file(None) {
            Ok(cache) => {
                config.cache(Some(cache));
            }
            Err(error) => tracing::warn!(%error, "wasmtime compilation cache disabled"),
        }
    }

    Engine::new(&config)
        .map_err(anyhow::Error::from)
        .context("creating the wasmtime engine")
}

fn pooling_config(max_instances: u32) -> PoolingAllocationConfig {
    let mut pooling = PoolingAllocationConfig::default();
    // Spin's pool (spin-core 3.6.3, with its defaults): a component instance of this app holds
    // several core instances and tables, so with one of each per request the pool ran out at
    // a quarter of the requests Spin serves at once.
    pooling
        .total_component_instances(max_instances)
        .total_core_instances(4 * max_instances)
        .total_memories(max_instances)
        .total_tables(2 * max_instances)
        .total_stacks(max_instances)
        .table_elements(100_000)
        .max_component_instance_size(10 << 20)
        .max_core_instance_size(10 << 20)
        .max_core_instances_per_component(200)
        .max_tables_per_component(64)
        .max_memories_per_component(32)
        .max_tables_per_module(2)
        .max_memories_per_module(2)
        // As in Spin: any 32-bit memory may grow to 4 GiB here; an instance's limit, if any, is
        // the store's (`--max-instance-memory`).
        .max_memory_size(4 << 30)
        // Resetting a slot by zeroing its first pages, instead of handing them back to the kernel,
        // spares every request the copy-on-write faults and the cross-core TLB flushes that
        // dominated a profile under load (a Rust guest touches its 1 MiB stack and some heap):
        // `POST /validate` went from about 5,200 to 8,000 requests/s on 2 cores. Warm slots keep
        // at most 64 x 2 MiB resident.
        .max_unused_warm_slots(64)
        .linear_memory_keep_resident(2 << 20)
        .table_keep_resident(1 << 16);
    pooling
}
