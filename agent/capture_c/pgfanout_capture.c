/*
 * pgfanout_capture: the capture trigger in C, buffering a transaction's changes.
 *
 * The PL/pgSQL triggers insert one log row per changed row. Here each change is encoded at once as an
 * Avro Change record (schemas/change.avsc) into a buffer that lives as long as the transaction, and the
 * buffer goes into the log as one row at commit: one insert per transaction instead of one per row, and
 * the agent splices the encoded changes into its messages instead of encoding them itself.
 *
 * Ordering. A log row carries the ordinal of its first change in the transaction; the agent orders a
 * transaction's rows by it. Transactions are ordered by their largest log sequence number as before
 * (docs/ordering.md): the last row of a transaction is written at commit, after all its writes.
 *
 * Subtransactions. The buffer is a list of segments, each holding changes of one subtransaction (tagged
 * with its id). Subtransaction ids grow, and a subtransaction's descendants start after it, so the
 * segments of a subtransaction and its descendants are always the list's tail from the first segment
 * tagged with an id >= its own: rolling it back drops that tail. A buffer grown past FLUSH_BYTES is
 * written early, but only that tail for the current subtransaction: a log row belongs to the
 * subtransaction that inserts it and disappears with it, so it must not hold an enclosing level's changes.
 * (Only ids are compared, so loading this library inside a subtransaction loses nothing.)
 *
 * Values are each column's text as `column::text` gives it (the cast to text when the type has one, else
 * its output function), with the table's pinned session settings, as the PL/pgSQL triggers write them
 * (pinned only when the session's own would print differently, see settings_in_effect()).
 * The layout of a table (id, columns, key, old columns, settings) is read once per backend through
 * pgfanout.layout_of() and forgotten when the table's relcache entry is invalidated (ALTER TABLE,
 * CREATE TRIGGER); so is the log table last written (see LogTarget).
 *
 * Faults. A write on the primary never fails because of capture's own state: a table without a layout (a
 * layout row deleted, a table renamed while event triggers were off), a layout naming a column the table
 * lacks, a key column that holds NULL, a log table or agent_state that this library cannot use (a library
 * and a schema of different versions). The lookups that can meet such a state run in an internal
 * subtransaction (they run once per backend and table, not per change), and a problem becomes a fault:
 * a row in pgfanout.capture_fault, written in the writer's transaction, and a WARNING to the client. The
 * changes capture could not record are left out, and the agent stops before publishing that transaction,
 * naming it (agent/faults.py), so nothing is lost silently and nothing is published in part unless the
 * operator accepts it.
 *
 * Partitions. The trigger of a partitioned table fires on its partitions, with their own column numbers;
 * pgfanout.layout_of() gives a partition the layout of its nearest published ancestor, and the changes
 * are recorded as that table's. pgfanout_capture_rows() records every row of a relation as inserted into
 * or deleted from a published table: the event triggers call it when a partition is attached or detached,
 * and a partition's TRUNCATE trigger when it alone is emptied.
 *
 * Privileges. The layout query and the lookups of the current log table run as the owner of the trigger
 * function (the role that installed capture), as the PL/pgSQL triggers run SECURITY DEFINER: writers need
 * no rights on the pgfanout schema, and the functions these call are not executable by PUBLIC. The log
 * row itself is written without the executor, so without privilege checks (see map_log_columns()).
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/transam.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "commands/async.h"
#include "commands/sequence.h"
#include "commands/trigger.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "lib/stringinfo.h"
#include "nodes/makefuncs.h"
#include "nodes/pg_list.h"
#include "parser/parse_coerce.h"
#include "storage/lmgr.h"
#include "storage/lock.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/xid8.h"

PG_MODULE_MAGIC;

PG_FUNCTION_INFO_V1(pgfanout_capture);
PG_FUNCTION_INFO_V1(pgfanout_capture_rows);
PG_FUNCTION_INFO_V1(pgfanout_capture_event);

void		_PG_init(void);

#define FLUSH_BYTES (256 * 1024)

/* Change.op symbols, in schema order */
enum
{
	OP_INSERT, OP_UPDATE, OP_DELETE, OP_TRUNCATE, OP_SCHEMA
};

typedef enum
{
	TEXT_AS_IS,					/* text, varchar: already text */
	TEXT_BY_CAST,				/* a cast function to text (boolean, bpchar, inet, name...) */
	TEXT_BY_OUTPUT				/* the type's output function */
} TextMethod;

typedef struct Column
{
	AttrNumber	attnum;
	bool		byval;			/* the type's, for comparing old and new key values as stored */
	int16		length;
	TextMethod	method;
	FmgrInfo	function;
} Column;

typedef struct Layout
{
	Oid			relid;			/* hash key */
	bool		valid;
	char	   *fault;			/* why changes of this relation cannot be captured, or NULL */
	int32		table_id;
	int			ncolumns;
	Column	   *columns;
	int			nkeys;
	int		   *keys;			/* indexes into columns */
	int			nolds;
	int		   *olds;			/* indexes into columns */
	int			nsettings;
	char	  **setting_names;
	char	  **setting_values;
} Layout;

typedef struct Segment
{
	SubTransactionId subid;		/* the subtransaction whose changes these are */
	int			offset;			/* in the buffer */
	int			length;
	int32		first_ordinal;
	int32		count;
	List	   *tables;			/* table ids, each once */
} Segment;

static HTAB *layouts = NULL;
static MemoryContext layout_context = NULL;

/*
 * The log table last written and what was learned about it, kept across transactions: looking the
 * tables up by name and checking the log table's columns each time cost about 1 us of the commit-time
 * write's 5-9 (docs/benchmarks.md). Forgotten when either relation's relcache entry is invalidated (ALTER, DROP, CREATE INDEX),
 * or when capture moves to the other log table.
 */
typedef struct LogTarget
{
	int32		log;			/* 1 or 2; 0 when nothing is known */
	Oid			relid;
	Oid			sequence;		/* pgfanout.log_seq */
	int		   *columns;		/* map_log_columns() of the table */
} LogTarget;

