-- Tables created and dropped after install (superuser installs; the event triggers are in follow_ddl.sql).
--
-- A CREATE TABLE whose table matches a pattern of the source's `tables` (schema.* or schema.prefix*) and is
-- not excluded is published in the CREATE's own transaction: its layout, its capture trigger, and a SCHEMA
-- change that creates it on the replicas, then its rows (a CREATE TABLE AS has some). A DROP TABLE of a
-- published table is a SCHEMA change too: replicas drop their table or keep it, as their on_drop says.

CREATE TABLE IF NOT EXISTS pgfanout.publish_pattern (
    schema_name text NOT NULL,
    prefix text NOT NULL,  -- '' for every table of the schema
    PRIMARY KEY (schema_name, prefix));
CREATE TABLE IF NOT EXISTS pgfanout.publish_exclude (
    schema_name text NOT NULL,
    table_name text NOT NULL,
    PRIMARY KEY (schema_name, table_name));

CREATE OR REPLACE FUNCTION pgfanout.publish_new_table(relation oid) RETURNS void LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $publish$
DECLARE
    schema_now text; table_now text; cols text[]; types text[]; keys text[]; new_id integer; fn text;
    target_log text; leaf regclass;
BEGIN
    SELECT n.nspname, c.relname INTO schema_now, table_now FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = relation;
    keys := pgfanout.primary_key_of(relation);
    IF keys IS NULL THEN
        RAISE EXCEPTION 'pgfanout: %.% matches a published pattern of the source''s tables but has no primary key, '
            'so replicas could not find its rows again', schema_now, table_now
            USING HINT = 'give it a primary key in its CREATE TABLE, or add it to the source''s exclude list and '
                         'run pgfanout agent install';
    END IF;
    SELECT array_agg(attname::text ORDER BY attnum), array_agg(format_type(atttypid, atttypmod) ORDER BY attnum)
      INTO cols, types FROM pg_attribute
     WHERE attrelid = relation AND attnum > 0 AND NOT attisdropped AND attgenerated = '';
    LOCK TABLE pgfanout.tables IN EXCLUSIVE MODE;  -- the agent switching log tables takes it too
    SELECT max(table_id) + 1 INTO new_id FROM pgfanout.tables;
    INSERT INTO pgfanout.tables (table_id, schema_name, table_name, columns, key_columns, column_types,
                                 missing_values, old_columns, settings, relid, definition)
        VALUES (new_id, schema_now, table_now, cols, keys, types, '{}', '{}', pgfanout.pinned_settings(), relation,
                pgfanout.table_definition(relation) || '{"created": true}');
    IF to_regprocedure('pgfanout.capture_packed()') IS NOT NULL THEN  -- the source captures with the C trigger
        fn := 'pgfanout.capture_packed';
    ELSE
        fn := format('pgfanout.%I', 'capture_' || new_id);
        SELECT format('pgfanout.%I', 'log_' || current_log) INTO target_log FROM pgfanout.agent_state;
        PERFORM pgfanout.create_capture_function(fn, new_id, cols, keys, '{}', target_log, pgfanout.pinned_settings());
    END IF;
    EXECUTE format('CREATE TRIGGER pgfanout_capture AFTER INSERT OR UPDATE OR DELETE ON %s FOR EACH ROW '
                   'EXECUTE FUNCTION %s()', relation::regclass, fn);
    EXECUTE format('CREATE TRIGGER pgfanout_capture_truncate AFTER TRUNCATE ON %s FOR EACH STATEMENT '
                   'EXECUTE FUNCTION %s()', relation::regclass, fn);
    IF (SELECT relkind FROM pg_class WHERE oid = relation) = 'p' THEN
        PERFORM pgfanout.publish_partitions(relation::regclass);
    END IF;
    PERFORM pgfanout.log_event(relation, new_id, 'S');
    FOR leaf IN SELECT c.oid FROM pg_class c WHERE c.oid = relation AND c.relkind = 'r'
                UNION ALL SELECT p.relid FROM pg_partition_tree(relation) p WHERE p.isleaf LOOP
        PERFORM pgfanout.log_rows(leaf, relation::regclass, 'I');
    END LOOP;
    RAISE NOTICE 'pgfanout: %.% is published: it matches the source''s tables', schema_now, table_now;
