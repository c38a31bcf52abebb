-- Partitioned tables. A published partitioned table is replicated as one table under its own name: its
-- row trigger fires on every partition (PostgreSQL clones it to partitions, present and future), and
-- pgfanout.layout_of() gives each partition the published table's layout. What no row trigger sees is
-- followed here: rows arriving with a partition (ATTACH) or leaving with one (DETACH) become inserts and
-- deletes of the published table, and so do the rows of a partition emptied alone (TRUNCATE).

-- The leaf partitions each published partitioned table had at the last look.
CREATE TABLE IF NOT EXISTS pgfanout.partition (
    leaf oid PRIMARY KEY,
    root oid NOT NULL);

-- Every row of `relation` logged as inserted into (op 'I') or deleted from (op 'D') the published table
-- `published`, in the calling transaction, through the same kind of log rows as the table's trigger
-- writes. Where capture cannot, a fault stops the agent before this transaction (agent/faults.py).
CREATE OR REPLACE FUNCTION pgfanout.log_rows(relation regclass, published regclass, op "char") RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $log_rows$
DECLARE
    layout record;
    log_table text;
    logged bigint;
BEGIN
    IF EXISTS (SELECT FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid JOIN pg_language l ON l.oid = p.prolang
               WHERE t.tgrelid = published AND t.tgname = 'pgfanout_capture' AND l.lanname = 'c') THEN
        RETURN pgfanout.capture_rows(relation, published, op);
    END IF;
    SELECT * INTO layout FROM pgfanout.layout_of(published);
    IF NOT FOUND THEN
        INSERT INTO pgfanout.capture_fault (relation, reason)
            VALUES (published::text, format('no layout in pgfanout.tables to log the rows of %s with', relation));
        RAISE WARNING 'pgfanout: rows of % are not captured in this transaction: % has no layout', relation, published;
        RETURN -1;
    END IF;
    SELECT format('pgfanout.%I', 'log_' || current_log) INTO log_table FROM pgfanout.agent_state;
    IF op = 'I' THEN
        EXECUTE format('INSERT INTO %s (table_id, op, new_row) SELECT %s, ''I'', %s FROM ONLY %s r', log_table,
                       layout.table_id, pgfanout.text_array_sql('r', layout.columns), relation);
    ELSE
        EXECUTE format('INSERT INTO %s (table_id, op, old_key, old_values) SELECT %s, ''D'', %s, %s FROM ONLY %s r',
                       log_table, layout.table_id, pgfanout.text_array_sql('r', layout.key_columns),
                       pgfanout.text_array_sql('r', layout.old_columns), relation);
    END IF;
    GET DIAGNOSTICS logged = ROW_COUNT;
    RETURN logged;
END $log_rows$;
REVOKE ALL ON FUNCTION pgfanout.log_rows(regclass, regclass, "char") FROM PUBLIC;

-- TRUNCATE of a published partitioned table is published as one TRUNCATE; its partitions' own TRUNCATE
-- triggers, which fire too, see it by this transaction-local setting and log nothing.
CREATE OR REPLACE FUNCTION pgfanout.truncate_begin() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $begin$
BEGIN
    PERFORM set_config('pgfanout.truncating', TG_RELID::text, true);
    RETURN NULL;
END $begin$;

CREATE OR REPLACE FUNCTION pgfanout.truncate_end() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $end$
BEGIN
    PERFORM set_config('pgfanout.truncating', '', true);
    RETURN NULL;
END $end$;

-- A partition emptied on its own: its rows are logged as deleted from the published table first.
CREATE OR REPLACE FUNCTION pgfanout.truncate_partition() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $truncate$
DECLARE
    published oid;
BEGIN
    SELECT p.root INTO published FROM pgfanout.partition p WHERE p.leaf = TG_RELID;
    IF FOUND AND current_setting('pgfanout.truncating', true) IS DISTINCT FROM published::text THEN
        PERFORM pgfanout.log_rows(TG_RELID, published, 'D');
    END IF;
    RETURN NULL;
END $truncate$;

CREATE OR REPLACE FUNCTION pgfanout.watch_truncate(leaf regclass) RETURNS void LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $watch$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_trigger WHERE tgrelid = leaf AND tgname = 'pgfanout_partition_truncate') THEN
        EXECUTE format('CREATE TRIGGER pgfanout_partition_truncate BEFORE TRUNCATE ON %s '
                       'FOR EACH STATEMENT EXECUTE FUNCTION pgfanout.truncate_partition()', leaf);
    END IF;
END $watch$;
REVOKE ALL ON FUNCTION pgfanout.watch_truncate(regclass) FROM PUBLIC;