static LogTarget log_target = {0};

/* per transaction, in TopTransactionContext */
static StringInfo buffer = NULL;
static List *segments = NIL;
static int32 next_ordinal = 0;

static int32 current_log = 0;	/* agent_state.current_log as last read, 0 before */
static uint64 proc_changes = 0;	/* pg_proc invalidations seen, see on_proc_change() */
static uint64 current_log_as_of = 0;	/* proc_changes when current_log was read */
static SPIPlanPtr current_log_plan = NULL;
static SPIPlanPtr layout_plan = NULL;
static Oid	capture_owner = InvalidOid;	/* the trigger function's owner, as last seen */
static Oid	capture_function = InvalidOid;	/* whose owner that is; forgotten by on_proc_change() */
static List *faulted = NIL;		/* relations with a fault recorded in this transaction (TopTransactionContext) */
static bool logged = false;		/* this transaction wrote a log row */

/*
 * Waking the agent at commit (agent/wake.py). An idle agent holds the advisory lock (WAKE_LOCK_KEY, 0)
 * in share mode and listens on WAKE_CHANNEL. A transaction that wrote the log tries that lock in row
 * exclusive mode at commit without waiting: refused, the agent sleeps, and a notification on
 * WAKE_CHANNEL (sent once the commit is visible) wakes it. Granted, the transaction holds it until
 * its commit is visible, which keeps the agent from falling asleep before it can see that commit. A
 * busy agent holds nothing, so under load no transaction notifies (a NOTIFY serializes commits).
 */
#define WAKE_LOCK_KEY 0x70660004
#define WAKE_CHANNEL "pgfanout_commit"

typedef struct Identity
{
	Oid			user;
	int			context;
} Identity;

static Identity
become_owner(void)
{
	Identity	saved;

	if (!OidIsValid(capture_owner))
		elog(ERROR, "pgfanout: capture owner unknown");
	GetUserIdAndSecContext(&saved.user, &saved.context);
	SetUserIdAndSecContext(capture_owner,
						   saved.context | SECURITY_LOCAL_USERID_CHANGE | SECURITY_RESTRICTED_OPERATION);
	return saved;
}

/* An error in between needs no restore: aborting the (sub)transaction restores the identity. */
static void
restore_identity(Identity saved)
{
	SetUserIdAndSecContext(saved.user, saved.context);
}

/* -- faults --------------------------------------------------------------------------------------- */

/* Errors that say nothing about capture's state: a cancel, a shutdown, a lack of resources, a deadlock. */
static bool
passing_error(int code)
{
	int			category = ERRCODE_TO_CATEGORY(code);

	return category == ERRCODE_TO_CATEGORY(ERRCODE_OPERATOR_INTERVENTION) ||
		category == ERRCODE_TO_CATEGORY(ERRCODE_INSUFFICIENT_RESOURCES) ||
		category == ERRCODE_TO_CATEGORY(ERRCODE_PROGRAM_LIMIT_EXCEEDED) ||
		category == ERRCODE_TO_CATEGORY(ERRCODE_TRANSACTION_ROLLBACK) ||
		category == ERRCODE_TO_CATEGORY(ERRCODE_SYSTEM_ERROR) ||
		code == ERRCODE_LOCK_NOT_AVAILABLE;
}

typedef void (*Lookup) (void *arg);

/*
 * Runs lookup(arg) in an internal subtransaction. Returns NULL, or the message of the error it raised
 * (then undone: its locks, memory of the subtransaction and identity change), unless that error is one
 * that passes on (passing_error()). Only for lookups, which run once per backend and table, never per change.
 */
static char *
run_guarded(Lookup lookup, void *arg)
{
	MemoryContext context = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	char	   *problem = NULL;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(context);
	PG_TRY();
	{
		lookup(arg);
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(context);
		CurrentResourceOwner = owner;
	}
	PG_CATCH();
	{
		ErrorData  *error;

		MemoryContextSwitchTo(context);
		error = CopyErrorData();
		if (passing_error(error->sqlerrcode))
			PG_RE_THROW();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(context);
		CurrentResourceOwner = owner;
		problem = error->message;
	}
	PG_END_TRY();
	return problem;
}

static char *
relation_name(Relation relation)
{
	return quote_qualified_identifier(get_namespace_name(RelationGetNamespace(relation)),
									  RelationGetRelationName(relation));
}

/*
 * Records that this transaction's changes of a relation (InvalidOid: of any, the log being unusable) are
 * not captured, once per transaction and relation: a row of pgfanout.capture_fault in the writer's
 * transaction, which stops the agent before it publishes the transaction, and a WARNING to the client.
 */
static void
record_fault(Oid relid, const char *relation, const char *reason)
{
	Oid			types[2] = {TEXTOID, TEXTOID};
	Datum		values[2];
	Identity	caller;
	MemoryContext old;

	if (list_member_oid(faulted, relid))
		return;
	ereport(WARNING,
			(errmsg("pgfanout: changes of %s in this transaction are not captured: %s", relation, reason),
			 errdetail("The write goes on; the replication agent stops before publishing this transaction."),
			 errhint("Run pgfanout agent install for the source, then pgfanout agent faults.")));
	values[0] = CStringGetTextDatum(relation);
	values[1] = CStringGetTextDatum(reason);
	caller = become_owner();
	SPI_connect();
	if (SPI_execute_with_args("INSERT INTO pgfanout.capture_fault (relation, reason) VALUES ($1, $2)",
							  2, types, values, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "pgfanout: could not record a capture fault");
	SPI_finish();
	restore_identity(caller);
	old = MemoryContextSwitchTo(TopTransactionContext);
	faulted = lappend_oid(faulted, relid);
	MemoryContextSwitchTo(old);
}

/* -- Avro ----------------------------------------------------------------------------------------- */

static void
put_long(StringInfo s, int64 value)
{
	uint64		z = ((uint64) value << 1) ^ (uint64) (value >> 63);
	char		bytes[10];
	int			n = 0;

	while (z & ~UINT64CONST(0x7F))
	{
		bytes[n++] = (char) ((z & 0x7F) | 0x80);
		z >>= 7;
	}
	bytes[n++] = (char) z;
	appendBinaryStringInfo(s, bytes, n);
}

static void
put_string(StringInfo s, const char *data, int length)
{
	put_long(s, length);
	appendBinaryStringInfo(s, data, length);
}

static void
put_int_array(StringInfo s, const int *items, int count)
{
	if (count > 0)
	{
		put_long(s, count);
		for (int i = 0; i < count; i++)
			put_long(s, items[i]);
	}
	put_long(s, 0);
}

static void
put_value(StringInfo s, Column *column, Datum value)
{
	text	   *t;

	switch (column->method)
	{
		case TEXT_AS_IS:
			t = DatumGetTextPP(value);
			put_string(s, VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t));
			break;
		case TEXT_BY_CAST:
			t = DatumGetTextPP(FunctionCall1(&column->function, value));
			put_string(s, VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t));
			break;
		case TEXT_BY_OUTPUT:
			{
				char	   *out = OutputFunctionCall(&column->function, value);

				put_string(s, out, strlen(out));
				break;
			}
	}
}

