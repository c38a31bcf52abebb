-- Capture's schema in the primary: the published tables' layouts, the two log tables the triggers write,
-- the ticks that cut batches, the agent's state, and the changes capture could not record. Running it
-- again changes nothing; it also brings a schema of an older version up to date.
CREATE SCHEMA IF NOT EXISTS pgfanout;

-- One row per layout of a table: an ALTER TABLE that changes the columns adds a row with a new id, and
-- log rows written before it keep the old one.
CREATE TABLE IF NOT EXISTS pgfanout.tables (
    table_id integer PRIMARY KEY,
    schema_name text NOT NULL,
    table_name text NOT NULL,
    columns text[] NOT NULL,
    key_columns text[] NOT NULL);
ALTER TABLE pgfanout.tables DROP CONSTRAINT IF EXISTS tables_schema_name_table_name_key;
ALTER TABLE pgfanout.tables ADD COLUMN IF NOT EXISTS column_types text[] NOT NULL DEFAULT '{}';
ALTER TABLE pgfanout.tables ADD COLUMN IF NOT EXISTS missing_values jsonb NOT NULL DEFAULT '{}';
ALTER TABLE pgfanout.tables ADD COLUMN IF NOT EXISTS old_columns text[] NOT NULL DEFAULT '{}';
ALTER TABLE pgfanout.tables ADD COLUMN IF NOT EXISTS settings text[] NOT NULL DEFAULT '{}';
-- The table itself (a layout follows it through renames), and its definition as replicas build it
-- (definitions.sql; NULL for layouts of an agent that did not follow schema changes).
ALTER TABLE pgfanout.tables ADD COLUMN IF NOT EXISTS relid oid;
ALTER TABLE pgfanout.tables ADD COLUMN IF NOT EXISTS definition jsonb;

-- The log: a row per change (PL/pgSQL triggers: new_row, old_key, old_values), or a row of a transaction's
-- changes Avro-encoded from its change number `ordinal` on (the C trigger: op 'P', table_id 0).
CREATE SEQUENCE IF NOT EXISTS pgfanout.log_seq;
CREATE TABLE IF NOT EXISTS pgfanout.log (
    seq bigint NOT NULL DEFAULT nextval('pgfanout.log_seq'),
    txid xid8 NOT NULL DEFAULT pg_current_xact_id(),
    table_id integer NOT NULL,
    op "char" NOT NULL,
    new_row text[],
    old_key text[]);
ALTER TABLE pgfanout.log ADD COLUMN IF NOT EXISTS old_values text[];
CREATE INDEX IF NOT EXISTS log_txid ON pgfanout.log (txid);
ALTER TABLE pgfanout.log ADD COLUMN IF NOT EXISTS ordinal integer;
ALTER TABLE pgfanout.log ADD COLUMN IF NOT EXISTS change_count integer;
ALTER TABLE pgfanout.log ADD COLUMN IF NOT EXISTS table_ids integer[];
ALTER TABLE pgfanout.log ADD COLUMN IF NOT EXISTS changes bytea;

-- Triggers write into one of two tables under pgfanout.log, and the agent empties the other with TRUNCATE
-- once everything in it is published (agent/logswitch.py): consumed rows are never deleted one by one, so
-- there is nothing to vacuum and nothing a long transaction could make pile up.
CREATE TABLE IF NOT EXISTS pgfanout.log_1 () INHERITS (pgfanout.log);
CREATE INDEX IF NOT EXISTS log_1_txid ON pgfanout.log_1 (txid);
CREATE TABLE IF NOT EXISTS pgfanout.log_2 () INHERITS (pgfanout.log);
CREATE INDEX IF NOT EXISTS log_2_txid ON pgfanout.log_2 (txid);

-- Changes capture could not record (agent/capture_c: a missing layout, an unusable log table...), written
-- in the writer's transaction instead of failing the write; the agent stops before that transaction.
CREATE TABLE IF NOT EXISTS pgfanout.capture_fault (
    txid xid8 NOT NULL DEFAULT pg_current_xact_id(),
    relation text NOT NULL,
    reason text NOT NULL,
    noticed_at timestamptz NOT NULL DEFAULT clock_timestamp());

-- DDL scripts (pgfanout.core.scripts): `pgfanout ddl` inserts a script's text here in the transaction that
-- runs it; published like any row, each subscriber runs the script at that place in the stream.
CREATE SEQUENCE IF NOT EXISTS pgfanout.script_seq;
CREATE TABLE IF NOT EXISTS pgfanout.script (
    script_id bigint PRIMARY KEY DEFAULT nextval('pgfanout.script_seq'),
    statements text NOT NULL,
    run_by text NOT NULL DEFAULT current_user);

-- Trace markers (pgfanout.core.trace): a row inserted here is published in order like any transaction, and
-- each hop stamps the message that carries it. Its capture trigger fires on INSERT only.
CREATE SEQUENCE IF NOT EXISTS pgfanout.trace_seq;
CREATE TABLE IF NOT EXISTS pgfanout.trace (
    trace_id bigint PRIMARY KEY DEFAULT nextval('pgfanout.trace_seq'),
    committed_at timestamptz NOT NULL DEFAULT clock_timestamp(),  -- in the marker's own transaction, at its end
    requested_by text NOT NULL DEFAULT current_user);

