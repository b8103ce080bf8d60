//! Metadata commands: what BI tools and ADBC ask before they run anything.
//!
//! Every listing comes from the engine for the calling principal, so a table without a grant
//! is absent here exactly as it is in SQL. Results are small and built at DoGet time; their
//! tickets are the commands themselves (no data is embedded, nothing to sign).

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow_flight::sql::metadata::{
    SqlInfoData, SqlInfoDataBuilder, XdbcTypeInfo, XdbcTypeInfoData, XdbcTypeInfoDataBuilder,
};
use arrow_flight::sql::{
    CommandGetCatalogs, CommandGetDbSchemas, CommandGetTableTypes, CommandGetTables, Nullable,
    ProstMessageExt, Searchable, SqlInfo, SqlNullOrdering, SqlOuterJoinsSupportLevel,
    SqlSupportedCaseSensitivity, SqlSupportedTransaction, SupportedSqlGrammar, XdbcDataType,
    XdbcDatetimeSubcode,
};
use arrow_flight::{FlightDescriptor, FlightEndpoint, FlightInfo, Ticket};
use prost::Message;
use tonic::{Response, Status};

use super::encode::{batches_stream, wire_schema};
use super::{DoGetStream, FlightSqlServer, to_status};
use crate::error::{Error, Result};
use crate::security::Principal;
use crate::storage::{CATALOG_NAME, Layer};

pub(super) fn flight_error(e: arrow_flight::error::FlightError) -> Error {
    Error::internal(format!("metadata: {e}"))
}

/// The table type every Strata table reports.
pub(super) const TABLE_TYPE: &str = "TABLE";

/// FlightInfo whose ticket is the command itself.
pub(super) fn info_for(
    command: impl ProstMessageExt,
    schema: &Schema,
    descriptor: FlightDescriptor,
) -> std::result::Result<Response<FlightInfo>, Status> {
    let ticket = Ticket::new(command.as_any().encode_to_vec());
    let info = FlightInfo::new()
        .try_with_schema(schema)
        .map_err(|e| to_status(Error::internal(e.to_string())))?
        .with_endpoint(FlightEndpoint::new().with_ticket(ticket))
        .with_descriptor(descriptor);
    Ok(Response::new(info))
}

/// An empty result with `schema` (we declare no keys).
pub(super) fn empty_response(schema: SchemaRef) -> Response<DoGetStream> {
    let batch = RecordBatch::new_empty(Arc::clone(&schema));
    batch_response(schema, batch)
}

pub(super) fn batch_response(schema: SchemaRef, batch: RecordBatch) -> Response<DoGetStream> {
    Response::new(Box::pin(batches_stream(schema, vec![batch])))
}