/* An array<string> of the given columns of tuple (NULL written as ""), then their array<int> of nulls. */
static void
put_values(StringInfo s, Layout *layout, const int *which, int count, HeapTuple tuple, TupleDesc desc)
{
	int		   *nulls = palloc(sizeof(int) * (count > 0 ? count : 1));
	int			nnulls = 0;

	if (count > 0)
	{
		put_long(s, count);
		for (int i = 0; i < count; i++)
		{
			Column	   *column = &layout->columns[which ? which[i] : i];
			bool		isnull;
			Datum		value = heap_getattr(tuple, column->attnum, desc, &isnull);

			if (isnull)
			{
				nulls[nnulls++] = i;
				put_long(s, 0);
			}
			else
				put_value(s, column, value);
		}
	}
	put_long(s, 0);
	put_int_array(s, nulls, nnulls);
}

/*
 * Whether an UPDATE changed the key. The PL/pgSQL triggers compare the key's text; values stored alike
 * have the same text, so the text is only made for a column whose old and new values are stored differently.
 */
static bool
key_changed(Layout *layout, HeapTuple old_row, HeapTuple new_row, TupleDesc desc)
{
	for (int i = 0; i < layout->nkeys; i++)
	{
		Column	   *column = &layout->columns[layout->keys[i]];
		bool		old_null, new_null;
		Datum		old_value = heap_getattr(old_row, column->attnum, desc, &old_null);
		Datum		new_value = heap_getattr(new_row, column->attnum, desc, &new_null);
		StringInfoData old_text, new_text;
		bool		differ;

		if (old_null || new_null)
		{
			if (old_null != new_null)
				return true;
			continue;
		}
		if (datumIsEqual(old_value, new_value, column->byval, column->length))
			continue;
		initStringInfo(&old_text);
		initStringInfo(&new_text);
		put_value(&old_text, column, old_value);
		put_value(&new_text, column, new_value);
		/* encoded: lengths first, and bytes that may be zero */
		differ = old_text.len != new_text.len || memcmp(old_text.data, new_text.data, old_text.len) != 0;
		pfree(old_text.data);
		pfree(new_text.data);
		if (differ)
			return true;
	}
	return false;
}

/* -- layouts -------------------------------------------------------------------------------------- */

static void
on_relation_change(Datum arg, Oid relid)
{
	HASH_SEQ_STATUS status;
	Layout	   *layout;

	if (relid == InvalidOid || relid == log_target.relid || relid == log_target.sequence)
		log_target.log = 0;
	if (layouts == NULL)
		return;
	hash_seq_init(&status, layouts);
	while ((layout = hash_seq_search(&status)) != NULL)
		if (relid == InvalidOid || layout->relid == relid)
			layout->valid = false;
}

static int
column_index(Layout *layout, const char *name, Relation relation)
{
	AttrNumber	attnum = get_attnum(RelationGetRelid(relation), name);

	for (int i = 0; i < layout->ncolumns; i++)
		if (layout->columns[i].attnum == attnum)
			return i;
	ereport(ERROR,
			(errmsg("its layout (table id %d) names column \"%s\", which is not among its columns",
					layout->table_id, name)));
	return -1;
}

/* Memory for what is kept across transactions: layouts and the log target. */
static MemoryContext
cache_context(void)
{
	if (layout_context == NULL)
		layout_context = AllocSetContextCreate(CacheMemoryContext, "pgfanout layouts", ALLOCSET_SMALL_SIZES);
	return layout_context;
}

static char **
text_array_items(Datum array, int *count, MemoryContext context)
{
	Datum	   *items;
	bool	   *nulls;
	char	  **texts;

	deconstruct_array(DatumGetArrayTypeP(array), TEXTOID, -1, false, TYPALIGN_INT, &items, &nulls, count);
	texts = MemoryContextAlloc(context, sizeof(char *) * (*count > 0 ? *count : 1));
	for (int i = 0; i < *count; i++)
		texts[i] = MemoryContextStrdup(context, TextDatumGetCString(items[i]));
	return texts;
}

typedef struct LayoutRead
{
	Layout	   *layout;
	Relation	relation;		/* whose rows the layout describes, with their column numbers */
	Oid			published;		/* the relation whose layout row is looked up: itself, or (through
								 * layout_of()) its nearest published ancestor */
	MemoryContext context;
} LayoutRead;