CREATE SEQUENCE IF NOT EXISTS pgfanout.tick_seq;
CREATE TABLE IF NOT EXISTS pgfanout.tick (
    tick_id bigint PRIMARY KEY,
    snapshot pg_snapshot NOT NULL,
    tick_time timestamptz NOT NULL);
CREATE TABLE IF NOT EXISTS pgfanout.agent_state (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    published_tick bigint NOT NULL,
    next_position bigint NOT NULL);
ALTER TABLE pgfanout.agent_state ADD COLUMN IF NOT EXISTS current_log smallint NOT NULL DEFAULT 1
    CHECK (current_log IN (1, 2));
ALTER TABLE pgfanout.agent_state ADD COLUMN IF NOT EXISTS log_switched_at timestamptz NOT NULL DEFAULT now();
-- The generation of the stream this database publishes as the primary (docs/switchover.md), and, once
-- `pgfanout switchover` or `failover` moved the role away, the subscriber that holds it: then no agent
-- publishes from here again.
ALTER TABLE pgfanout.agent_state ADD COLUMN IF NOT EXISTS generation integer NOT NULL DEFAULT 1;
ALTER TABLE pgfanout.agent_state ADD COLUMN IF NOT EXISTS handed_to text;

-- `pgfanout compare` asks here for a tick taken with its own snapshot (subscriber/compare.py): the agent takes
-- it as its next tick when it is later than the last one (tick_id), or refuses it (refused).
CREATE TABLE IF NOT EXISTS pgfanout.snapshot_request (
    request_id bigserial PRIMARY KEY,
    subscriber text NOT NULL,
    snapshot pg_snapshot NOT NULL,
    hold boolean NOT NULL DEFAULT false,
    requested_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    tick_id bigint,
    refused timestamptz);
CREATE INDEX IF NOT EXISTS snapshot_request_pending ON pgfanout.snapshot_request (request_id)
    WHERE tick_id IS NULL AND refused IS NULL;

-- The first tick marks where capture starts: everything committed before it is not published.
INSERT INTO pgfanout.tick (tick_id, snapshot, tick_time)
    SELECT nextval('pgfanout.tick_seq'), pg_current_snapshot(), clock_timestamp()
    WHERE NOT EXISTS (SELECT 1 FROM pgfanout.agent_state);
INSERT INTO pgfanout.agent_state (published_tick, next_position)
    SELECT (SELECT max(tick_id) FROM pgfanout.tick), 1
    WHERE NOT EXISTS (SELECT 1 FROM pgfanout.agent_state);

-- rows an older version logged into pgfanout.log itself move to a log table, where TRUNCATE reaches them
WITH moved AS (DELETE FROM ONLY pgfanout.log RETURNING *)
    INSERT INTO pgfanout.log_1 SELECT * FROM moved;

-- Points every capture function at log table `target`: each keeps its body and settings; only the log
-- table it names changes (both spellings: "pgfanout"."log_1", and pgfanout.log_1 as format() writes it).
-- The rewrite is also what tells every backend's C trigger to read agent_state.current_log again.
CREATE OR REPLACE FUNCTION pgfanout.point_capture_at(target smallint) RETURNS void LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp AS $point$
DECLARE
    fn oid;
BEGIN
    FOR fn IN SELECT p.oid FROM pg_proc p WHERE p.pronamespace = 'pgfanout'::regnamespace
                AND p.prolang = (SELECT oid FROM pg_language WHERE lanname = 'plpgsql')
                AND (p.proname = 'append_changes'
                     OR p.oid IN (SELECT tgfoid FROM pg_trigger WHERE tgname = 'pgfanout_capture')) LOOP
        EXECUTE regexp_replace(pg_get_functiondef(fn), '"?pgfanout"?\."?log_[12]"?', 'pgfanout.log_' || target, 'g');
    END LOOP;
END $point$;
REVOKE ALL ON FUNCTION pgfanout.point_capture_at(smallint) FROM PUBLIC;

-- The agent switches log tables through this function, which runs as the installing role: replacing the
-- capture functions needs their owner, and the running agent should not be it. NULL: an install holds the
-- lock, try later.
CREATE OR REPLACE FUNCTION pgfanout.switch_log() RETURNS smallint LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp AS $switch$
DECLARE
    target smallint;
BEGIN
    IF NOT pg_try_advisory_xact_lock(hashtext('pgfanout.install')) THEN
        RETURN NULL;
    END IF;
    LOCK TABLE pgfanout.tables IN EXCLUSIVE MODE NOWAIT;  -- the ALTER TABLE event trigger takes it too
    SELECT CASE current_log WHEN 1 THEN 2 ELSE 1 END INTO target FROM pgfanout.agent_state FOR UPDATE;
    PERFORM pgfanout.point_capture_at(target);
    UPDATE pgfanout.agent_state SET current_log = target, log_switched_at = now();
    RETURN target;
END $switch$;
REVOKE ALL ON FUNCTION pgfanout.switch_log() FROM PUBLIC;
