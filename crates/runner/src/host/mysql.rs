//! `fermyon:spin/mysql@2.0.0`: outbound MySQL through mysql_async.
//!
//! Spin opens a connection per `open`; here connections come from one pool per address shared by
//! all requests, which the guest cannot tell apart except by speed (each pooled connection is
//! reset before reuse).

use std::collections::HashMap;
use std::sync::Mutex;

use mysql_async::consts::{ColumnFlags, ColumnType};
use mysql_async::prelude::Queryable;
use mysql_async::{Opts, Pool, Value};
use wasmtime::component::Resource;

use super::bindings::fermyon::spin::mysql::{Host, HostConnection};
use super::bindings::fermyon::spin::rdbms_types::{
    Column, DbDataType, DbValue, Error, Host as RdbmsTypesHost, ParameterValue, RowSet,
};
use crate::state::RequestState;

/// The guest's `connection` resource: a pooled connection, returned to its pool on drop.
pub struct Connection {
    conn: mysql_async::Conn,
}

/// Pools keyed by the address the guest opened, so different credentials never share one.
#[derive(Default)]
pub struct MysqlPools {
    pools: Mutex<HashMap<String, Pool>>,
}

impl MysqlPools {
    fn pool(&self, address: &str) -> Result<Pool, Error> {
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(pool) = pools.get(address) {
            return Ok(pool.clone());
        }
        let opts = Opts::from_url(address)
            .map_err(|e| Error::ConnectionFailed(format!("invalid address: {e}")))?;
        let pool = Pool::new(opts);
        pools.insert(address.to_owned(), pool.clone());
        Ok(pool)
    }
}

impl Host for RequestState {}
impl RdbmsTypesHost for RequestState {}

impl HostConnection for RequestState {
    async fn open(
        &mut self,
        address: String,
    ) -> wasmtime::Result<Result<Resource<Connection>, Error>> {
        let allowed = &self.runtime.component(self.component).allowed_hosts;
        if let Err(denial) = allowed.check_address(&address, "mysql") {
            tracing::error!(
                component = self.component_id(),
                "{} {}",
                denial.warning(),
                denial.suggestion().unwrap_or_default()
            );
            // Spin's own words, without the address (it may hold a password).
            return Ok(Err(Error::ConnectionFailed(format!(
                "address {} is not permitted",
                denial
                    .host_pattern()
                    .unwrap_or_else(|| "<unparseable>".into())
            ))));
        }
        let pool = match self.runtime.mysql.pool(&address) {
            Ok(pool) => pool,
            Err(e) => return Ok(Err(e)),
        };
        match pool.get_conn().await {
            Ok(conn) => Ok(Ok(self.table.push(Connection { conn })?)),
            Err(e) => Ok(Err(Error::ConnectionFailed(e.to_string()))),
        }
    }

    async fn query(
        &mut self,
        connection: Resource<Connection>,
        statement: String,
        params: Vec<ParameterValue>,
    ) -> wasmtime::Result<Result<RowSet, Error>> {
        let conn = &mut self.table.get_mut(&connection)?.conn;
        let params = to_params(params);
        let mut result = match conn.exec_iter(statement, params).await {
            Ok(result) => result,
            Err(e) => return Ok(Err(query_error(e))),
        };
        let columns = result.columns().map(|c| c.to_vec()).unwrap_or_default();
        let rows = match result.collect::<mysql_async::Row>().await {
            Ok(rows) => rows,
            Err(e) => return Ok(Err(query_error(e))),
        };
        let types: Vec<DbDataType> = columns.iter().map(data_type).collect();
        let mut converted = Vec::with_capacity(rows.len());
        for row in rows {
            let values = row.unwrap();
            let row = values
                .into_iter()
                .zip(&types)
                .map(|(v, t)| to_db_value(v, *t))
                .collect::<Result<Vec<_>, _>>();
            match row {
                Ok(row) => converted.push(row),
                Err(e) => return Ok(Err(e)),
            }
        }
        let columns = columns
            .iter()
            .zip(&types)
            .map(|(c, t)| Column {
                name: c.name_str().into_owned(),
                data_type: *t,
            })
            .collect();
        Ok(Ok(RowSet {
            columns,
            rows: converted,
        }))
    }

    async fn execute(
        &mut self,
        connection: Resource<Connection>,
        statement: String,
        params: Vec<ParameterValue>,
    ) -> wasmtime::Result<Result<(), Error>> {
        let conn = &mut self.table.get_mut(&connection)?.conn;
        Ok(conn
            .exec_drop(statement, to_params(params))
            .await
            .map_err(query_error))
    }

    fn drop(&mut self, connection: Resource<Connection>) -> wasmtime::Result<()> {
        self.table.delete(connection)?;
        Ok(())
    }
}

fn query_error(e: mysql_async::Error) -> Error {
    match e {
        mysql_async::Error::Io(_) | mysql_async::Error::Driver(_) => {
            Error::ConnectionFailed(e.to_string())
        }
        other => Error::QueryFailed(other.to_string()),
    }
}