/* The layout of read->relation; raises an error where there is none, or it does not fit the relation. */
static void
read_layout(void *arg)
{
	LayoutRead *read = arg;
	Layout	   *layout = read->layout;
	Relation	relation = read->relation;
	MemoryContext context = read->context;
	Oid			argtypes[1] = {OIDOID};
	Datum		args[1] = {ObjectIdGetDatum(read->published)};
	TupleDesc	desc = RelationGetDescr(relation);
	HeapTuple	row;
	TupleDesc	rowdesc;
	bool		isnull;
	int			ncolumns, nkeys, nolds, nsettings;
	char	  **columns, **keys, **olds, **settings;

	Identity	caller;

	caller = become_owner();
	SPI_connect();
	if (layout_plan == NULL)
	{
		layout_plan = SPI_prepare("SELECT table_id, columns, key_columns, old_columns, settings "
								  "FROM pgfanout.layout_of($1)", 1, argtypes);
		if (layout_plan == NULL)
			elog(ERROR, "could not prepare the layout query: %s", SPI_result_code_string(SPI_result));
		SPI_keepplan(layout_plan);
	}
	/* the latest snapshot: a REPEATABLE READ transaction must see the layout an ALTER TABLE just committed */
	if (SPI_execute_snapshot(layout_plan, args, NULL, GetLatestSnapshot(), InvalidSnapshot, true, false, 1)
		!= SPI_OK_SELECT)
		elog(ERROR, "the layout query failed");
	if (SPI_processed != 1)
		ereport(ERROR,
				(errmsg("it has a capture trigger but no layout in pgfanout.tables (renamed, or its layout deleted)")));
	row = SPI_tuptable->vals[0];
	rowdesc = SPI_tuptable->tupdesc;
	layout->table_id = DatumGetInt32(SPI_getbinval(row, rowdesc, 1, &isnull));
	columns = text_array_items(SPI_getbinval(row, rowdesc, 2, &isnull), &ncolumns, context);
	keys = text_array_items(SPI_getbinval(row, rowdesc, 3, &isnull), &nkeys, context);
	olds = text_array_items(SPI_getbinval(row, rowdesc, 4, &isnull), &nolds, context);
	settings = text_array_items(SPI_getbinval(row, rowdesc, 5, &isnull), &nsettings, context);
	SPI_finish();
	restore_identity(caller);

	layout->ncolumns = ncolumns;
	layout->columns = MemoryContextAllocZero(context, sizeof(Column) * (ncolumns > 0 ? ncolumns : 1));
	for (int i = 0; i < ncolumns; i++)
	{
		Column	   *column = &layout->columns[i];
		AttrNumber	attnum = get_attnum(RelationGetRelid(relation), columns[i]);
		Oid			type, function;
		bool		varlena;

		if (attnum == InvalidAttrNumber || attnum <= 0 || TupleDescAttr(desc, attnum - 1)->attisdropped)
			ereport(ERROR,
					(errmsg("its layout (table id %d) names column \"%s\", which the table does not have",
							layout->table_id, columns[i])));
		column->attnum = attnum;
		column->byval = TupleDescAttr(desc, attnum - 1)->attbyval;
		column->length = TupleDescAttr(desc, attnum - 1)->attlen;
		type = TupleDescAttr(desc, attnum - 1)->atttypid;
		switch (find_coercion_pathway(TEXTOID, type, COERCION_EXPLICIT, &function))
		{
			case COERCION_PATH_RELABELTYPE:
				column->method = TEXT_AS_IS;
				break;
			case COERCION_PATH_FUNC:
				column->method = TEXT_BY_CAST;
				fmgr_info_cxt(function, &column->function, context);
				break;
			default:
				column->method = TEXT_BY_OUTPUT;
				getTypeOutputInfo(type, &function, &varlena);
				fmgr_info_cxt(function, &column->function, context);
				break;
		}
	}
	layout->nkeys = nkeys;
	layout->keys = MemoryContextAlloc(context, sizeof(int) * (nkeys > 0 ? nkeys : 1));
	for (int i = 0; i < nkeys; i++)
		layout->keys[i] = column_index(layout, keys[i], relation);
	layout->nolds = nolds;
	layout->olds = MemoryContextAlloc(context, sizeof(int) * (nolds > 0 ? nolds : 1));
	for (int i = 0; i < nolds; i++)
		layout->olds[i] = column_index(layout, olds[i], relation);
	if (nsettings % 2 != 0)
		elog(ERROR, "the settings of its layout (table id %d) are not name/value pairs", layout->table_id);
	layout->nsettings = nsettings / 2;
	layout->setting_names = MemoryContextAlloc(context, sizeof(char *) * (nsettings / 2 + 1));
	layout->setting_values = MemoryContextAlloc(context, sizeof(char *) * (nsettings / 2 + 1));
	for (int i = 0; i < nsettings / 2; i++)
	{
		layout->setting_names[i] = settings[2 * i];
		layout->setting_values[i] = settings[2 * i + 1];
	}
	layout->valid = true;
}

static Layout *
layout_of(Relation relation)
{
	Oid			relid = RelationGetRelid(relation);
	bool		found;
	Layout	   *layout;

	if (layouts == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = sizeof(Oid);
		ctl.entrysize = sizeof(Layout);
		layouts = hash_create("pgfanout layouts", 64, &ctl, HASH_ELEM | HASH_BLOBS);
	}
	layout = hash_search(layouts, &relid, HASH_ENTER, &found);
	if (!found)
		layout->valid = false;
	if (!layout->valid)
	{
		/* the arrays of an old layout stay in cache_context(): a few bytes */
		LayoutRead	read = {layout, relation, relid, cache_context()};
		char	   *problem = run_guarded(read_layout, &read);

		layout->fault = problem == NULL ? NULL : MemoryContextStrdup(cache_context(), problem);
		layout->valid = true;	/* a fault too, until the relation changes (agent install recreates its trigger) */
	}
	return layout;
}

/* -- the buffer ----------------------------------------------------------------------------------- */

static Segment *
segment_for_change(int32 table_id)
{
	MemoryContext old = MemoryContextSwitchTo(TopTransactionContext);
	Segment    *segment;

	if (buffer == NULL)
		buffer = makeStringInfo();
	segment = segments != NIL ? llast(segments) : NULL;
	/* a segment's changes are numbered consecutively: after a rollback or an early write, start another */
	if (segment == NULL || segment->subid != GetCurrentSubTransactionId() ||
		segment->first_ordinal + segment->count != next_ordinal)
	{
		segment = palloc0(sizeof(Segment));
		segment->subid = GetCurrentSubTransactionId();
		segment->offset = buffer->len;
		segment->first_ordinal = next_ordinal;
		segments = lappend(segments, segment);
	}
	segment->tables = list_append_unique_int(segment->tables, table_id);
	MemoryContextSwitchTo(old);
	return segment;
}

