"""Strata through the Python ADBC Flight SQL driver, exactly as a data scientist uses it.

Run by tests/it/python.rs against a live server; connection details come from the
environment (STRATA_FLIGHT_URI and tokens). Every connection uses the driver's defaults.
"""

import os

import adbc_driver_flightsql
import adbc_driver_flightsql.dbapi as flight_sql
import pandas as pd
import polars as pl
import pyarrow as pa
import pytest

URI = os.environ["STRATA_FLIGHT_URI"]
ADMIN = os.environ["STRATA_ADMIN_TOKEN"]
ANALYST = os.environ["STRATA_ANALYST_TOKEN"]


def connect(token):
    return flight_sql.connect(
        URI,
        db_kwargs={adbc_driver_flightsql.DatabaseOptions.AUTHORIZATION_HEADER.value: f"Bearer {token}"},
    )


def test_query_with_qmark_parameters():
    with connect(ADMIN) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT id, name FROM gold.people WHERE id > ? AND name <> ? ORDER BY id",
            parameters=(17, "p19"),
        )
        table = cur.fetch_arrow_table()
        assert table.column("id").to_pylist() == [18, 20]
        assert table.schema.field("name").type in (pa.string(), pa.large_string())


def test_query_with_numbered_parameters_and_many_rows():
    with connect(ADMIN) as conn, conn.cursor() as cur:
        cur.execute("SELECT id FROM gold.people WHERE id >= $1 AND id <= $2 ORDER BY id", parameters=(3, 12))
        assert [r[0] for r in cur.fetchall()] == list(range(3, 13))


def test_get_objects_and_table_schema_show_only_granted_tables():
    with connect(ANALYST) as conn:
        objects = conn.adbc_get_objects(depth="tables").read_all().to_pylist()
        tables = {
            (schema["db_schema_name"], table["table_name"])
            for catalog in objects
            for schema in (catalog["catalog_db_schemas"] or [])
            for table in (schema["db_schema_tables"] or [])
        }
        assert tables == {("gold", "people")}
        schema = conn.adbc_get_table_schema("people", db_schema_filter="gold")
        assert schema.names == ["id", "name", "amount"]
        with pytest.raises(Exception):
            conn.adbc_get_table_schema("hidden", db_schema_filter="silver")
    with connect(ADMIN) as conn:
        objects = conn.adbc_get_objects(depth="tables").read_all().to_pylist()
        names = {
            table["table_name"]
            for catalog in objects
            for schema in (catalog["catalog_db_schemas"] or [])
            for table in (schema["db_schema_tables"] or [])
        }
        assert {"people", "hidden"} <= names


def test_analyst_cannot_read_or_write_outside_grants():
    with connect(ANALYST) as conn, conn.cursor() as cur:
        with pytest.raises(Exception, match="not found"):
            cur.execute("SELECT * FROM silver.hidden")
        with pytest.raises(Exception):
            cur.execute("INSERT INTO gold.people VALUES (99, 'x', 1.0)")


def test_adbc_ingest_create_append_replace():
    data = pa.table({"id": pa.array([1, 2, 3], pa.int64()), "label": ["a", "b", "c"]})
    with connect(ADMIN) as conn, conn.cursor() as cur:
        assert cur.adbc_ingest("ingested", data, mode="create", db_schema_name="bronze") == 3
        assert cur.adbc_ingest("ingested", data, mode="append", db_schema_name="bronze") == 3
        cur.execute("SELECT count(*) AS n FROM bronze.ingested")
        assert cur.fetchone()[0] == 6
        assert cur.adbc_ingest("ingested", data.slice(0, 1), mode="replace", db_schema_name="bronze") == 1
        cur.execute("SELECT count(*) AS n FROM bronze.ingested")
        assert cur.fetchone()[0] == 1
        with pytest.raises(Exception):
            cur.adbc_ingest("ingested", data, mode="create", db_schema_name="bronze")


def test_ddl_and_dml_through_the_cursor():
    with connect(ADMIN) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE silver.from_python (id BIGINT NOT NULL, note STRING)")
        cur.execute("INSERT INTO silver.from_python VALUES (?, ?)", parameters=(1, "one"))
        cur.execute("SELECT note FROM silver.from_python")
        assert cur.fetchall() == [("one",)]


def test_pandas_read_sql_and_polars_read_database():
    with connect(ADMIN) as conn:
        df = pd.read_sql("SELECT id, name, amount FROM gold.people ORDER BY id", conn)
        assert len(df) == 20
        assert list(df.columns) == ["id", "name", "amount"]
        assert df["id"].iloc[-1] == 20
        pdf = pl.read_database("SELECT id, amount FROM gold.people ORDER BY id", connection=conn)
        assert pdf.height == 20
        assert pdf["amount"].sum() == sum(range(1, 21))


