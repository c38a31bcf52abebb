-- The PL/pgSQL capture function of one table layout, from one template: install creates it, and the ALTER
-- TABLE event trigger (follow_ddl.sql) replaces it with the table's new layout. Each change becomes one
-- log row of the columns' texts, written with the settings that shape those texts pinned on the function.
--
-- Every name in the body is schema-qualified (types, operators, the log), so the function needs no pinned
-- search_path: a SET clause costs each call a settings save and restore and a search path recomputation,
-- about 15% of the trigger's cost, and pgbench's hot rows stay locked while triggers run. A key change is
-- told by the keys' text (key columns are NOT NULL), which needs no type's equality operator from the
-- caller's search_path; a key whose text changes but whose value compares equal is logged as changed,
-- which the replica applies alike.

-- The columns of `record` (a row variable or alias) as a text[] expression; 'NULL' for none.
CREATE OR REPLACE FUNCTION pgfanout.text_array_sql(record text, columns text[]) RETURNS text LANGUAGE sql
IMMUTABLE SET search_path = pg_catalog, pg_temp AS $array$
    SELECT CASE WHEN cardinality(columns) = 0 THEN 'NULL' ELSE 'ARRAY['
        || (SELECT string_agg(format('%s.%I::pg_catalog.text', record, c), ', ') FROM unnest(columns) c)
        || ']::pg_catalog.text[]' END
$array$;

-- `settings`: the [name, value, ...] pairs pgfanout.tables.settings holds.
CREATE OR REPLACE FUNCTION pgfanout.capture_function_sql(function_name text, table_id integer, columns text[],
    key_columns text[], old_columns text[], log_table text, settings text[]) RETURNS text LANGUAGE sql
IMMUTABLE SET search_path = pg_catalog, pg_temp AS $template$
SELECT format($function$CREATE OR REPLACE FUNCTION %1$s() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER %2$s AS $body$
BEGIN
    IF TG_OP OPERATOR(pg_catalog.=) 'INSERT' THEN
        INSERT INTO %3$s (table_id, op, new_row) VALUES (%4$s, 'I', %5$s);
    ELSIF TG_OP OPERATOR(pg_catalog.=) 'UPDATE' THEN
        INSERT INTO %3$s (table_id, op, new_row, old_key, old_values) VALUES (%4$s, 'U', %5$s,
            CASE WHEN %6$s OPERATOR(pg_catalog.<>) %7$s THEN %6$s END, %8$s);
    ELSIF TG_OP OPERATOR(pg_catalog.=) 'DELETE' THEN
        INSERT INTO %3$s (table_id, op, old_key, old_values) VALUES (%4$s, 'D', %6$s, %8$s);
    ELSIF TG_OP OPERATOR(pg_catalog.=) 'TRUNCATE' THEN
        INSERT INTO %3$s (table_id, op) VALUES (%4$s, 'T');
    END IF;
    RETURN NULL;
END
$body$$function$,
    function_name,
    (SELECT coalesce(string_agg(format('SET %I = %L', settings[i], settings[i + 1]), ' ' ORDER BY i), '')
       FROM generate_series(1, cardinality(settings), 2) i),
    log_table, table_id,
    pgfanout.text_array_sql('NEW', columns),
    pgfanout.text_array_sql('OLD', key_columns), pgfanout.text_array_sql('NEW', key_columns),
    pgfanout.text_array_sql('OLD', old_columns))
$template$;

CREATE OR REPLACE FUNCTION pgfanout.create_capture_function(function_name text, table_id integer, columns text[],
    key_columns text[], old_columns text[], log_table text, settings text[]) RETURNS void LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $create$
BEGIN
    EXECUTE pgfanout.capture_function_sql(function_name, table_id, columns, key_columns, old_columns, log_table,
                                          settings);
END $create$;
REVOKE ALL ON FUNCTION pgfanout.create_capture_function(text, integer, text[], text[], text[], text, text[]) FROM PUBLIC;