/* The index of the first segment of subtransaction subid or of its descendants (the list's length if none). */
static int
first_segment_of(SubTransactionId subid)
{
	int			first = list_length(segments);

	while (first > 0 && ((Segment *) list_nth(segments, first - 1))->subid >= subid)
		first--;
	return first;
}

static void
drop_segments(int first)
{
	if (list_length(segments) <= first)
		return;
	buffer->len = ((Segment *) list_nth(segments, first))->offset;
	buffer->data[buffer->len] = '\0';
	segments = list_truncate(segments, first);
}

/*
 * Which log table is current: pgfanout.switch_log() points capture at the other table by updating
 * agent_state.current_log and rewriting the capture functions, append_changes() among them, in one
 * transaction; the rewrite invalidates pg_proc entries in every backend, and that makes the next write
 * here read current_log again. Until a backend has seen it, it goes on writing into the old table, as
 * PL/pgSQL functions do: the agent reads both tables and empties one only when no open transaction holds
 * it (agent/logswitch.py). The trigger function's owner is looked up again too (ALTER FUNCTION ... OWNER TO).
 */
static void
on_proc_change(Datum arg, int cacheid, uint32 hashvalue)
{
	proc_changes++;
	capture_function = InvalidOid;
}

/* Reads agent_state.current_log, as the owner, when a pg_proc change may have moved it. */
static int32
read_current_log(void)
{
	Identity	caller;
	bool		isnull;
	int32		log;
	uint64		as_of = proc_changes;	/* taken first: a change while this reads makes the next write read again */

	if (current_log != 0 && current_log_as_of == proc_changes)
		return current_log;
	caller = become_owner();
	SPI_connect();
	if (current_log_plan == NULL)
	{
		current_log_plan = SPI_prepare("SELECT current_log::integer FROM pgfanout.agent_state", 0, NULL);
		if (current_log_plan == NULL)
			elog(ERROR, "could not prepare the current log query: %s", SPI_result_code_string(SPI_result));
		SPI_keepplan(current_log_plan);
	}
	/* the latest snapshot: a REPEATABLE READ transaction older than a switch still follows it */
	if (SPI_execute_snapshot(current_log_plan, NULL, NULL, GetLatestSnapshot(), InvalidSnapshot, true, false, 1)
		!= SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "pgfanout.agent_state has no row");
	log = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	if (isnull || log < 1 || log > 2)
		elog(ERROR, "pgfanout.agent_state.current_log is not 1 or 2");
	SPI_finish();
	restore_identity(caller);
	current_log = log;
	current_log_as_of = as_of;	/* only now: an error above leaves it due for another read */
	return log;
}

/* The columns of a log row, by name: a log table's column order depends on the version that created it. */
enum
{
	LOG_SEQ, LOG_TXID, LOG_TABLE_ID, LOG_OP, LOG_ORDINAL, LOG_CHANGE_COUNT, LOG_TABLE_IDS, LOG_CHANGES,
	LOG_NEW_ROW, LOG_OLD_KEY, LOG_OLD_VALUES, LOG_COLUMNS
};
static const char *const log_column_names[LOG_COLUMNS] = {
	"seq", "txid", "table_id", "op", "ordinal", "change_count", "table_ids", "changes",
	"new_row", "old_key", "old_values"
};
static const Oid log_column_types[LOG_COLUMNS] = {
	INT8OID, XID8OID, INT4OID, CHAROID, INT4OID, INT4OID, INT4ARRAYOID, BYTEAOID,
	TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID
};

static void
refuse_log_table(Relation log_table, const char *column, const char *problem)
{
	ereport(ERROR,
			(errmsg("column \"%s\" of log table \"%s\" %s: the capture library and the installed schema are of "
					"different versions (install the library of this version, make capture-lib, then run "
					"pgfanout agent install)", column, RelationGetRelationName(log_table), problem)));
}

/*
 * The log row is written straight into the current log table: a heap insert and its index entries, with
 * seq and txid filled as their defaults would. Through SPI, a prepared INSERT spent more time in executor
 * start and end and plan revalidation than in the insert itself (docs/benchmarks.md). Nothing the executor
 * would have done is lost: log tables have no triggers, rules, row security or constraints but NOT NULL,
 * and map_log_columns() refuses a log table that has any of the others, or any column it does not know,
 * of another type, or NOT NULL and not filled here. Privileges are not checked: this writes only
 * pgfanout's own tables, on behalf of the trigger function's owner.
 *
 * map_log_columns() says which log column each attribute of the table is (LOG_COLUMNS for a dropped
 * one), once per log table rather than per write (see LogTarget).
 */
static int *
map_log_columns(Relation log_table)
{
	TupleDesc	desc = RelationGetDescr(log_table);
	int		   *columns = MemoryContextAlloc(cache_context(), sizeof(int) * (desc->natts > 0 ? desc->natts : 1));
	uint32		filled = 0;		/* a bit per column of log_column_names */

	if (log_table->trigdesc != NULL || log_table->rd_rel->relhasrules || log_table->rd_rel->relrowsecurity ||
		(desc->constr != NULL && desc->constr->num_check > 0))
		ereport(ERROR,
				(errmsg("log table \"%s\" has triggers, rules, row security or CHECK constraints, "
						"which capture would bypass",
						RelationGetRelationName(log_table)),
				 errhint("drop them: the log tables belong to pgfanout")));
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute attribute = TupleDescAttr(desc, i);
		const char *name = NameStr(attribute->attname);
		int			column = 0;

		columns[i] = LOG_COLUMNS;
		if (attribute->attisdropped)
			continue;
		while (column < LOG_COLUMNS && strcmp(log_column_names[column], name) != 0)
			column++;
		if (column == LOG_COLUMNS)
			refuse_log_table(log_table, name, "is unknown to this capture library");
		if (attribute->atttypid != log_column_types[column])
			refuse_log_table(log_table, name, "has another type than this capture library writes");
		if (column >= LOG_NEW_ROW && attribute->attnotnull)	/* columns of the PL/pgSQL triggers' rows */
			refuse_log_table(log_table, name, "is NOT NULL");
		columns[i] = column;
		filled |= 1 << column;
	}
	for (int column = 0; column < LOG_NEW_ROW; column++)
		if (!(filled & (1 << column)))
			refuse_log_table(log_table, log_column_names[column], "is missing");
	return columns;
}