fn to_params(params: Vec<ParameterValue>) -> mysql_async::Params {
    if params.is_empty() {
        return mysql_async::Params::Empty;
    }
    mysql_async::Params::Positional(
        params
            .into_iter()
            .map(|p| match p {
                ParameterValue::Boolean(v) => Value::Int(v.into()),
                ParameterValue::Int8(v) => Value::Int(v.into()),
                ParameterValue::Int16(v) => Value::Int(v.into()),
                ParameterValue::Int32(v) => Value::Int(v.into()),
                ParameterValue::Int64(v) => Value::Int(v),
                ParameterValue::Uint8(v) => Value::UInt(v.into()),
                ParameterValue::Uint16(v) => Value::UInt(v.into()),
                ParameterValue::Uint32(v) => Value::UInt(v.into()),
                ParameterValue::Uint64(v) => Value::UInt(v),
                ParameterValue::Floating32(v) => Value::Float(v),
                ParameterValue::Floating64(v) => Value::Double(v),
                ParameterValue::Str(v) => Value::Bytes(v.into_bytes()),
                ParameterValue::Binary(v) => Value::Bytes(v),
                ParameterValue::DbNull => Value::NULL,
            })
            .collect(),
    )
}

/// MySQL's charset number for binary data; string columns with it hold bytes, not text.
const BINARY_CHARSET: u16 = 63;

fn data_type(column: &mysql_async::Column) -> DbDataType {
    let unsigned = column.flags().contains(ColumnFlags::UNSIGNED_FLAG);
    let binary = column.character_set() == BINARY_CHARSET;
    match column.column_type() {
        ColumnType::MYSQL_TYPE_TINY if unsigned => DbDataType::Uint8,
        ColumnType::MYSQL_TYPE_TINY => DbDataType::Int8,
        ColumnType::MYSQL_TYPE_SHORT | ColumnType::MYSQL_TYPE_YEAR if unsigned => {
            DbDataType::Uint16
        }
        ColumnType::MYSQL_TYPE_SHORT | ColumnType::MYSQL_TYPE_YEAR => DbDataType::Int16,
        ColumnType::MYSQL_TYPE_INT24 | ColumnType::MYSQL_TYPE_LONG if unsigned => {
            DbDataType::Uint32
        }
        ColumnType::MYSQL_TYPE_INT24 | ColumnType::MYSQL_TYPE_LONG => DbDataType::Int32,
        ColumnType::MYSQL_TYPE_LONGLONG if unsigned => DbDataType::Uint64,
        ColumnType::MYSQL_TYPE_LONGLONG => DbDataType::Int64,
        ColumnType::MYSQL_TYPE_FLOAT => DbDataType::Floating32,
        ColumnType::MYSQL_TYPE_DOUBLE => DbDataType::Floating64,
        ColumnType::MYSQL_TYPE_VARCHAR
        | ColumnType::MYSQL_TYPE_VAR_STRING
        | ColumnType::MYSQL_TYPE_STRING
        | ColumnType::MYSQL_TYPE_TINY_BLOB
        | ColumnType::MYSQL_TYPE_MEDIUM_BLOB
        | ColumnType::MYSQL_TYPE_LONG_BLOB
        | ColumnType::MYSQL_TYPE_BLOB
        | ColumnType::MYSQL_TYPE_ENUM
        | ColumnType::MYSQL_TYPE_SET
        | ColumnType::MYSQL_TYPE_JSON
        | ColumnType::MYSQL_TYPE_DECIMAL
        | ColumnType::MYSQL_TYPE_NEWDECIMAL => {
            if binary {
                DbDataType::Binary
            } else {
                DbDataType::Str
            }
        }
        ColumnType::MYSQL_TYPE_BIT => DbDataType::Binary,
        _ => DbDataType::Other,
    }
}

fn to_db_value(value: Value, data_type: DbDataType) -> Result<DbValue, Error> {
    fn convert<T: mysql_async::prelude::FromValue>(value: Value) -> Result<T, Error> {
        mysql_async::from_value_opt::<T>(value)
            .map_err(|e| Error::ValueConversionFailed(e.to_string()))
    }
    if value == Value::NULL {
        return Ok(DbValue::DbNull);
    }
    Ok(match data_type {
        DbDataType::Boolean => DbValue::Boolean(convert(value)?),
        DbDataType::Int8 => DbValue::Int8(convert(value)?),
        DbDataType::Int16 => DbValue::Int16(convert(value)?),
        DbDataType::Int32 => DbValue::Int32(convert(value)?),
        DbDataType::Int64 => DbValue::Int64(convert(value)?),
        DbDataType::Uint8 => DbValue::Uint8(convert(value)?),
        DbDataType::Uint16 => DbValue::Uint16(convert(value)?),
        DbDataType::Uint32 => DbValue::Uint32(convert(value)?),
        DbDataType::Uint64 => DbValue::Uint64(convert(value)?),
        DbDataType::Floating32 => DbValue::Floating32(convert(value)?),
        DbDataType::Floating64 => DbValue::Floating64(convert(value)?),
        DbDataType::Str => DbValue::Str(convert(value)?),
        DbDataType::Binary => DbValue::Binary(convert(value)?),
        DbDataType::Other => DbValue::Unsupported,
    })
}
