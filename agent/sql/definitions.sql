-- The columns of a primary key, in key order; NULL when the table has none.
CREATE OR REPLACE FUNCTION pgfanout.primary_key_of(relation oid) RETURNS text[]
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $key$
    SELECT array_agg(a.attname::text ORDER BY k.ordinality)
      FROM pg_index i CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY k(attnum, ordinality)
      JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
     WHERE i.indrelid = relation AND i.indisprimary
$key$;

-- A published table's definition, as replicas build it (schemas/table.avsc, TableDefinition): its columns
-- in order (with attnum, by which a rename is told from a drop and an add), PRIMARY KEY, UNIQUE, CHECK and
-- EXCLUDE constraints, the indexes that back no constraint, and the primary key's columns. Names come back
-- qualified (search_path is pg_catalog), as subscriber/ddl.py reads a table from a replica, so the two
-- compare as text.
CREATE OR REPLACE FUNCTION pgfanout.table_definition(relation oid) RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $definition$
    SELECT jsonb_build_object(
        'primary_key', coalesce(to_jsonb(pgfanout.primary_key_of(relation)), '[]'),
        'columns', coalesce((
            SELECT jsonb_agg(jsonb_build_object(
                       'attnum', a.attnum, 'name', a.attname, 'type', format_type(a.atttypid, a.atttypmod),
                       'not_null', a.attnotnull,
                       'collation', CASE WHEN a.attcollation <> 0 AND a.attcollation <> t.typcollation
                                         THEN quote_ident(cn.nspname) || '.' || quote_ident(co.collname) ELSE '' END,
                       'generated', CASE WHEN a.attgenerated = 's' THEN pg_get_expr(d.adbin, d.adrelid) ELSE '' END)
                   ORDER BY a.attnum)
            FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
            LEFT JOIN pg_collation co ON co.oid = a.attcollation
            LEFT JOIN pg_namespace cn ON cn.oid = co.collnamespace
            LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
            WHERE a.attrelid = relation AND a.attnum > 0 AND NOT a.attisdropped), '[]'),
        'constraints', coalesce((
            SELECT jsonb_agg(jsonb_build_object('name', conname, 'definition', pg_get_constraintdef(oid))
                   ORDER BY contype <> 'p', conname)
            FROM pg_constraint WHERE conrelid = relation AND contype IN ('p', 'u', 'c', 'x')), '[]'),
        'indexes', coalesce((
            SELECT jsonb_agg(jsonb_build_object('name', c.relname, 'definition', pg_get_indexdef(i.indexrelid))
                   ORDER BY c.relname)
            FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
            WHERE i.indrelid = relation AND NOT EXISTS (
                SELECT FROM pg_constraint k WHERE k.conrelid = i.indrelid AND k.conindid = i.indexrelid)), '[]'))
$definition$;


-- A schema change as a change of the calling transaction, where it happens among the others: 'S' (the
-- table's new layout `table_id` takes effect here) or 'T' (the table emptied, before it is filled again
-- after a rewrite). The C trigger's tables take it into their transaction's buffer, in order with the rows.
CREATE OR REPLACE FUNCTION pgfanout.log_event(relation oid, table_id integer, op "char") RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $event$
DECLARE
    log_table text;
BEGIN
    IF EXISTS (SELECT FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid JOIN pg_language l ON l.oid = p.prolang
               WHERE t.tgrelid = relation AND t.tgname = 'pgfanout_capture' AND l.lanname = 'c') THEN
        PERFORM pgfanout.capture_event(table_id, op);
        RETURN;
    END IF;
    SELECT format('pgfanout.%I', 'log_' || current_log) INTO log_table FROM pgfanout.agent_state;
    EXECUTE format('INSERT INTO %s (table_id, op) VALUES ($1, $2)', log_table) USING table_id, op;
END $event$;
REVOKE ALL ON FUNCTION pgfanout.log_event(oid, integer, "char") FROM PUBLIC;