/* fields: a value for each column before LOG_NEW_ROW; the others are NULL in the C trigger's rows */
static void
insert_log_row(ResultRelInfo *result, EState *estate, TupleTableSlot *slot, const int *columns,
			   const Datum *fields)
{
	Relation	log_table = result->ri_RelationDesc;

	ExecClearTuple(slot);
	for (int i = 0; i < RelationGetDescr(log_table)->natts; i++)
	{
		slot->tts_isnull[i] = columns[i] >= LOG_NEW_ROW;
		slot->tts_values[i] = slot->tts_isnull[i] ? (Datum) 0 : fields[columns[i]];
	}
	ExecStoreVirtualTuple(slot);
	table_tuple_insert(log_table, slot, GetCurrentCommandId(true), 0, NULL);
	ExecInsertIndexTuples(result, slot, estate, false, false, NULL, NIL);
	ResetPerTupleExprContext(estate);
}

static Oid
pgfanout_relation(const char *name, char relkind, LOCKMODE lock)
{
	Oid			relid = RangeVarGetRelid(makeRangeVar("pgfanout", (char *) name, -1), lock, false);

	if (get_rel_relkind(relid) != relkind)
		ereport(ERROR,
				(errmsg("pgfanout.%s is not a %s", name, relkind == RELKIND_SEQUENCE ? "sequence" : "table"),
				 errhint("reinstall capture (pgfanout agent install)")));
	return relid;
}

/*
 * The slow path of open_log_table(), run guarded: agent_state.current_log read again where due, and that
 * log table looked up by name, locked as an INSERT locks it (the lock stays with the transaction) and
 * described in log_target.
 */
static void
look_up_log_table(void *arg)
{
	int32		log = read_current_log();
	char		log_name[16];
	Relation	log_table;

	if (log_target.columns != NULL)
		pfree(log_target.columns);
	log_target = (LogTarget) {0};
	snprintf(log_name, sizeof(log_name), "log_%d", log);
	log_table = table_open(pgfanout_relation(log_name, RELKIND_RELATION, RowExclusiveLock), NoLock);
	log_target.sequence = pgfanout_relation("log_seq", RELKIND_SEQUENCE, NoLock);
	log_target.columns = map_log_columns(log_table);
	log_target.relid = RelationGetRelid(log_table);
	table_close(log_table, NoLock);
	log_target.log = log;		/* last: an error above leaves nothing half known */
}

/*
 * The current log table, opened with the lock an INSERT takes, or NULL when capture cannot use it (a
 * fault is recorded). Locking takes in the invalidations of other sessions' DDL, so a log table dropped
 * and created again, or altered, or a switch to the other table, is looked up again.
 */
static Relation
open_log_table(void)
{
	Identity	caller;
	char	   *problem;

	if (current_log != 0 && current_log_as_of == proc_changes && log_target.log == current_log)
	{
		LockRelationOid(log_target.relid, RowExclusiveLock);
		if (current_log_as_of == proc_changes && log_target.log == current_log)
			return table_open(log_target.relid, NoLock);
		UnlockRelationOid(log_target.relid, RowExclusiveLock);
	}
	/* as the owner: writers need no USAGE on the pgfanout schema */
	caller = become_owner();
	problem = run_guarded(look_up_log_table, NULL);
	restore_identity(caller);
	if (problem != NULL)
	{
		record_fault(InvalidOid, "the pgfanout log", problem);
		return NULL;
	}
	return table_open(log_target.relid, NoLock);
}

/* Write the segments from index `first` on into the log, and drop them from the buffer. */
static void
flush_segments(int first)
{
	Relation	log_table;
	Datum		fields[LOG_NEW_ROW];
	EState	   *estate;
	ResultRelInfo *result;
	TupleTableSlot *slot;

	if (list_length(segments) <= first)
		return;
	log_table = open_log_table();
	if (log_table == NULL)
	{
		drop_segments(first);	/* not captured: the fault stops the agent before this transaction */
		return;
	}
	fields[LOG_TXID] = FullTransactionIdGetDatum(GetTopFullTransactionId());
	fields[LOG_TABLE_ID] = Int32GetDatum(0);
	fields[LOG_OP] = CharGetDatum('P');
	estate = CreateExecutorState();
	result = makeNode(ResultRelInfo);
	InitResultRelInfo(result, log_table, 1, NULL, 0);
	ExecOpenIndices(result, false);
	slot = table_slot_create(log_table, NULL);
	for (int i = first; i < list_length(segments); i++)
	{
		Segment    *segment = list_nth(segments, i);
		int			ntables = list_length(segment->tables);
		Datum	   *tables = palloc(sizeof(Datum) * ntables);
		bytea	   *changes = palloc(VARHDRSZ + segment->length);
		ListCell   *cell;
		int			n = 0;

		if (segment->count == 0)
			continue;
		foreach(cell, segment->tables)
			tables[n++] = Int32GetDatum(lfirst_int(cell));
		SET_VARSIZE(changes, VARHDRSZ + segment->length);
		memcpy(VARDATA(changes), buffer->data + segment->offset, segment->length);
		fields[LOG_SEQ] = Int64GetDatum(nextval_internal(log_target.sequence, false));
		fields[LOG_ORDINAL] = Int32GetDatum(segment->first_ordinal);
		fields[LOG_CHANGE_COUNT] = Int32GetDatum(segment->count);
		fields[LOG_TABLE_IDS] = PointerGetDatum(construct_array(tables, ntables, INT4OID, 4, true, TYPALIGN_INT));
		fields[LOG_CHANGES] = PointerGetDatum(changes);
		insert_log_row(result, estate, slot, log_target.columns, fields);
		logged = true;
	}
	ExecDropSingleTupleTableSlot(slot);
	ExecCloseIndices(result);
	FreeExecutorState(estate);
	table_close(log_table, NoLock);
	drop_segments(first);
}

