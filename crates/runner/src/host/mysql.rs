//! `fermyon:spin/mysql@2.0.0`: outbound MySQL through mysql_async, as Spin 3.6's
//! `factor-outbound-mysql` does it, so a component observes the same thing on both: a new
//! connection for each `open` (Spin keeps no pool across requests), the same column-type
//! mapping (what Spin cannot convert is an error, not a value), the same error variants and
//! texts, and the same 128 MiB cap on a buffered query result.

use anyhow::anyhow;
use futures_util::TryStreamExt as _;
use mysql_async::consts::{ColumnFlags, ColumnType};
use mysql_async::prelude::{FromValue, Queryable};
use mysql_async::{Opts, OptsBuilder, SslOpts, Value};
use wasmtime::component::Resource;

use super::bindings::fermyon::spin::mysql::{Host, HostConnection};
use super::bindings::fermyon::spin::rdbms_types::{
    Column, DbDataType, DbValue, Error, Host as RdbmsTypesHost, ParameterValue, RowSet,
};
use crate::state::RequestState;

/// Spin's `MAX_HOST_BUFFERED_BYTES`: the most a query result may hold in the host.
pub const MAX_RESULT_BYTES: usize = 128 << 20;

/// The guest's `connection` resource: a connection of its own, closed on drop.
pub struct Connection {
    conn: mysql_async::Conn,
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
            // The log line leaves the address out (it may hold a password); the guest gets
            // Spin's own words, which name it.
            tracing::error!(
                component = self.component_id(),
                "{} {}",
                denial.warning(),
                denial.suggestion().unwrap_or_default()
            );
            return Ok(Err(Error::ConnectionFailed(format!(
                "address {address} is not permitted"
            ))));
        }
        match connect(&address).await {
            Ok(conn) => Ok(Ok(self.table.push(Connection { conn })?)),
            Err(e) => Ok(Err(Error::ConnectionFailed(format!("{e:?}")))),
        }
    }

    async fn query(
        &mut self,
        connection: Resource<Connection>,
        statement: String,
        params: Vec<ParameterValue>,
    ) -> wasmtime::Result<Result<RowSet, Error>> {
        let conn = &mut self.table.get_mut(&connection)?.conn;
        Ok(query(conn, statement, params, MAX_RESULT_BYTES).await)
    }

    async fn execute(
        &mut self,
        connection: Resource<Connection>,
        statement: String,
        params: Vec<ParameterValue>,
    ) -> wasmtime::Result<Result<(), Error>> {
        let conn = &mut self.table.get_mut(&connection)?.conn;
        Ok(conn
            .exec_batch(&statement, [to_params(params)])
            .await
            .map_err(|e| Error::QueryFailed(format!("{e:?}"))))
    }

    fn drop(&mut self, connection: Resource<Connection>) -> wasmtime::Result<()> {
        self.table.delete(connection)?;
        Ok(())
    }
}

/// A connection of its own (a pool per `open`, as Spin makes it, handing out one connection).
async fn connect(address: &str) -> anyhow::Result<mysql_async::Conn> {
    let opts = build_opts(address)?;
    mysql_async::Pool::new(opts)
        .get_conn()
        .await
        .map_err(|e| anyhow!(e))
}

/// mysql_async refuses an `ssl-mode` parameter; as in Spin, any value but `disabled` turns TLS
/// on and the parameter is removed from the URL.
fn build_opts(address: &str) -> Result<Opts, mysql_async::Error> {
    let url = url::Url::parse(address).map_err(mysql_async::UrlError::from)?;
    let is_ssl = |k: &str| matches!(k.to_lowercase().as_str(), "ssl-mode" | "sslmode");
    let use_ssl = url
        .query_pairs()
        .any(|(k, v)| is_ssl(&k) && v.to_lowercase() != "disabled");
    let rest: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(k, _)| !is_ssl(k))
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let mut cleaned = url.clone();
    cleaned.set_query(None);
    cleaned.query_pairs_mut().extend_pairs(rest);
    Ok(OptsBuilder::from_opts(cleaned.as_str())
        .ssl_opts(use_ssl.then(SslOpts::default))
        .into())
}

async fn query(
    conn: &mut mysql_async::Conn,
    statement: String,
    params: Vec<ParameterValue>,
    max_result_bytes: usize,
) -> Result<RowSet, Error> {
    let mut result = conn
        .exec_iter(&statement, to_params(params))
        .await
        .map_err(|e| Error::QueryFailed(format!("{e:?}")))?;
    let columns: Vec<Column> = result
        .columns()
        .map(|columns| columns.iter().map(column).collect())
        .unwrap_or_default();
    let mut stream = result
        .stream::<mysql_async::Row>()
        .await
        .map_err(|e| Error::Other(e.to_string()))?
        .ok_or_else(|| Error::Other("unable to stream query result".into()))?;
    let mut rows = Vec::new();
    let mut bytes = std::mem::size_of::<RowSet>();
    while let Some(row) = stream
        .try_next()
        .await
        .map_err(|e| Error::Other(e.to_string()))?
    {
        let row = convert_row(row, &columns)?;
        bytes += row.iter().map(memory_size).sum::<usize>();
        if bytes > max_result_bytes {
            return Err(Error::Other(format!(
                "query result exceeds limit of {max_result_bytes} bytes"
            )));
        }
        rows.push(row);
    }
    Ok(RowSet { columns, rows })
}

/// What a value costs in host memory, counted as Spin counts it.
fn memory_size(value: &DbValue) -> usize {
    std::mem::size_of::<DbValue>()
        + match value {
            DbValue::Str(s) => s.len(),
            DbValue::Binary(b) => b.len(),
            _ => 0,
        }
}

