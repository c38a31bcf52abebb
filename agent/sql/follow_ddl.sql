-- Event triggers that put schema changes of published tables into the stream (superuser installs only).
--
-- After ALTER TABLE, CREATE INDEX, ALTER INDEX and DROP INDEX, each published table whose definition
-- (definitions.sql) changed gets a new layout row, in the DDL's own transaction, and a change 'S' naming
-- it is logged at that point of the transaction: every change before it is published with the old
-- layout, every change after it with the new one, and replicas alter their table there
-- (subscriber/schema.py). The layout records what was renamed (columns by attnum, the table by oid). A
-- rewrite (ALTER COLUMN TYPE, ADD COLUMN with a volatile default) fires no row trigger, so a rewritten
-- table is published as emptied ('T') before the change and its rows inserted again after it: exact,
-- whatever the USING expression, at the price of sending the table. The PL/pgSQL capture function is
-- rewritten for the new layout; the C trigger reads the new layout row itself (its cache follows the
-- table's relcache). A change that would leave the layout without its key columns is refused.
-- The names of the items of `before` (a definition's columns, constraints or indexes) that `after` lacks,
-- told apart by `field` (a column by its attnum, the others by name).
CREATE OR REPLACE FUNCTION pgfanout.gone(before jsonb, after jsonb, field text) RETURNS jsonb
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $gone$
    SELECT coalesce(jsonb_agg(o.value->>'name'), '[]') FROM jsonb_array_elements(coalesce(before, '[]')) o
     WHERE NOT EXISTS (SELECT FROM jsonb_array_elements(coalesce(after, '[]')) n WHERE n.value->field = o.value->field)
$gone$;

CREATE OR REPLACE FUNCTION pgfanout.follow_alter_table() RETURNS event_trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $follow$
DECLARE
    relation oid; layout record; new_id integer; cols text[]; types text[]; missing jsonb; fn regproc; olds text[];
    target_log text; before jsonb; after jsonb; renamed jsonb; keys text[]; old_key text[]; new_key text[];
    schema_now text; table_now text; rewritten text[]; leaf regclass;
BEGIN
    rewritten := string_to_array(nullif(current_setting('pgfanout.rewritten', true), ''), ',');
    PERFORM set_config('pgfanout.rewritten', '', true);
    FOR relation IN SELECT DISTINCT coalesce(i.indrelid, c.oid) FROM pg_event_trigger_ddl_commands() d
                    JOIN pg_class c ON c.oid = d.objid LEFT JOIN pg_index i ON i.indexrelid = c.oid
                    WHERE d.classid = 'pg_class'::regclass
                    UNION  -- a dropped index is gone from the catalog: look at every published table
                    SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                    JOIN pgfanout.tables t ON t.schema_name = n.nspname AND t.table_name = c.relname
                    WHERE TG_TAG = 'DROP INDEX' LOOP
        SELECT t.* INTO layout FROM pgfanout.tables t WHERE t.relid = relation ORDER BY t.table_id DESC LIMIT 1;
        IF NOT FOUND THEN  -- a layout of an older install, or a table renamed while event triggers were off
            SELECT t.* INTO layout FROM pgfanout.tables t JOIN pg_class c ON c.relname = t.table_name
                JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = t.schema_name
                WHERE c.oid = relation ORDER BY t.table_id DESC LIMIT 1;
            CONTINUE WHEN NOT FOUND;
        END IF;
        SELECT n.nspname, c.relname INTO schema_now, table_now FROM pg_class c
            JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = relation;
        after := pgfanout.table_definition(relation);
        before := layout.definition - 'renamed_columns' - 'previous_schema' - 'previous_table';
        SELECT array_agg(attname::text ORDER BY attnum), array_agg(format_type(atttypid, atttypmod) ORDER BY attnum),
               coalesce(jsonb_object_agg(attname, (attmissingval::text::text[])[1]) FILTER (WHERE atthasmissing), '{}')
          INTO cols, types, missing
          FROM pg_attribute WHERE attrelid = relation AND attnum > 0 AND NOT attisdropped AND attgenerated = '';
        CONTINUE WHEN cols = layout.columns AND types = layout.column_types AND before IS NOT DISTINCT FROM after
            AND (schema_now, table_now) = (layout.schema_name, layout.table_name)
            AND NOT relation::text = ANY (coalesce(rewritten, '{}'));
        IF before IS NULL AND NOT layout.columns <@ cols AND NOT cols <@ layout.columns THEN
            RAISE EXCEPTION 'pgfanout: %.% is published by an older install, which cannot tell a renamed column '
                'from a new one', layout.schema_name, layout.table_name
                USING HINT = 'run pgfanout agent install again, then alter the table';
        END IF;
        -- columns renamed: the same attnum under another name (new name -> old name)
        SELECT coalesce(jsonb_object_agg(n.value->>'name', o.value->>'name'), '{}') INTO renamed
          FROM jsonb_array_elements(before->'columns') o JOIN jsonb_array_elements(after->'columns') n
            ON (n.value->>'attnum') = (o.value->>'attnum') AND (n.value->>'name') <> (o.value->>'name');
        keys := ARRAY(SELECT coalesce((SELECT r.key FROM jsonb_each_text(renamed) r WHERE r.value = k), k)
                      FROM unnest(layout.key_columns) WITH ORDINALITY u(k, i) ORDER BY i);
        old_key := ARRAY(SELECT coalesce((SELECT r.key FROM jsonb_each_text(renamed) r WHERE r.value = k), k)
                         FROM jsonb_array_elements_text(coalesce(nullif(before->'primary_key', 'null'), '[]'))
                              WITH ORDINALITY u(k, i) ORDER BY i);
        new_key := ARRAY(SELECT jsonb_array_elements_text(after->'primary_key'));  -- empty without one
        IF keys = old_key AND cardinality(new_key) > 0 THEN
            keys := new_key;  -- the layout's key was the primary key: it follows the primary key
        END IF;
        IF NOT keys <@ cols THEN
            RAISE EXCEPTION 'pgfanout: %.% is published and this would take away its key columns (%)',
                layout.schema_name, layout.table_name, layout.key_columns
                USING HINT = 'give the table its new primary key in the same ALTER TABLE that drops the old one';
        END IF;
        LOCK TABLE pgfanout.tables IN EXCLUSIVE MODE;  -- the agent switching log tables takes it too
        SELECT max(table_id) + 1 INTO new_id FROM pgfanout.tables;
        SELECT format('pgfanout.%I', 'log_' || current_log) INTO target_log FROM pgfanout.agent_state;
        olds := ARRAY(SELECT m FROM (SELECT coalesce((SELECT r.key FROM jsonb_each_text(renamed) r WHERE r.value = c), c) m
                                     FROM unnest(layout.old_columns) c) o WHERE m = ANY (cols) AND NOT m = ANY (keys));
        INSERT INTO pgfanout.tables (table_id, schema_name, table_name, columns, key_columns, column_types,
                                     missing_values, old_columns, settings, relid, definition)
            VALUES (new_id, schema_now, table_now, cols, keys, types, missing, olds, pgfanout.pinned_settings(),
                    relation, after || jsonb_build_object(
                        'renamed_columns', renamed,
                        'dropped_columns', pgfanout.gone(before->'columns', after->'columns', 'attnum'),
                        'dropped_constraints', pgfanout.gone(before->'constraints', after->'constraints', 'name'),
                        'dropped_indexes', pgfanout.gone(before->'indexes', after->'indexes', 'name'),
                        'previous_schema', CASE WHEN (schema_now, table_now) <> (layout.schema_name, layout.table_name)
                                                THEN layout.schema_name ELSE '' END,
                        'previous_table', CASE WHEN (schema_now, table_now) <> (layout.schema_name, layout.table_name)
                                               THEN layout.table_name ELSE '' END));
        SELECT tgfoid INTO fn FROM pg_trigger WHERE tgrelid = relation AND tgname = 'pgfanout_capture';
        IF (SELECT l.lanname <> 'c' FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang WHERE p.oid = fn) THEN
            PERFORM pgfanout.create_capture_function(fn::text, new_id, cols, keys, olds, target_log,
                                                     pgfanout.pinned_settings());
        END IF;
        IF relation::text = ANY (coalesce(rewritten, '{}')) THEN
            PERFORM pgfanout.log_event(relation, layout.table_id, 'T');
            PERFORM pgfanout.log_event(relation, new_id, 'S');
            FOR leaf IN SELECT c.oid FROM pg_class c WHERE c.oid = relation AND c.relkind = 'r'
                        UNION ALL SELECT p.relid FROM pg_partition_tree(relation) p WHERE p.isleaf LOOP
                PERFORM pgfanout.log_rows(leaf, relation::regclass, 'I');
            END LOOP;
            RAISE NOTICE 'pgfanout: %.% was rewritten: its rows are published again', schema_now, table_now;
        ELSE
            PERFORM pgfanout.log_event(relation, new_id, 'S');
        END IF;
    END LOOP;
END $follow$;

-- A rewrite fires no row trigger: the tables rewritten (their partitioned table for a partition) are
-- noted for follow_alter_table, which runs at the end of the same statement.
CREATE OR REPLACE FUNCTION pgfanout.note_rewrite() RETURNS event_trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $note$
DECLARE
    rewritten oid := pg_event_trigger_table_rewrite_oid();
    published oid;
BEGIN
    SELECT a.relid INTO published FROM (SELECT rewritten AS relid, 0 AS depth UNION ALL
            SELECT p.relid, p.depth FROM pg_partition_ancestors(rewritten) WITH ORDINALITY p(relid, depth)) a
        JOIN pg_class c ON c.oid = a.relid JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE EXISTS (SELECT FROM pgfanout.tables t WHERE t.relid = a.relid
                         OR (t.schema_name, t.table_name) = (n.nspname, c.relname))
        ORDER BY a.depth LIMIT 1;
    IF FOUND THEN
        PERFORM set_config('pgfanout.rewritten',
                           concat_ws(',', nullif(current_setting('pgfanout.rewritten', true), ''), published::text), true);
    END IF;
END $note$;

DROP EVENT TRIGGER IF EXISTS pgfanout_follow_alter_table;
CREATE EVENT TRIGGER pgfanout_follow_alter_table ON ddl_command_end
    WHEN TAG IN ('ALTER TABLE', 'CREATE INDEX', 'ALTER INDEX', 'DROP INDEX')
    EXECUTE FUNCTION pgfanout.follow_alter_table();
DROP EVENT TRIGGER IF EXISTS pgfanout_refuse_rewrite;
DROP FUNCTION IF EXISTS pgfanout.refuse_rewrite();
DROP EVENT TRIGGER IF EXISTS pgfanout_note_rewrite;
CREATE EVENT TRIGGER pgfanout_note_rewrite ON table_rewrite EXECUTE FUNCTION pgfanout.note_rewrite();

-- Tables created that match the source's patterns, and published tables dropped (new_tables.sql).
DROP EVENT TRIGGER IF EXISTS pgfanout_follow_new_tables;
CREATE EVENT TRIGGER pgfanout_follow_new_tables ON ddl_command_end WHEN TAG IN ('CREATE TABLE', 'CREATE TABLE AS', 'SELECT INTO')
    EXECUTE FUNCTION pgfanout.follow_new_tables();
DROP EVENT TRIGGER IF EXISTS pgfanout_follow_dropped_tables;
CREATE EVENT TRIGGER pgfanout_follow_dropped_tables ON sql_drop WHEN TAG IN ('DROP TABLE')
    EXECUTE FUNCTION pgfanout.follow_dropped_tables();

-- Partitions created, attached or detached, and partitions dropped undetached (partitions.sql).
DROP EVENT TRIGGER IF EXISTS pgfanout_follow_partitions;
CREATE EVENT TRIGGER pgfanout_follow_partitions ON ddl_command_end WHEN TAG IN ('CREATE TABLE', 'ALTER TABLE')
    EXECUTE FUNCTION pgfanout.follow_partitions();
DROP EVENT TRIGGER IF EXISTS pgfanout_guard_partition_drop;
CREATE EVENT TRIGGER pgfanout_guard_partition_drop ON sql_drop EXECUTE FUNCTION pgfanout.guard_partition_drop();