static void
flush_all(void)
{
	if (segments == NIL)
		return;
	PushActiveSnapshot(GetTransactionSnapshot());
	flush_segments(0);
	PopActiveSnapshot();
}

static void
forget_transaction(void)
{
	/* the memory goes with TopTransactionContext */
	buffer = NULL;
	segments = NIL;
	next_ordinal = 0;
	faulted = NIL;
	logged = false;
}

static void
wake_agent_if_asleep(void)
{
	LOCKTAG		tag;

	if (!logged)
		return;
	SET_LOCKTAG_ADVISORY(tag, MyDatabaseId, (uint32) WAKE_LOCK_KEY, 0, 2);
	if (LockAcquire(&tag, RowExclusiveLock, false, true) == LOCKACQUIRE_NOT_AVAIL)
		Async_Notify(WAKE_CHANNEL, "");
}

static void
on_transaction(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_PRE_COMMIT:
			flush_all();
			wake_agent_if_asleep();
			break;
		case XACT_EVENT_PRE_PREPARE:
			flush_all();		/* a prepared transaction cannot notify: the agent sees it at its next tick */
			break;
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PREPARE:
			forget_transaction();
			break;
		default:
			break;
	}
}

static void
on_subtransaction(SubXactEvent event, SubTransactionId subid, SubTransactionId parent, void *arg)
{
	if (event == SUBXACT_EVENT_ABORT_SUB)
	{
		drop_segments(first_segment_of(subid));
		faulted = NIL;			/* a fault row it wrote is gone with it: the next one is written again */
	}
}

void
_PG_init(void)
{
	RegisterXactCallback(on_transaction, NULL);
	CacheRegisterSyscacheCallback(PROCOID, on_proc_change, (Datum) 0);
	CacheRegisterRelcacheCallback(on_relation_change, (Datum) 0);
	RegisterSubXactCallback(on_subtransaction, NULL);
}

/* -- the trigger ---------------------------------------------------------------------------------- */

static bool
iso_date_style(const char *date_style)
{
	return pg_strncasecmp(date_style, "ISO", 3) == 0 && (date_style[3] == '\0' || date_style[3] == ',');
}

/*
 * Whether the session already formats values as the pinned settings would: then pinning them (a GUC nest
 * level, a set and a restore per change) is skipped. The same value, or for DateStyle the ISO style in
 * both: the field order only shapes the other styles' output.
 */
static bool
settings_in_effect(Layout *layout)
{
	for (int i = 0; i < layout->nsettings; i++)
	{
		const char *pinned = layout->setting_values[i];
		const char *current = GetConfigOption(layout->setting_names[i], true, false);

		if (current == NULL)
			return false;
		if (strcmp(current, pinned) == 0)
			continue;
		if (pg_strcasecmp(layout->setting_names[i], "DateStyle") == 0 && iso_date_style(pinned) && iso_date_style(current))
			continue;
		return false;
	}
	return true;
}

/* The first key column of row that is NULL (its name), or NULL: a row capture cannot identify. */
static const char *
null_key(Layout *layout, HeapTuple row, TupleDesc desc)
{
	for (int i = 0; i < layout->nkeys; i++)
	{
		AttrNumber	attnum = layout->columns[layout->keys[i]].attnum;

		if (heap_attisnull(row, attnum, desc))
			return NameStr(TupleDescAttr(desc, attnum - 1)->attname);
	}
	return NULL;
}

/* Buffer one change of relation: old_row for UPDATE and DELETE, new_row for INSERT and UPDATE. */
static void
append_row(Layout *layout, Relation relation, int op, HeapTuple old_row, HeapTuple new_row)
{
	TupleDesc	desc = RelationGetDescr(relation);
	Segment    *segment;
	int			before;
	int			nest = -1;
	const char *null_column = NULL;

	if (new_row != NULL)
		null_column = null_key(layout, new_row, desc);
	if (null_column == NULL && old_row != NULL)
		null_column = null_key(layout, old_row, desc);
	if (null_column != NULL)
	{
		record_fault(RelationGetRelid(relation), relation_name(relation),
					 psprintf("key column \"%s\" is NULL in a row, which replicas could not find again", null_column));
		return;
	}
	segment = segment_for_change(layout->table_id);
	before = buffer->len;
	if (layout->nsettings > 0 && op != OP_TRUNCATE && !settings_in_effect(layout))
	{
		nest = NewGUCNestLevel();
		for (int i = 0; i < layout->nsettings; i++)
			(void) set_config_option(layout->setting_names[i], layout->setting_values[i],
									 superuser() ? PGC_SUSET : PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE,
									 true, 0, false);
	}
	put_long(buffer, layout->table_id);
	put_long(buffer, op);
	if (new_row != NULL)
		put_values(buffer, layout, NULL, layout->ncolumns, new_row, desc);
	else
	{
		put_long(buffer, 0);	/* values */
		put_long(buffer, 0);	/* nulls */
	}
	if (op == OP_DELETE || (op == OP_UPDATE && key_changed(layout, old_row, new_row, desc)))
	{
		/* key columns are NOT NULL (null_key()): no nulls array in the schema for them */
		put_long(buffer, layout->nkeys);
		for (int i = 0; i < layout->nkeys; i++)
		{
			bool		isnull;
			Column	   *column = &layout->columns[layout->keys[i]];

			put_value(buffer, column, heap_getattr(old_row, column->attnum, desc, &isnull));
		}
	}
	put_long(buffer, 0);
	if (old_row != NULL && layout->nolds > 0)
		put_values(buffer, layout, layout->olds, layout->nolds, old_row, desc);
	else
	{
		put_long(buffer, 0);	/* old_values */
		put_long(buffer, 0);	/* old_nulls */
	}
	if (nest >= 0)
		AtEOXact_GUC(true, nest);

	segment->length += buffer->len - before;
	segment->count++;
	next_ordinal++;
	if (buffer->len > FLUSH_BYTES)
	{
		int			first = first_segment_of(GetCurrentSubTransactionId());

		if (buffer->len - ((Segment *) list_nth(segments, first))->offset > FLUSH_BYTES)
			flush_segments(first);
	}
}

