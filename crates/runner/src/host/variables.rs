//! `fermyon:spin/variables@2.0.0`: application variables, resolved once at start-up.

use super::bindings::fermyon::spin::variables::{Error, Host};
use crate::state::RequestState;
use runner_variables::VariableError;

impl Host for RequestState {
    fn get(&mut self, name: String) -> wasmtime::Result<Result<String, Error>> {
        let component = &self.runtime.component(self.component).id;
        Ok(self
            .runtime
            .variables()
            .get(component, &name)
            .map(str::to_owned)
            .map_err(|e| match e {
                VariableError::InvalidName(m) => Error::InvalidName(m),
                VariableError::Undefined(m) => Error::Undefined(m),
                VariableError::Provider(m) => Error::Provider(m),
                VariableError::Other(m) => Error::Other(m),
            }))
    }
}
