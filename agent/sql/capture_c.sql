-- What the C capture trigger (agent/capture_c) reads, installed with either trigger.

-- The layout the C trigger reads once per backend and table: the newest layout row of the relation, or for
-- a partition, of its nearest published ancestor (partitions.sql).
CREATE OR REPLACE FUNCTION pgfanout.layout_of(relation oid)
RETURNS TABLE (table_id integer, columns text[], key_columns text[], old_columns text[], settings text[])
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $layout$
    SELECT t.table_id, t.columns, t.key_columns, t.old_columns, t.settings
      FROM (SELECT relation AS relid, 0::bigint AS depth
            UNION ALL SELECT a.relid, a.depth FROM pg_partition_ancestors(relation) WITH ORDINALITY a(relid, depth)) a
      JOIN pg_class c ON c.oid = a.relid
      JOIN pg_namespace n ON n.oid = c.relnamespace
      JOIN pgfanout.tables t ON t.schema_name = n.nspname AND t.table_name = c.relname
     ORDER BY a.depth, t.table_id DESC LIMIT 1
$layout$;
REVOKE ALL ON FUNCTION pgfanout.layout_of(oid) FROM PUBLIC;

-- Writes a C trigger row from SQL (tests). point_capture_at() rewrites the log table it names, and that
-- rewrite is also what tells every backend's C trigger to read agent_state.current_log again (any pg_proc
-- change does), so it must stay installed even where no PL/pgSQL trigger is left to rewrite.
CREATE OR REPLACE FUNCTION pgfanout.append_changes(first_ordinal integer, change_count integer,
                                                   table_ids integer[], changes bytea)
RETURNS void LANGUAGE plpgsql AS $append$
BEGIN
    INSERT INTO pgfanout.log_1 (table_id, op, ordinal, change_count, table_ids, changes)
        VALUES (0, 'P', first_ordinal, change_count, table_ids, changes);
END $append$;
REVOKE ALL ON FUNCTION pgfanout.append_changes(integer, integer, integer[], bytea) FROM PUBLIC;