/* Who owns function: the role capture's lookups and writes run as. */
static void
set_capture_owner(Oid function)
{
	HeapTuple	proc;

	if (function == capture_function)
		return;
	proc = SearchSysCache1(PROCOID, ObjectIdGetDatum(function));
	if (!HeapTupleIsValid(proc))
		elog(ERROR, "pgfanout_capture: cache lookup failed for function %u", function);
	capture_owner = ((Form_pg_proc) GETSTRUCT(proc))->proowner;
	capture_function = function;
	ReleaseSysCache(proc);
}

Datum
pgfanout_capture(PG_FUNCTION_ARGS)
{
	TriggerData *trigger = (TriggerData *) fcinfo->context;
	Relation	relation;
	TriggerEvent event;
	Layout	   *layout;

	if (!CALLED_AS_TRIGGER(fcinfo))
		elog(ERROR, "pgfanout_capture: not called as a trigger");
	relation = trigger->tg_relation;
	event = trigger->tg_event;
	if (!TRIGGER_FIRED_AFTER(trigger->tg_event))
		elog(ERROR, "pgfanout_capture: must be an AFTER trigger");
	set_capture_owner(trigger->tg_trigger->tgfoid);
	layout = layout_of(relation);
	if (layout->fault != NULL)
		record_fault(RelationGetRelid(relation), relation_name(relation), layout->fault);
	else if (TRIGGER_FIRED_BY_TRUNCATE(event))
		append_row(layout, relation, OP_TRUNCATE, NULL, NULL);
	else if (TRIGGER_FIRED_BY_INSERT(event))
		append_row(layout, relation, OP_INSERT, NULL, trigger->tg_trigtuple);
	else if (TRIGGER_FIRED_BY_UPDATE(event))
		append_row(layout, relation, OP_UPDATE, trigger->tg_trigtuple, trigger->tg_newtuple);
	else
		append_row(layout, relation, OP_DELETE, trigger->tg_trigtuple, NULL);
	return PointerGetDatum(NULL);
}

/*
 * pgfanout.capture_rows(relation, published, op): every row of relation recorded as inserted into ('I')
 * or deleted from ('D') the published table `published` (the relation itself, or its partitioned
 * ancestor, or the one it was just detached from), in this transaction's buffer like any change.
 * Returns how many rows, or -1 when a fault was recorded instead.
 */
Datum
pgfanout_capture_rows(PG_FUNCTION_ARGS)
{
	Oid			relid = PG_GETARG_OID(0);
	char		op = PG_GETARG_CHAR(2);
	Relation	relation;
	Layout		layout = {0};
	LayoutRead	read;
	char	   *problem;
	TableScanDesc scan;
	TupleTableSlot *slot;
	MemoryContext per_row, old;
	int64		rows = 0;

	if (op != 'I' && op != 'D')
		elog(ERROR, "pgfanout.capture_rows: op must be I or D");
	set_capture_owner(fcinfo->flinfo->fn_oid);
	relation = table_open(relid, AccessShareLock);
	read = (LayoutRead) {&layout, relation, PG_GETARG_OID(1), CurrentMemoryContext};
	problem = run_guarded(read_layout, &read);
	if (problem != NULL)
	{
		record_fault(relid, relation_name(relation), problem);
		table_close(relation, AccessShareLock);
		PG_RETURN_INT64(-1);
	}
	per_row = AllocSetContextCreate(CurrentMemoryContext, "pgfanout capture_rows", ALLOCSET_DEFAULT_SIZES);
	slot = table_slot_create(relation, NULL);
	scan = table_beginscan(relation, GetActiveSnapshot(), 0, NULL);
	while (table_scan_getnextslot(scan, ForwardScanDirection, slot))
	{
		bool		should_free;
		HeapTuple	row;

		CHECK_FOR_INTERRUPTS();
		old = MemoryContextSwitchTo(per_row);
		row = ExecFetchSlotHeapTuple(slot, false, &should_free);
		append_row(&layout, relation, op == 'I' ? OP_INSERT : OP_DELETE, op == 'D' ? row : NULL, op == 'I' ? row : NULL);
		MemoryContextSwitchTo(old);
		MemoryContextReset(per_row);
		rows++;
	}
	table_endscan(scan);
	ExecDropSingleTupleTableSlot(slot);
	MemoryContextDelete(per_row);
	table_close(relation, AccessShareLock);
	PG_RETURN_INT64(rows);
}

/*
 * pgfanout.capture_event(table_id, op): a change without values in this transaction's buffer, in order
 * with its rows: 'S' (the table's layout table_id takes effect here: a schema change) or 'T' (the table
 * emptied, before a rewritten table's rows are recorded again). Called by the schema-change event
 * trigger (agent/sql/follow_ddl.sql).
 */
Datum
pgfanout_capture_event(PG_FUNCTION_ARGS)
{
	int32		table_id = PG_GETARG_INT32(0);
	char		op = PG_GETARG_CHAR(1);
	Segment    *segment;
	int			before;

	if (op != 'S' && op != 'T')
		elog(ERROR, "pgfanout.capture_event: op must be S or T");
	set_capture_owner(fcinfo->flinfo->fn_oid);
	segment = segment_for_change(table_id);
	before = buffer->len;
	put_long(buffer, table_id);
	put_long(buffer, op == 'S' ? OP_SCHEMA : OP_TRUNCATE);
	put_long(buffer, 0);		/* values */
	put_long(buffer, 0);		/* nulls */
	put_long(buffer, 0);		/* old_key */
	put_long(buffer, 0);		/* old_values */
	put_long(buffer, 0);		/* old_nulls */
	segment->length += buffer->len - before;
	segment->count++;
	next_ordinal++;
	PG_RETURN_VOID();
}