-- At install: the partitioned table's leaves as they are now (their rows are the initial copy's, not
-- the stream's), and the TRUNCATE triggers.
CREATE OR REPLACE FUNCTION pgfanout.publish_partitions(published regclass) RETURNS void LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $publish$
DECLARE
    leaf regclass;
BEGIN
    DELETE FROM pgfanout.partition p WHERE p.root = published;
    FOR leaf IN SELECT relid FROM pg_partition_tree(published) WHERE isleaf LOOP
        INSERT INTO pgfanout.partition (leaf, root) VALUES (leaf, published)
            ON CONFLICT ON CONSTRAINT partition_pkey DO UPDATE SET root = excluded.root;
        PERFORM pgfanout.watch_truncate(leaf);
    END LOOP;
    EXECUTE format('DROP TRIGGER IF EXISTS pgfanout_truncate_begin ON %s', published);
    EXECUTE format('CREATE TRIGGER pgfanout_truncate_begin BEFORE TRUNCATE ON %s '
                   'FOR EACH STATEMENT EXECUTE FUNCTION pgfanout.truncate_begin()', published);
    EXECUTE format('DROP TRIGGER IF EXISTS pgfanout_truncate_end ON %s', published);
    EXECUTE format('CREATE TRIGGER pgfanout_truncate_end AFTER TRUNCATE ON %s '
                   'FOR EACH STATEMENT EXECUTE FUNCTION pgfanout.truncate_end()', published);
END $publish$;
REVOKE ALL ON FUNCTION pgfanout.publish_partitions(regclass) FROM PUBLIC;

-- After CREATE TABLE and ALTER TABLE (superuser installs): partitions that left a published table, then
-- those that joined one, compared with what pgfanout.partition recorded.
CREATE OR REPLACE FUNCTION pgfanout.follow_partitions() RETURNS event_trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $follow$
DECLARE
    member record;
    published regclass;
    leaf regclass;
BEGIN
    FOR member IN SELECT p.leaf, p.root FROM pgfanout.partition p
                  WHERE NOT EXISTS (SELECT FROM pg_partition_tree(p.root) t WHERE t.relid = p.leaf AND t.isleaf) LOOP
        IF EXISTS (SELECT FROM pg_class WHERE oid = member.leaf) THEN
            PERFORM pgfanout.log_rows(member.leaf, member.root, 'D');
            EXECUTE format('DROP TRIGGER IF EXISTS pgfanout_partition_truncate ON %s', member.leaf::regclass);
            RAISE NOTICE 'pgfanout: rows of % left %: published as deleted', member.leaf::regclass, member.root::regclass;
        END IF;
        DELETE FROM pgfanout.partition p WHERE p.leaf = member.leaf;
    END LOOP;
    FOR published IN SELECT t.tgrelid FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
                     WHERE t.tgname = 'pgfanout_capture' AND t.tgparentid = 0 AND c.relkind = 'p' LOOP
        FOR leaf IN SELECT t.relid FROM pg_partition_tree(published) t
                    WHERE t.isleaf AND NOT EXISTS (SELECT FROM pgfanout.partition p WHERE p.leaf = t.relid) LOOP
            PERFORM pgfanout.log_rows(leaf, published, 'I');
            PERFORM pgfanout.watch_truncate(leaf);
            INSERT INTO pgfanout.partition (leaf, root) VALUES (leaf, published);
        END LOOP;
    END LOOP;
END $follow$;

-- A partition dropped on its own takes its rows away without firing any trigger: refused.
CREATE OR REPLACE FUNCTION pgfanout.guard_partition_drop() RETURNS event_trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $guard$
DECLARE
    dropped record;
BEGIN
    FOR dropped IN SELECT p.leaf, p.root, o.object_identity FROM pg_event_trigger_dropped_objects() o
                   JOIN pgfanout.partition p ON p.leaf = o.objid WHERE o.classid = 'pg_class'::regclass LOOP
        IF NOT EXISTS (SELECT FROM pg_event_trigger_dropped_objects() o
                       WHERE o.classid = 'pg_class'::regclass AND o.objid = dropped.root) THEN
            RAISE EXCEPTION 'pgfanout: % is a partition of a published table; dropping it would take its rows away '
                            'without a trace in the stream', dropped.object_identity
                USING HINT = 'detach it first (ALTER TABLE ... DETACH PARTITION): its rows are then published as '
                             'deleted, and it can be dropped';
        END IF;
        DELETE FROM pgfanout.partition p WHERE p.leaf = dropped.leaf;
    END LOOP;
END $guard$;