END $publish$;
REVOKE ALL ON FUNCTION pgfanout.publish_new_table(oid) FROM PUBLIC;

CREATE OR REPLACE FUNCTION pgfanout.follow_new_tables() RETURNS event_trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $follow$
DECLARE
    relation oid;
BEGIN
    FOR relation IN SELECT DISTINCT c.oid FROM pg_event_trigger_ddl_commands() d JOIN pg_class c ON c.oid = d.objid
                    JOIN pg_namespace n ON n.oid = c.relnamespace
                    WHERE d.classid = 'pg_class'::regclass AND c.relkind IN ('r', 'p') AND NOT c.relispartition
                      AND c.relpersistence = 'p'
                      AND EXISTS (SELECT FROM pgfanout.publish_pattern p
                                  WHERE p.schema_name = n.nspname AND starts_with(c.relname, p.prefix))
                      AND NOT EXISTS (SELECT FROM pgfanout.publish_exclude e
                                      WHERE (e.schema_name, e.table_name) = (n.nspname, c.relname))
                      AND NOT EXISTS (SELECT FROM pg_trigger t WHERE t.tgrelid = c.oid AND t.tgname = 'pgfanout_capture')
    LOOP
        PERFORM pgfanout.publish_new_table(relation);
    END LOOP;
END $follow$;

-- A published table dropped: its last layout again, marked dropped, and a SCHEMA change naming it. Its
-- trigger is gone with it, so the change goes into the C trigger's buffer when the source has one (it
-- keeps its place after the transaction's rows), else into the log.
CREATE OR REPLACE FUNCTION pgfanout.follow_dropped_tables() RETURNS event_trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $dropped$
DECLARE
    gone record; layout record; new_id integer; log_table text;
BEGIN
    FOR gone IN SELECT o.objid, o.schema_name, o.object_name FROM pg_event_trigger_dropped_objects() o
                WHERE o.classid = 'pg_class'::regclass AND o.object_type = 'table' AND NOT o.is_temporary
                  AND o.schema_name <> 'pgfanout'
                  AND NOT EXISTS (SELECT FROM pgfanout.partition p WHERE p.leaf = o.objid) LOOP
        SELECT t.* INTO layout FROM pgfanout.tables t
         WHERE t.relid = gone.objid OR (t.relid IS NULL AND (t.schema_name, t.table_name) = (gone.schema_name, gone.object_name))
         ORDER BY t.table_id DESC LIMIT 1;
        CONTINUE WHEN NOT FOUND OR layout.definition IS NULL OR (layout.definition->>'dropped_table')::boolean;
        LOCK TABLE pgfanout.tables IN EXCLUSIVE MODE;
        SELECT max(table_id) + 1 INTO new_id FROM pgfanout.tables;
        INSERT INTO pgfanout.tables (table_id, schema_name, table_name, columns, key_columns, column_types,
                                     missing_values, old_columns, settings, relid, definition)
            VALUES (new_id, layout.schema_name, layout.table_name, layout.columns, layout.key_columns,
                    layout.column_types, layout.missing_values, layout.old_columns, layout.settings, NULL,
                    (layout.definition - 'created' - 'renamed_columns' - 'previous_schema' - 'previous_table'
                     - 'dropped_columns' - 'dropped_constraints' - 'dropped_indexes') || '{"dropped_table": true}');
        DELETE FROM pgfanout.partition p WHERE p.root = gone.objid;
        IF to_regprocedure('pgfanout.capture_event(integer,"char")') IS NOT NULL THEN
            PERFORM pgfanout.capture_event(new_id, 'S');
        ELSE
            SELECT format('pgfanout.%I', 'log_' || current_log) INTO log_table FROM pgfanout.agent_state;
            EXECUTE format('INSERT INTO %s (table_id, op) VALUES ($1, ''S'')', log_table) USING new_id;
        END IF;
        RAISE NOTICE 'pgfanout: %.% was published: replicas drop or keep it, as each one''s on_drop says',
            gone.schema_name, gone.object_name;
    END LOOP;
END $dropped$;
