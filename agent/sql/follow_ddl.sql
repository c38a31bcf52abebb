-- Event triggers that keep capture in step with DDL on published tables (superuser installs only).
--
-- ALTER TABLE: a changed column list gets a new layout row, and the table's PL/pgSQL capture function is
-- rewritten (capture_function.sql), in the ALTER's own transaction, so no change is ever logged with the
-- wrong columns; the C trigger reads the new layout row itself (its cache follows the table's relcache).
-- Key changes, type changes and renames are refused, and so are rewrites (ALTER COLUMN TYPE, ADD COLUMN
-- with a volatile default): the rows they rewrite fire no trigger.
CREATE OR REPLACE FUNCTION pgfanout.follow_alter_table() RETURNS event_trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $follow$
DECLARE
    command record; layout record; new_id integer; cols text[]; types text[]; missing jsonb; fn regproc; olds text[];
    target_log text;
BEGIN
    FOR command IN SELECT DISTINCT objid FROM pg_event_trigger_ddl_commands()
                   WHERE classid = 'pg_class'::regclass LOOP
        SELECT t.* INTO layout FROM pgfanout.tables t JOIN pg_class c ON c.relname = t.table_name
            JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = t.schema_name
            WHERE c.oid = command.objid ORDER BY t.table_id DESC LIMIT 1;
        CONTINUE WHEN NOT FOUND;
        SELECT array_agg(attname::text ORDER BY attnum), array_agg(format_type(atttypid, atttypmod) ORDER BY attnum),
               coalesce(jsonb_object_agg(attname, (attmissingval::text::text[])[1]) FILTER (WHERE atthasmissing), '{}')
          INTO cols, types, missing
          FROM pg_attribute WHERE attrelid = command.objid AND attnum > 0 AND NOT attisdropped AND attgenerated = '';
        CONTINUE WHEN cols = layout.columns AND types = layout.column_types;
        IF NOT layout.key_columns <@ cols THEN
            RAISE EXCEPTION 'pgfanout: %.% is published and this would change its key columns (%)',
                layout.schema_name, layout.table_name, layout.key_columns
                USING HINT = 'run pgfanout agent uninstall/install around such a change, and resync the subscribers';
        END IF;
        IF EXISTS (SELECT FROM unnest(layout.columns, layout.column_types) o(c, t)
                   JOIN unnest(cols, types) n(c, t) ON n.c = o.c WHERE n.t <> o.t)
           AND cardinality(layout.column_types) > 0 THEN
            RAISE EXCEPTION 'pgfanout: %.% is published; changing a column''s type is not followed by the replicas',
                layout.schema_name, layout.table_name
                USING HINT = 'uninstall capture for the table, alter it, install again and resync the subscribers';
        END IF;
        IF NOT layout.columns <@ cols AND NOT cols <@ layout.columns THEN
            RAISE EXCEPTION 'pgfanout: %.% is published; renaming a column (or dropping and adding in one statement) '
                'cannot be told from a new column on the replicas', layout.schema_name, layout.table_name
                USING HINT = 'add and drop columns in separate statements; a rename needs a resync of the subscribers';
        END IF;
        LOCK TABLE pgfanout.tables IN EXCLUSIVE MODE;  -- the agent switching log tables takes it too
        SELECT max(table_id) + 1 INTO new_id FROM pgfanout.tables;
        SELECT format('pgfanout.%I', 'log_' || current_log) INTO target_log FROM pgfanout.agent_state;
        olds := ARRAY(SELECT c FROM unnest(layout.old_columns) c WHERE c = ANY (cols));
        INSERT INTO pgfanout.tables (table_id, schema_name, table_name, columns, key_columns, column_types,
                                     missing_values, old_columns, settings)
            VALUES (new_id, layout.schema_name, layout.table_name, cols, layout.key_columns, types, missing, olds,
                    pgfanout.pinned_settings());
        SELECT tgfoid INTO fn FROM pg_trigger WHERE tgrelid = command.objid AND tgname = 'pgfanout_capture';
        IF (SELECT l.lanname <> 'c' FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang WHERE p.oid = fn) THEN
            PERFORM pgfanout.create_capture_function(fn::text, new_id, cols, layout.key_columns, olds, target_log,
                                                     pgfanout.pinned_settings());
        END IF;
        RAISE NOTICE 'pgfanout: %.% now published with columns %', layout.schema_name, layout.table_name, cols;
    END LOOP;
END $follow$;

CREATE OR REPLACE FUNCTION pgfanout.refuse_rewrite() RETURNS event_trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $refuse$
DECLARE
    target record;
BEGIN
    SELECT n.nspname, c.relname INTO target FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.oid = pg_event_trigger_table_rewrite_oid()
          AND EXISTS (SELECT FROM pgfanout.tables t WHERE t.schema_name = n.nspname AND t.table_name = c.relname);
    IF FOUND THEN
        RAISE EXCEPTION 'pgfanout: %.% is published and this ALTER would rewrite every row without firing triggers '
            '(ALTER COLUMN TYPE, or ADD COLUMN with a volatile default), so replicas would differ', target.nspname, target.relname
            USING HINT = 'add the column without a volatile default and fill it with UPDATEs; to change a type, '
                         'uninstall capture for the table, alter it, install again and resync the subscribers';
    END IF;
END $refuse$;

DROP EVENT TRIGGER IF EXISTS pgfanout_follow_alter_table;
CREATE EVENT TRIGGER pgfanout_follow_alter_table ON ddl_command_end WHEN TAG IN ('ALTER TABLE')
    EXECUTE FUNCTION pgfanout.follow_alter_table();
DROP EVENT TRIGGER IF EXISTS pgfanout_refuse_rewrite;
CREATE EVENT TRIGGER pgfanout_refuse_rewrite ON table_rewrite EXECUTE FUNCTION pgfanout.refuse_rewrite();

-- Partitions created, attached or detached, and partitions dropped undetached (partitions.sql).
DROP EVENT TRIGGER IF EXISTS pgfanout_follow_partitions;
CREATE EVENT TRIGGER pgfanout_follow_partitions ON ddl_command_end WHEN TAG IN ('CREATE TABLE', 'ALTER TABLE')
    EXECUTE FUNCTION pgfanout.follow_partitions();
DROP EVENT TRIGGER IF EXISTS pgfanout_guard_partition_drop;
CREATE EVENT TRIGGER pgfanout_guard_partition_drop ON sql_drop EXECUTE FUNCTION pgfanout.guard_partition_drop();
