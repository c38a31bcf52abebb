-- The C capture trigger's functions, from the pgfanout_capture library in the server's library directory
-- (make capture-lib); only a superuser can create them.
CREATE OR REPLACE FUNCTION pgfanout.capture_packed() RETURNS trigger LANGUAGE c
    AS '$libdir/pgfanout_capture', 'pgfanout_capture';

-- Every row of a relation as inserted into or deleted from a published table (partitions.sql).
CREATE OR REPLACE FUNCTION pgfanout.capture_rows(relation oid, published oid, op "char") RETURNS bigint
    LANGUAGE c STRICT AS '$libdir/pgfanout_capture', 'pgfanout_capture_rows';
REVOKE ALL ON FUNCTION pgfanout.capture_rows(oid, oid, "char") FROM PUBLIC;

-- A schema change (or the emptying before a rewritten table's rows) in the transaction's buffer (definitions.sql).
CREATE OR REPLACE FUNCTION pgfanout.capture_event(table_id integer, op "char") RETURNS void
    LANGUAGE c STRICT AS '$libdir/pgfanout_capture', 'pgfanout_capture_event';
REVOKE ALL ON FUNCTION pgfanout.capture_event(integer, "char") FROM PUBLIC;