def test_bad_token_is_rejected():
    with pytest.raises(Exception, match="(?i)unauthenticated|invalid token"):
        with connect("not.a.token") as conn, conn.cursor() as cur:
            cur.execute("SELECT 1")
            cur.fetchall()


def test_an_external_writer_commit_is_seen_on_the_next_query():
    """Another Delta writer (the deltalake package, as a Spark or delta-rs job would) appends
    to a table Strata serves; the next query sees the new version, and no cached result of
    the old version is served."""
    from deltalake import DeltaTable, write_deltalake

    path = os.path.join(os.environ["STRATA_WAREHOUSE"], "silver", "external")
    count = "SELECT count(*) AS n, sum(amount) AS total FROM silver.external"
    with connect(ADMIN) as conn, conn.cursor() as cur:
        cur.execute(count)
        assert cur.fetchall() == [(3, 6.0)]
        before = DeltaTable(path).version()
        schema = pa.schema(
            [
                pa.field("id", pa.int64(), nullable=False),
                pa.field("name", pa.string()),
                pa.field("amount", pa.float64()),
            ]
        )
        rows = pa.table({"id": [100, 101], "name": ["x", "y"], "amount": [10.0, 20.0]}, schema=schema)
        write_deltalake(path, rows, mode="append")
        assert DeltaTable(path).version() == before + 1
        cur.execute(count)
        assert cur.fetchall() == [(5, 36.0)]
        cur.execute("SELECT name FROM silver.external VERSION AS OF " + str(before) + " ORDER BY id")
        assert [r[0] for r in cur.fetchall()] == ["p1", "p2", "p3"]


def test_a_parameter_in_the_select_list_has_its_bound_type():
    # The FlightInfo after binding is typed by the bound values (the prepare-time type of
    # `? AS tag` is NULL); the Go driver refuses a DoGet schema that disagrees with it.
    with connect(ADMIN) as conn, conn.cursor() as cur:
        cur.execute("SELECT id, ? AS tag FROM gold.people WHERE id <= ? ORDER BY id", parameters=("x", 2))
        table = cur.fetch_arrow_table()
        assert table.column("tag").to_pylist() == ["x", "x"]
        assert pa.types.is_string(table.schema.field("tag").type) or pa.types.is_large_string(
            table.schema.field("tag").type
        )


def test_get_objects_reports_column_types():
    with connect(ADMIN) as conn:
        objects = conn.adbc_get_objects(depth="columns", db_schema_filter="gold", table_name_filter="people")
        columns = [
            column
            for catalog in objects.read_all().to_pylist()
            for schema in (catalog["catalog_db_schemas"] or [])
            for table in (schema["db_schema_tables"] or [])
            for column in (table["table_columns"] or [])
        ]
        types = {c["column_name"]: c["xdbc_type_name"] for c in columns}
        assert types == {"id": "BIGINT", "name": "VARCHAR", "amount": "DOUBLE"}, columns


def test_incremental_execution_polls_to_completion():
    # ADBC's incremental execution is PollFlightInfo: Strata answers complete at once.
    with connect(ADMIN) as conn, conn.cursor() as cur:
        cur.adbc_statement.set_options(**{"adbc.statement.exec.incremental": "true"})
        partitions, schema = cur.adbc_execute_partitions("SELECT count(*) AS n FROM gold.people")
        assert schema.names == ["n"]
        rows = []
        for partition in partitions:
            cur.adbc_read_partition(partition)
            rows.extend(cur.fetchall())
        assert rows == [(20,)]


def test_execute_schema_plans_without_running():
    # GetSchema: the schema a query would return, nothing executed.
    with connect(ADMIN) as conn, conn.cursor() as cur:
        schema = cur.adbc_execute_schema("SELECT id, name FROM gold.people")
        assert schema.names == ["id", "name"]
        assert schema.field("id").metadata[b"ARROW:FLIGHT:SQL:TYPE_NAME"] == b"BIGINT"
        assert schema.field("id").metadata[b"ARROW:FLIGHT:SQL:TABLE_NAME"] == b"people"


def test_flightsql_dbapi_runs_parameterised_queries():
    # flightsql-dbapi binds parameters with DoPut, then executes the handle it prepared (not
    # the one DoPut returned): the replica remembers the binding for that handle.
    from flightsql import FlightSQLClient
    from flightsql.dbapi import connect as dbapi_connect

    host, port = URI.removeprefix("grpc://").rsplit(":", 1)
    client = FlightSQLClient(host=host, port=int(port), token=ADMIN, insecure=True)
    conn = dbapi_connect(client)
    cur = conn.cursor()
    cur.execute("SELECT id, name FROM gold.people WHERE id > ? AND name <> ? ORDER BY id", (17, "p19"))
    assert [row[0] for row in cur.fetchall()] == [18, 20]
    cur.execute("SELECT count(*) AS n FROM gold.people")
    assert [list(row) for row in cur.fetchall()] == [[20]]
    conn.close()