fn to_params(params: Vec<ParameterValue>) -> mysql_async::Params {
    mysql_async::Params::Positional(
        params
            .into_iter()
            .map(|p| match p {
                ParameterValue::Boolean(v) => Value::from(v),
                ParameterValue::Int8(v) => Value::from(v),
                ParameterValue::Int16(v) => Value::from(v),
                ParameterValue::Int32(v) => Value::from(v),
                ParameterValue::Int64(v) => Value::from(v),
                ParameterValue::Uint8(v) => Value::from(v),
                ParameterValue::Uint16(v) => Value::from(v),
                ParameterValue::Uint32(v) => Value::from(v),
                ParameterValue::Uint64(v) => Value::from(v),
                ParameterValue::Floating32(v) => Value::from(v),
                ParameterValue::Floating64(v) => Value::from(v),
                ParameterValue::Str(v) => Value::from(v),
                ParameterValue::Binary(v) => Value::from(v),
                ParameterValue::DbNull => Value::NULL,
            })
            .collect(),
    )
}

fn column(column: &mysql_async::Column) -> Column {
    Column {
        name: column.name_str().into_owned(),
        data_type: data_type(column),
    }
}

/// Spin's mapping: numbers by width and sign; of the character types the STRING, VAR_STRING
/// (how the protocol reports CHAR and VARCHAR) and BLOB families, as text or, with the binary
/// flag (binary collations too), as bytes; everything else (DECIMAL, dates, JSON, ENUM, ...) is
/// `other`, and a row holding a non-NULL value of it fails to convert.
fn data_type(column: &mysql_async::Column) -> DbDataType {
    let kind = column.column_type();
    let flags = column.flags();
    if kind.is_numeric_type() {
        let signed = !flags.contains(ColumnFlags::UNSIGNED_FLAG);
        match (kind, signed) {
            (ColumnType::MYSQL_TYPE_DOUBLE, _) => DbDataType::Floating64,
            (ColumnType::MYSQL_TYPE_FLOAT, _) => DbDataType::Floating32,
            (ColumnType::MYSQL_TYPE_INT24 | ColumnType::MYSQL_TYPE_LONG, true) => DbDataType::Int32,
            (ColumnType::MYSQL_TYPE_INT24 | ColumnType::MYSQL_TYPE_LONG, false) => {
                DbDataType::Uint32
            }
            (ColumnType::MYSQL_TYPE_LONGLONG, true) => DbDataType::Int64,
            (ColumnType::MYSQL_TYPE_LONGLONG, false) => DbDataType::Uint64,
            (ColumnType::MYSQL_TYPE_SHORT, true) => DbDataType::Int16,
            (ColumnType::MYSQL_TYPE_SHORT, false) => DbDataType::Uint16,
            (ColumnType::MYSQL_TYPE_TINY, true) => DbDataType::Int8,
            (ColumnType::MYSQL_TYPE_TINY, false) => DbDataType::Uint8,
            _ => DbDataType::Other,
        }
    } else if kind.is_character_type() {
        let binary = flags.contains(ColumnFlags::BINARY_FLAG);
        match (kind, binary) {
            (ColumnType::MYSQL_TYPE_BLOB, false) => DbDataType::Str,
            (ColumnType::MYSQL_TYPE_BLOB, true)
            | (ColumnType::MYSQL_TYPE_LONG_BLOB | ColumnType::MYSQL_TYPE_MEDIUM_BLOB, _) => {
                DbDataType::Binary
            }
            (ColumnType::MYSQL_TYPE_STRING | ColumnType::MYSQL_TYPE_VAR_STRING, true) => {
                DbDataType::Binary
            }
            (ColumnType::MYSQL_TYPE_STRING | ColumnType::MYSQL_TYPE_VAR_STRING, false) => {
                DbDataType::Str
            }
            _ => DbDataType::Other,
        }
    } else {
        DbDataType::Other
    }
}

fn convert_row(mut row: mysql_async::Row, columns: &[Column]) -> Result<Vec<DbValue>, Error> {
    (0..row.len())
        .map(|index| match (row.take(index), columns.get(index)) {
            (None, _) | (Some(Value::NULL), _) => Ok(DbValue::DbNull),
            (_, None) => Err(Error::Other(format!("Can't get column at index {index}"))),
            (Some(value), Some(column)) => convert_value(value, column),
        })
        .collect()
}

fn convert_value(value: Value, column: &Column) -> Result<DbValue, Error> {
    fn to<T: FromValue>(value: Value) -> Result<T, Error> {
        mysql_async::from_value_opt::<T>(value)
            .map_err(|e| Error::ValueConversionFailed(e.to_string()))
    }
    Ok(match column.data_type {
        DbDataType::Binary => DbValue::Binary(to(value)?),
        DbDataType::Boolean => DbValue::Boolean(to(value)?),
        DbDataType::Floating32 => DbValue::Floating32(to(value)?),
        DbDataType::Floating64 => DbValue::Floating64(to(value)?),
        DbDataType::Int8 => DbValue::Int8(to(value)?),
        DbDataType::Int16 => DbValue::Int16(to(value)?),
        DbDataType::Int32 => DbValue::Int32(to(value)?),
        DbDataType::Int64 => DbValue::Int64(to(value)?),
        DbDataType::Str => DbValue::Str(to(value)?),
        DbDataType::Uint8 => DbValue::Uint8(to(value)?),
        DbDataType::Uint16 => DbValue::Uint16(to(value)?),
        DbDataType::Uint32 => DbValue::Uint32(to(value)?),
        DbDataType::Uint64 => DbValue::Uint64(to(value)?),
        DbDataType::Other => {
            return Err(Error::ValueConversionFailed(format!(
                "Cannot convert value {value:?} in column {} data type {:?}",
                column.name, column.data_type
            )))
        }
    })
}