pub(super) fn sql_info_data() -> Result<SqlInfoData> {
    let mut b = SqlInfoDataBuilder::new();
    b.append(SqlInfo::FlightSqlServerName, "Strata");
    b.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
    b.append(SqlInfo::FlightSqlServerArrowVersion, "1.5");
    b.append(SqlInfo::FlightSqlServerReadOnly, false);
    b.append(SqlInfo::FlightSqlServerSql, true);
    b.append(SqlInfo::FlightSqlServerSubstrait, false);
    b.append(
        SqlInfo::FlightSqlServerTransaction,
        SqlSupportedTransaction::None as i32,
    );
    b.append(SqlInfo::FlightSqlServerCancel, true);
    b.append(SqlInfo::FlightSqlServerBulkIngestion, true);
    b.append(SqlInfo::FlightSqlServerIngestTransactionsSupported, false);
    b.append(SqlInfo::FlightSqlServerStatementTimeout, 0i32);
    b.append(SqlInfo::FlightSqlServerTransactionTimeout, 0i32);
    b.append(SqlInfo::SqlDdlCatalog, false);
    b.append(SqlInfo::SqlDdlSchema, false);
    b.append(SqlInfo::SqlDdlTable, true);
    // Unquoted identifiers fold to lower case; quoted ones keep their case.
    b.append(
        SqlInfo::SqlIdentifierCase,
        SqlSupportedCaseSensitivity::SqlCaseSensitivityLowercase as i32,
    );
    b.append(SqlInfo::SqlIdentifierQuoteChar, "\"");
    b.append(
        SqlInfo::SqlQuotedIdentifierCase,
        SqlSupportedCaseSensitivity::SqlCaseSensitivityCaseInsensitive as i32,
    );
    b.append(SqlInfo::SqlAllTablesAreSelectable, false);
    b.append(
        SqlInfo::SqlNullOrdering,
        SqlNullOrdering::SqlNullsSortedHigh as i32,
    );
    b.append(
        SqlInfo::SqlKeywords,
        vec![
            "ASOF",
            "MERGE",
            "OVERWRITE",
            "PARTITIONED",
            "TIMESTAMP",
            "VERSION",
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>(),
    );
    b.append(
        SqlInfo::SqlNumericFunctions,
        strings(&[
            "abs", "acos", "asin", "atan", "atan2", "cbrt", "ceil", "cos", "exp", "floor", "ln",
            "log", "log10", "log2", "pi", "power", "radians", "degrees", "random", "round",
            "signum", "sin", "sqrt", "tan", "trunc",
        ]),
    );
    b.append(
        SqlInfo::SqlStringFunctions,
        strings(&[
            "ascii",
            "btrim",
            "char_length",
            "concat",
            "concat_ws",
            "initcap",
            "left",
            "length",
            "lower",
            "lpad",
            "ltrim",
            "octet_length",
            "repeat",
            "replace",
            "reverse",
            "right",
            "rpad",
            "rtrim",
            "split_part",
            "starts_with",
            "strpos",
            "substr",
            "substring",
            "translate",
            "trim",
            "upper",
        ]),
    );
    b.append(
        SqlInfo::SqlSystemFunctions,
        strings(&["coalesce", "nullif", "nvl"]),
    );
    b.append(
        SqlInfo::SqlDatetimeFunctions,
        strings(&[
            "current_date",
            "current_time",
            "current_timestamp",
            "date_bin",
            "date_part",
            "date_trunc",
            "extract",
            "from_unixtime",
            "now",
            "to_timestamp",
        ]),
    );
    b.append(SqlInfo::SqlSearchStringEscape, "\\");
    b.append(SqlInfo::SqlExtraNameCharacters, "");
    b.append(SqlInfo::SqlSupportsColumnAliasing, true);
    b.append(SqlInfo::SqlNullPlusNullIsNull, true);
    b.append(SqlInfo::SqlSupportsTableCorrelationNames, true);
    b.append(SqlInfo::SqlSupportsDifferentTableCorrelationNames, false);
    b.append(SqlInfo::SqlSupportsExpressionsInOrderBy, true);
    b.append(SqlInfo::SqlSupportsOrderByUnrelated, true);
    b.append(SqlInfo::SqlSupportedGroupBy, 0b11i32);
    b.append(SqlInfo::SqlSupportsLikeEscapeClause, true);
    b.append(SqlInfo::SqlSupportsNonNullableColumns, true);
    b.append(
        SqlInfo::SqlSupportedGrammar,
        1i32 << SupportedSqlGrammar::SqlCoreGrammar as i32
            | 1i32 << SupportedSqlGrammar::SqlMinimumGrammar as i32,
    );
    // ANSI-92 entry and intermediate levels (bit positions 0 and 1).
    b.append(SqlInfo::SqlAnsi92SupportedLevel, 0b011i32);
    b.append(SqlInfo::SqlSupportsIntegrityEnhancementFacility, false);
    b.append(
        SqlInfo::SqlOuterJoinsSupportLevel,
        SqlOuterJoinsSupportLevel::SqlFullOuterJoins as i32,
    );
    b.append(SqlInfo::SqlSchemaTerm, "schema");
    b.append(SqlInfo::SqlProcedureTerm, "procedure");
    b.append(SqlInfo::SqlCatalogTerm, "catalog");
    b.append(SqlInfo::SqlCatalogAtStart, true);
    b.append(SqlInfo::SqlSchemasSupportedActions, 0b111i32);
    b.append(SqlInfo::SqlCatalogsSupportedActions, 0b111i32);
    b.append(SqlInfo::SqlSupportedPositionedCommands, 0i32);
    b.append(SqlInfo::SqlSelectForUpdateSupported, false);
    b.append(SqlInfo::SqlStoredProceduresSupported, false);
    b.append(SqlInfo::SqlSupportedSubqueries, 0b1111i32);
    b.append(SqlInfo::SqlCorrelatedSubqueriesSupported, true);
    b.append(SqlInfo::SqlSupportedUnions, 0b11i32);
    for limit in [
        SqlInfo::SqlMaxBinaryLiteralLength,
        SqlInfo::SqlMaxCharLiteralLength,
        SqlInfo::SqlMaxColumnsInGroupBy,
        SqlInfo::SqlMaxColumnsInIndex,
        SqlInfo::SqlMaxColumnsInOrderBy,
        SqlInfo::SqlMaxColumnsInSelect,
        SqlInfo::SqlMaxColumnsInTable,
        SqlInfo::SqlMaxConnections,
        SqlInfo::SqlMaxCursorNameLength,
        SqlInfo::SqlMaxIndexLength,
        SqlInfo::SqlMaxProcedureNameLength,
        SqlInfo::SqlMaxRowSize,
        SqlInfo::SqlMaxStatementLength,
        SqlInfo::SqlMaxStatements,
        SqlInfo::SqlMaxTablesInSelect,
        SqlInfo::SqlMaxUsernameLength,
    ] {
        // 0: no known limit.
        b.append(limit, 0i64);
    }
    b.append(SqlInfo::SqlMaxColumnNameLength, 128i64);
    b.append(SqlInfo::SqlDbSchemaNameLength, 128i64);
    b.append(SqlInfo::SqlMaxCatalogNameLength, 128i64);
    b.append(SqlInfo::SqlMaxTableNameLength, 128i64);
    b.append(SqlInfo::SqlMaxRowSizeIncludesBlobs, true);
    b.append(SqlInfo::SqlDefaultTransactionIsolation, 0i64);
    b.append(SqlInfo::SqlTransactionsSupported, false);
    b.append(SqlInfo::SqlSupportedTransactionsIsolationLevels, 0i32);
    b.append(SqlInfo::SqlDataDefinitionCausesTransactionCommit, true);
    b.append(SqlInfo::SqlDataDefinitionsInTransactionsIgnored, false);
    b.append(SqlInfo::SqlSupportedResultSetTypes, 0b10i32);
    b.append(SqlInfo::SqlBatchUpdatesSupported, false);
    b.append(SqlInfo::SqlSavepointsSupported, false);
    b.append(SqlInfo::SqlNamedParametersSupported, false);
    b.append(SqlInfo::SqlLocatorsUpdateCopy, false);
    b.append(SqlInfo::SqlStoredFunctionsUsingCallSyntaxSupported, false);
    b.build()
        .map_err(|e| Error::internal(format!("sql info: {e}")))
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

// One row of the type table; the arguments mirror its columns.
#[allow(clippy::too_many_arguments)]
fn xdbc(
    name: &str,
    data_type: XdbcDataType,
    column_size: Option<i32>,
    literal: Option<(&str, &str)>,
    create_params: Option<Vec<String>>,
    searchable: Searchable,
    numeric: bool,
    sql_data_type: XdbcDataType,
    subcode: Option<XdbcDatetimeSubcode>,
) -> XdbcTypeInfo {
    XdbcTypeInfo {
        type_name: name.to_string(),
        data_type,
        column_size,
        literal_prefix: literal.map(|(p, _)| p.to_string()),
        literal_suffix: literal.map(|(_, s)| s.to_string()),
        create_params,
        nullable: Nullable::NullabilityNullable,
        case_sensitive: matches!(data_type, XdbcDataType::XdbcVarchar),
        searchable,
        unsigned_attribute: numeric.then_some(false),
        fixed_prec_scale: matches!(data_type, XdbcDataType::XdbcDecimal),
        auto_increment: numeric.then_some(false),
        local_type_name: Some(name.to_string()),
        minimum_scale: matches!(data_type, XdbcDataType::XdbcDecimal).then_some(0),
        maximum_scale: matches!(data_type, XdbcDataType::XdbcDecimal).then_some(38),
        sql_data_type,
        datetime_subcode: subcode,
        num_prec_radix: numeric.then_some(10),
        interval_precision: None,
    }
}

/// Every type Strata returns, as JDBC/ODBC drivers (Power BI, Tableau) expect to see them.
pub(super) fn xdbc_data() -> Result<XdbcTypeInfoData> {
    use XdbcDataType as X;
    let full = Searchable::Full;
    let mut b = XdbcTypeInfoDataBuilder::new();
    for info in [
        xdbc(
            "BOOLEAN",
            X::XdbcBit,
            Some(1),
            None,
            None,
            Searchable::Basic,
            false,
            X::XdbcBit,
            None,
        ),
        xdbc(
            "TINYINT",
            X::XdbcTinyint,
            Some(3),
            None,
            None,
            full,
            true,
            X::XdbcTinyint,
            None,
        ),
        xdbc(
            "SMALLINT",
            X::XdbcSmallint,
            Some(5),
            None,
            None,
            full,
            true,
            X::XdbcSmallint,
            None,
        ),
        xdbc(
            "INTEGER",
            X::XdbcInteger,
            Some(10),
            None,
            None,
            full,
            true,
            X::XdbcInteger,
            None,
        ),
        xdbc(
            "BIGINT",
            X::XdbcBigint,
            Some(19),
            None,
            None,
            full,
            true,
            X::XdbcBigint,
            None,
        ),
        xdbc(
            "FLOAT",
            X::XdbcFloat,
            Some(7),
            None,
            None,
            full,
            true,
            X::XdbcFloat,
            None,
        ),
        xdbc(
            "DOUBLE",
            X::XdbcDouble,
            Some(15),
            None,
            None,
            full,
            true,
            X::XdbcDouble,
            None,
        ),
        xdbc(
            "DECIMAL",
            X::XdbcDecimal,
            Some(38),
            None,
            Some(strings(&["precision", "scale"])),
            full,
            true,
            X::XdbcDecimal,
            None,
        ),
        xdbc(
            "VARCHAR",
            X::XdbcVarchar,
            Some(i32::MAX),
            Some(("'", "'")),
            None,
            full,
            false,
            X::XdbcVarchar,
            None,
        ),
        xdbc(
            "VARBINARY",
            X::XdbcVarbinary,
            Some(i32::MAX),
            Some(("X'", "'")),
            None,
            Searchable::None,
            false,
            X::XdbcVarbinary,
            None,
        ),
        xdbc(
            "DATE",
            X::XdbcDate,
            Some(10),
            Some(("DATE '", "'")),
            None,
            full,
            false,
            X::XdbcDatetime,
            Some(XdbcDatetimeSubcode::XdbcSubcodeYear),
        ),
        xdbc(
            "TIMESTAMP",
            X::XdbcTimestamp,
            Some(26),
            Some(("TIMESTAMP '", "'")),
            None,
            full,
            false,
            X::XdbcDatetime,
            Some(XdbcDatetimeSubcode::XdbcSubcodeTimestamp),
        ),
    ] {
        b.append(info);
    }
    b.build()
        .map_err(|e| Error::internal(format!("xdbc info: {e}")))
}

impl FlightSqlServer {
    pub(super) fn catalogs_batch(
        &self,
        query: CommandGetCatalogs,
    ) -> Result<(SchemaRef, RecordBatch)> {
        let mut b = query.into_builder();
        b.append(CATALOG_NAME);
        let schema = b.schema();
        Ok((schema, b.build().map_err(flight_error)?))
    }

    pub(super) fn schemas_batch(
        &self,
        query: CommandGetDbSchemas,
    ) -> Result<(SchemaRef, RecordBatch)> {
        let mut b = query.into_builder();
        for layer in Layer::ALL {
            b.append(CATALOG_NAME, layer.as_str());
        }
        let schema = b.schema();
        Ok((schema, b.build().map_err(flight_error)?))
    }

    pub(super) fn table_types_batch(
        &self,
        query: CommandGetTableTypes,
    ) -> Result<(SchemaRef, RecordBatch)> {
        let mut b = query.into_builder();
        b.append(TABLE_TYPE);
        let schema = b.schema();
        Ok((schema, b.build().map_err(flight_error)?))
    }

    /// Tables the principal may see (patterns and `include_schema` applied by the builder).
    pub(super) async fn tables_batch(
        &self,
        p: &Arc<Principal>,
        query: CommandGetTables,
        downcast: bool,
    ) -> Result<(SchemaRef, RecordBatch)> {
        let mut b = query.into_builder();
        for (t, schema) in self.engine.table_schemas(p).await? {
            let origins = vec![Some(t.clone()); schema.fields().len()];
            let wire = wire_schema(
                &super::columns::with_metadata(&schema, &origins, false),
                downcast,
            );
            b.append(CATALOG_NAME, t.layer.as_str(), &t.name, TABLE_TYPE, &wire)
                .map_err(flight_error)?;
        }
        let schema = b.schema();
        Ok((schema, b.build().map_err(flight_error)?))
    }
}

/// Schemas of the key commands (we declare no keys: the results are empty).
pub(super) fn primary_keys_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("catalog_name", DataType::Utf8, true),
        Field::new("db_schema_name", DataType::Utf8, true),
        Field::new("table_name", DataType::Utf8, false),
        Field::new("column_name", DataType::Utf8, false),
        Field::new("key_name", DataType::Utf8, true),
        Field::new("key_sequence", DataType::Int32, false),
    ]))
}

pub(super) fn foreign_keys_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("pk_catalog_name", DataType::Utf8, true),
        Field::new("pk_db_schema_name", DataType::Utf8, true),
        Field::new("pk_table_name", DataType::Utf8, false),
        Field::new("pk_column_name", DataType::Utf8, false),
        Field::new("fk_catalog_name", DataType::Utf8, true),
        Field::new("fk_db_schema_name", DataType::Utf8, true),
        Field::new("fk_table_name", DataType::Utf8, false),
        Field::new("fk_column_name", DataType::Utf8, false),
        Field::new("key_sequence", DataType::Int32, false),
        Field::new("fk_key_name", DataType::Utf8, true),
        Field::new("pk_key_name", DataType::Utf8, true),
        Field::new("update_rule", DataType::UInt8, false),
        Field::new("delete_rule", DataType::UInt8, false),
    ]))
}
